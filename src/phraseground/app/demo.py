"""The end-to-end job on the embedded default: generate the synthetic benchmark, train a model,
evaluate it on the test split beside the centre and random baselines, write a report and overlays."""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from ..data.images import load_image
from ..eval.baselines import evaluate_baseline
from ..eval.grounding import evaluate_grounding, ground_captions
from ..eval.metrics import resize_heatmap
from ..predict import locate
from ..io import safe_filename, write_json, write_text
from ..train.checkpoint import model_from_checkpoint
from ..train.config import default_config
from ..train.data import box_frame_of, build_feature_set, ensure_synthetic, load_split, tokenize
from ..train.loop import train
from ..viz import overlay, save_png


def _demo_overrides(images: int | None, epochs: int | None, overrides: list[str] | None) -> list[str]:
    out = list(overrides or [])
    if images is not None:
        out.append(f"data.synthetic_images={images}")
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    return out


def _overlays(model, fs, out: Path, n_images: int = 4) -> list[str]:
    """Overlay PNGs of every phrase of the first caption of the first test images."""
    written = []
    pairs = [(i, 0) for i in range(min(n_images, len(fs.samples)))]
    for (i, c), res in zip(pairs, ground_captions(model, fs, pairs, tokenize)):
        s = fs.samples[i]
        image = load_image(s.image_path, expect_size=(s.width, s.height))
        for k, phrase in enumerate(s.captions[c].phrases):
            _, point, box = locate(res.heatmaps[k], None if res.boxes is None else res.boxes[k], s.width, s.height)
            name = safe_filename(phrase.text, f"{s.image_id}_{k}")
            save_png(overlay(image.resize((s.width * 3, s.height * 3)),
                             resize_heatmap(res.heatmaps[k].float(), s.width * 3, s.height * 3),
                             point and (point[0] * 3, point[1] * 3), box and [v * 3 for v in box], phrase.text),
                     out / name)
            written.append(name)
    return written


def _report_md(r: dict[str, Any]) -> str:
    lines = [
        f"# phraseground demo: `{r['model']}` on the synthetic benchmark", "",
        f"Test split: {r['n_images']} images, {r['n_phrases']} phrases evaluated "
        f"(skipped: {', '.join(f'{k} {v}' for k, v in r['skipped'].items()) or 'none'}); protocol `{r['protocol']}`.", "",
        "| | pointing accuracy |", "|---|---|",
        f"| {r['model']} | **{r['pointing_accuracy']:.4f}** |",
        f"| centre baseline | {r['baselines']['center']:.4f} |",
        f"| random baseline (mean of {r['baselines']['random_repeats']}) | {r['baselines']['random']:.4f} |", "",
        f"Box accuracy (IoU ≥ 0.5): {r['box_accuracy']:.4f}. Attention correctness: {r['attention_correctness']:.4f}.", "",
        "Per phrase type (pointing): " + ", ".join(f"{t} {v['accuracy']:.3f}" for t, v in r["per_type"].items()), "",
        f"Training: {r['train_seconds']:.0f} s; whole demo {r['total_seconds']:.0f} s; peak memory {r['peak_memory_mb']:.0f} MB.", "",
        f"Overlays: `overlays/` ({len(r['overlays'])} files). Checkpoint: `{r['checkpoint']}`.",
    ]
    if "retrieval" in r:
        lines += ["", "Retrieval (full test split): " + json.dumps(r["retrieval"])]
    return "\n".join(lines) + "\n"


def run_demo(out: Path, model: str = "mlmcs", images: int | None = None, epochs: int | None = None,
             progress: bool = True, overrides: list[str] | None = None) -> dict[str, Any]:
    """Generate, train, evaluate and report; returns the report (also written to ``out/report.json``)."""
    t0 = time.time()
    out = Path(out)
    cfg = default_config(model, _demo_overrides(images, epochs, overrides))
    cfg.data.root = str(ensure_synthetic(cfg.data, out / "data", progress))
    summary = train(cfg, out / "run", progress=progress)
    best, _ = model_from_checkpoint(out / "run" / "best.pt", model)
    test = load_split(cfg.data, "test")
    fs = build_feature_set(best, test, cfg.train.feature_batch)
    protocol = cfg.train.val_protocol
    frame = box_frame_of(cfg.data)
    result = evaluate_grounding(best, fs, protocol, progress=progress, box_frame=frame)
    center = evaluate_baseline(test, "center", protocol, box_frame=frame)
    rand = evaluate_baseline(test, "random", protocol, repeats=10, seed=0, box_frame=frame)
    pointing = result["pointing"]
    report: dict[str, Any] = {
        "model": model,
        "protocol": protocol,
        "box_frame": frame,
        "pointing_accuracy": pointing["accuracy"],
        "box_accuracy": result["box"]["accuracy"],
        "attention_correctness": result["attention_correctness"]["attention_correctness"],
        "baselines": {"center": center["accuracy"], "random": rand["accuracy"], "random_repeats": rand["repeats"]},
        "n_images": len(test),
        "n_phrases": pointing["n_evaluated"],
        "hits": pointing["hits"],
        "misses": pointing["misses"],
        "skipped": pointing["skipped"],
        "per_type": pointing["per_type"],
        "train_seconds": summary["train_seconds"],
        "epochs": summary["epochs"],
        "checkpoint": str(out / "run" / "best.pt"),
        "config": cfg.to_dict(),
    }
    if "pointing_box_centre" in result:
        report["pointing_accuracy_box_centre"] = result["pointing_box_centre"]["accuracy"]
    if hasattr(best, "retrieval_similarity"):
        from ..eval.retrieval_run import evaluate_retrieval

        report["retrieval"] = evaluate_retrieval(best, fs, fold_size=len(test))
    report["overlays"] = _overlays(best, fs, out / "overlays")
    report["total_seconds"] = time.time() - t0
    report["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(out / "report.json", report)
    write_text(out / "report.md", _report_md(report))
    return report
