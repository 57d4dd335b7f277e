"""The training loop shared by every model: one CPU, one GPU, or several processes (torchrun/DDP).

Run directory layout: ``config.yaml`` (resolved config + git SHA), ``log.jsonl`` (one JSON
object per logged step / validation), ``last.pt`` and ``best.pt`` (atomic checkpoints).
``resume=True`` continues from ``last.pt`` exactly: weights, optimizer, scheduler, epoch, step
within the epoch (the epoch's shuffling is a function of (seed, epoch)) and the CPU, CUDA,
numpy and Python RNG states.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..device import resolve_device
from ..encoders.text import Vocab, tokenize
from ..errors import ConfigError, PhrasegroundError
from ..io import write_text
from ..models.checkpoint import load_checkpoint, model_payload, save_checkpoint
from ..models.registry import create_model
from .config import ExperimentConfig, TrainConfig
from .data import (FeatureSet, box_frame_of, ensure_synthetic, features_for, load_split, make_batch,
                   training_items)
from .distributed import Gatherer, wrap_ddp
from .online import OnlineModel

log = logging.getLogger(__name__)


def _dist_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and os.environ.get("PG_BACKEND") != "gloo" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def runtime_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a result depends on besides the config and the code: torch version, CPU threads,
    device (and ``OMP_NUM_THREADS`` as set). Same values -> the same numbers (README)."""
    return {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "device": str(device) if device is not None else "cpu"}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (CPU, each CUDA device, numpy, Python), as
    tensors and plain containers (``torch.load(weights_only=True)`` reads them back)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when as many devices are present)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def validation_score(model_supervision: str, report: dict) -> float:
    """The number `best.pt` is chosen by: pointing accuracy (weak) or box accuracy (full)."""
    value = report["box"]["accuracy"] if model_supervision == "full" else report["pointing"]["accuracy"]
    return float(value) if value is not None else 0.0


def _epoch_items(samples, supervision: str, tc, epoch: int) -> list[tuple[int, int, int]]:
    """The epoch's items in the epoch's order: a function of (seed, epoch) only, so a resumed
    run sees exactly the batches it would have seen."""
    g = torch.Generator().manual_seed(tc.seed * 100003 + epoch)
    items = training_items(samples, supervision, tc.caption_sampling, g)
    return [items[int(k)] for k in torch.randperm(len(items), generator=g)]


def make_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the papers' optimizer) in its fused form: one kernel per parameter instead of a
    loop of element-wise ops (0.38 against 1.5 ms per mlmcs step on 2 CPU threads)."""
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)


def train(cfg: ExperimentConfig, out_dir: Path, resume: bool = False, progress: bool = True,
          train_set: FeatureSet | None = None, val_set: FeatureSet | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write checkpoints and logs to ``out_dir``.

    Args:
        cfg: the experiment; not modified (the run's resolved copy is written to ``config.yaml``).
        train_set, val_set: precomputed feature sets (the demo passes them to avoid recomputing).

    Returns:
        a summary: steps, epochs, train_seconds, the last and best validation reports.
    """
    from ..data.images import set_max_pixels
    from ..eval.grounding import evaluate_grounding

    cfg = copy.deepcopy(cfg)  # the caller's config stays as given (data.root is resolved below)
    rank, world = _dist_info()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PhrasegroundError(f"{out_dir}: exists and is not a folder; --out names the run folder")
    if cfg.data.max_image_pixels:
        set_max_pixels(cfg.data.max_image_pixels)
    tc = cfg.train
    device = resolve_device(tc.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the default CUDA stream of this rank
    if rank == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PhrasegroundError(f"{out_dir}: cannot create the run folder ({e.strerror})") from None
    if not cfg.data.root and train_set is None:  # the embedded default: generate the synthetic benchmark
        if rank == 0:
            ensure_synthetic(cfg.data, out_dir / "synthetic", progress)
        if world > 1:
            dist.barrier()
        cfg.data.root = str(out_dir / "synthetic")
    ckpt = load_checkpoint(out_dir / "last.pt", cfg.model) if resume else None
    if ckpt is not None:
        saved = ckpt["config"]
        if saved["model"] != cfg.model or saved["model_args"] != cfg.to_dict()["model_args"]:
            from ..errors import CheckpointError

            raise CheckpointError(f"{out_dir / 'last.pt'}: its model config differs from the one given; resume with the same config")

    train_samples = train_set.samples if train_set is not None else load_split(cfg.data, cfg.data.train_split)
    vocab = ckpt["vocab"] if ckpt is not None else Vocab.build(
        (tokenize(c.text) for s in train_samples for c in s.captions), tc.vocab_min_count).itos
    torch.manual_seed(tc.seed)
    model = create_model(cfg.model, vocab=vocab, config=cfg.model_args).to(device)
    online = cfg.data.features == "online"
    extractor = None
    if online:  # the backbone runs in the training step (and can be fine-tuned)
        from ..features import FeatureExtractor
        from .online import OnlineImages

        extractor = FeatureExtractor(model.feature_needs, device)
        extractor.set_trainable(tc.finetune_backbone_from >= 0)  # the optimizer holds its parameters
        workers = cfg.data.workers if cfg.data.workers >= 0 else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
        if train_set is None:
            train_set = OnlineImages(train_samples, extractor, workers)
        if val_set is None and rank == 0 and cfg.data.val_split:
            val_set = OnlineImages(load_split(cfg.data, cfg.data.val_split)[: tc.val_max_images], extractor)
    elif tc.finetune_backbone_from >= 0:
        raise ConfigError("train.finetune_backbone_from needs data.features: online (cached features cannot fine-tune)")
    if train_set is None:
        def train_features(quiet: bool):
            return features_for(model, train_samples, cfg.data, cfg.data.train_split, device, tc.feature_batch,
                                progress and not quiet, quiet or not progress)

        if rank == 0:  # rank 0 extracts what is missing; the others then open the finished store
            train_set = train_features(False)
        if world > 1:
            dist.barrier()
        if rank != 0:
            train_set = train_features(True)
    if val_set is None and rank == 0 and cfg.data.val_split:
        val_samples = load_split(cfg.data, cfg.data.val_split)  # the whole split's store (as `features` writes it)
        val_set = features_for(model, val_samples, cfg.data, cfg.data.val_split, device, tc.feature_batch,
                               False, not progress)
        val_set.samples = val_samples[: tc.val_max_images]  # validation reads the first images only

    net = OnlineModel(model, extractor) if online else model  # what DDP wraps
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=tc.lr_milestones, gamma=tc.lr_gamma)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "train_seconds": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["progress"])
        set_rng_state(ckpt["rng"])
        if extractor is not None and "backbone" in ckpt:
            extractor.backbone.load_state_dict(ckpt["backbone"])
    ddp_model, trainable_set = None, None  # (re)built at every epoch start: staged schedules change requires_grad

    per_step = tc.batch_size * world
    steps_per_epoch = len(_epoch_items(train_set.samples, model.supervision, tc, 0)) // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"the training split has fewer items than one batch of {per_step}")
    config_dict = cfg.to_dict()
    log_path = out_dir / "log.jsonl"
    if rank == 0:
        text = yaml.safe_dump({**config_dict, "git_sha": _git_sha(), "runtime": runtime_info(device)}, sort_keys=False)
        write_text(out_dir / "config.yaml", text)

    def checkpoint(path: Path, extra: dict | None = None) -> None:
        if rank != 0:
            return
        save_checkpoint({
            **model_payload(model, config_dict, vocab),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "progress": dict(state),
            "rng": rng_state(),
            **({"backbone": extractor.backbone.state_dict()} if extractor is not None and tc.finetune_backbone_from >= 0 else {}),
            **(extra or {}),
        }, path)

    last_report: dict | None = None
    best_report: dict | None = None
    stopped = False
    while state["epoch"] < tc.epochs and not stopped:
        epoch = state["epoch"]
        items = _epoch_items(train_set.samples, model.supervision, tc, epoch)
        model.on_epoch_start(epoch)
        if extractor is not None and tc.finetune_backbone_from >= 0:
            extractor.set_trainable(epoch >= tc.finetune_backbone_from)
        net.train()
        ddp_model, trainable_set = wrap_ddp(net, world, ddp_model, trainable_set)
        images = None
        if online:  # this process's images of every remaining step, decoded ahead by DataLoader workers
            images = train_set.loader([[i for i, _, _ in items[s * per_step + rank * tc.batch_size:
                                                                 s * per_step + (rank + 1) * tc.batch_size]]
                                       for s in range(state["step_in_epoch"], steps_per_epoch)])
        t0 = time.time()
        steps = range(state["step_in_epoch"], steps_per_epoch)
        if progress and rank == 0:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step", total=steps_per_epoch,
                         initial=state["step_in_epoch"])
        for step in steps:
            start = step * per_step + rank * tc.batch_size
            batch = make_batch(train_set, items[start : start + tc.batch_size], device, model.tokenize,
                               with_features=not online)
            if images is not None:
                batch.images = next(images).to(device, non_blocking=True)
            gather = Gatherer() if world > 1 and tc.global_batch else None
            batch.gather = gather
            out = ddp_model(batch)
            optimizer.zero_grad(set_to_none=True)
            (out["loss"] * gather.loss_scale() if gather is not None else out["loss"]).backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            state["step_in_epoch"] = step + 1
            state["global_step"] += 1
            if rank == 0 and (state["global_step"] % 20 == 0 or step + 1 == steps_per_epoch):
                _append_jsonl(log_path, {"epoch": epoch, "step": state["global_step"], "lr": optimizer.param_groups[0]["lr"],
                                         "train_seconds": round(state["train_seconds"] + time.time() - t0, 2),
                                         **{k: round(float(v.detach()), 5) for k, v in out.items()}})
                if progress and hasattr(steps, "set_postfix"):
                    steps.set_postfix(loss=f"{float(out['loss'].detach()):.3f}")
            if tc.max_steps and state["global_step"] >= tc.max_steps:
                stopped = True
                break
            if tc.checkpoint_every and state["global_step"] % tc.checkpoint_every == 0:
                state["train_seconds"] += time.time() - t0
                t0 = time.time()
                checkpoint(out_dir / "last.pt")
        state["train_seconds"] += time.time() - t0
        if stopped and state["step_in_epoch"] < steps_per_epoch:
            checkpoint(out_dir / "last.pt")
            break
        state["epoch"] = epoch + 1
        state["step_in_epoch"] = 0
        scheduler.step()
        if rank == 0 and val_set is not None:
            last_report = evaluate_grounding(model, val_set, tc.val_protocol, boxes=model.supervision == "full",
                                             box_frame=box_frame_of(cfg.data))
            score = validation_score(model.supervision, last_report)
            _append_jsonl(log_path, {"epoch": epoch, "step": state["global_step"], "val_score": score,
                                     "val_pointing": last_report["pointing"]["accuracy"]})
            log.info("epoch %d: validation score %.4f", epoch + 1, score)
            if score > state["best_score"]:
                state["best_score"] = score
                best_report = last_report
                checkpoint(out_dir / "best.pt", {"val_report": last_report})
        checkpoint(out_dir / "last.pt")
        if world > 1:
            dist.barrier()
    if rank == 0 and val_set is None and not stopped:
        checkpoint(out_dir / "best.pt")
    return {"steps": state["global_step"], "epochs": state["epoch"], "train_seconds": state["train_seconds"],
            "last_val": last_report, "best_val": best_report, "best_score": state["best_score"],
            "model": model, "vocab": vocab, "extractor": extractor}
