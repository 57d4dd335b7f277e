"""The end-to-end job on the embedded default: generate the synthetic benchmark, train a model,
evaluate it on the test split beside the centre and random baselines, write a report and overlays."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ..device import resolve_device
from ..eval.baselines import evaluate_baseline
from ..eval.grounding import evaluate_grounding
from ..io import write_json
from ..models.base import supports_retrieval
from ..models.checkpoint import model_from_checkpoint
from ..train.config import default_config
from ..train.data import box_frame_of, build_feature_set, ensure_synthetic, load_split
from ..train.loop import train
from .report import RecordCollector, headline, report_for_model


def _demo_overrides(images: int | None, epochs: int | None, overrides: list[str] | None) -> list[str]:
    out = list(overrides or [])
    if images is not None:
        out.append(f"data.synthetic_images={images}")
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    return out


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the platform has no ``resource``)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_demo(out: Path, model: str = "mlmcs", images: int | None = None, epochs: int | None = None,
             progress: bool = True, overrides: list[str] | None = None, device: str = "auto") -> dict[str, Any]:
    """Generate, train, evaluate and report; returns the report (also written to ``out/report.json``).

    ``device``: auto (CUDA when present), cpu, cuda or cuda:N, for training and evaluation."""
    t0 = time.time()
    out = Path(out)
    cfg = default_config(model, _demo_overrides(images, epochs, overrides) + [f"train.device={device}"])
    dev = str(resolve_device(device))
    cfg.data.root = str(ensure_synthetic(cfg.data, out / "data", progress))
    summary = train(cfg, out / "run", progress=progress)
    best, _ = model_from_checkpoint(out / "run" / "best.pt", model)
    best.to(dev)
    test = load_split(cfg.data, "test")
    fs = build_feature_set(best, test, cfg.train.feature_batch, device=dev)
    protocol = cfg.train.val_protocol
    frame = box_frame_of(cfg.data)
    collected = RecordCollector(protocol)
    result = evaluate_grounding(best, fs, protocol, progress=progress, box_frame=frame, on_phrase=collected)
    center = evaluate_baseline(test, "center", protocol, box_frame=frame)
    rand = evaluate_baseline(test, "random", protocol, repeats=10, seed=0, box_frame=frame)
    report: dict[str, Any] = {
        **headline(model, result, center, rand, len(test), frame),
        "train_seconds": summary["train_seconds"],
        "epochs": summary["epochs"],
        "checkpoint": str(out / "run" / "best.pt"),
        "config": cfg.to_dict(),
    }
    if "pointing_box_centre" in result:
        report["pointing_accuracy_box_centre"] = result["pointing_box_centre"]["accuracy"]
    if supports_retrieval(best):
        from ..eval.retrieval_run import evaluate_retrieval

        report["retrieval"] = evaluate_retrieval(best, fs, fold_size=len(test))
    from ..train.loop import runtime_info

    report["runtime"] = runtime_info(dev)
    report["total_seconds"] = time.time() - t0
    report["peak_memory_mb"] = peak_memory_mb()
    report["title"] = f"phraseground demo: {model} on the synthetic benchmark"
    drawn = report_for_model(out, collected, test, report, center, rand, log_path=out / "run" / "log.jsonl")
    report["report_files"] = drawn["files"]
    write_json(out / "report.json", report)
    return report
