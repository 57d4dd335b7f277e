"""Why attnreg's exact paper setting (ReLU box outputs, 1 − IoU loss, default init) does not train.

    python benchmarks/attnreg_paper_setting.py [--data DIR] [--images 600] [--steps 150] [--out FILE]

Trains each setting below with the training loop's own pieces (``create_model``,
``training_items``, ``make_batch``, Adam at lr 1e-3, batch 64) and records, every 10 steps on
the batch just used:

* ``no_overlap``: the share of phrases whose predicted box does not overlap its target
  (IoU = 0): there ``∂(1 − IoU)/∂box = 0``, only the tiny λ1·squared-error term moves the box;
* ``dead_box``: the share whose ReLU box output has a zero width or height (``relu`` clamps a
  negative w/h to 0: no gradient through it, the box has no area, IoU 0);
* ``dead_alpha``: the share of image-attention values α that are exactly 0 (ReLU attention),
  and ``mass``, the mean attention mass Σα against the boxes' area on the grid (the λ2 target);
* ``grad_box``: the mean absolute gradient of the loss with respect to the region MLP's output.

Settings: the paper's (relu, iou, attention_init 0), then one change at a time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SETTINGS = {
    "paper: relu box, 1-IoU, default init": {"box_output": "relu", "iou_loss": "iou", "attention_init": 0.0},
    "relu box, 1-IoU, attention_init 0.05": {"box_output": "relu", "iou_loss": "iou", "attention_init": 0.05},
    "relu box, 1-GIoU, default init": {"box_output": "relu", "iou_loss": "giou", "attention_init": 0.0},
    "sigmoid box, 1-IoU, default init": {"box_output": "sigmoid", "iou_loss": "iou", "attention_init": 0.0},
    "embedded default: sigmoid, 1-GIoU, init 0.05": {"box_output": "sigmoid", "iou_loss": "giou", "attention_init": 0.05},
}


def run(setting: dict, fs, steps: int, seed: int = 0) -> list[dict]:
    from phraseground.models import box_loss
    from phraseground.models.registry import create_model
    from phraseground.train.config import default_config
    from phraseground.train.data import make_batch, training_items

    import dataclasses

    cfg = default_config("attnreg")
    margs = dataclasses.replace(cfg.model_args, **setting)
    args = dataclasses.asdict(margs)
    torch.manual_seed(seed)
    vocab = sorted({w for s in fs.samples for c in s.captions for w in c.text.lower().split()})
    model = create_model("attnreg", vocab=vocab, config=margs)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    items = training_items(fs.samples, "full", "all", g)
    order = torch.randperm(len(items), generator=g).tolist()
    log = []
    units = args["box_units"]
    for step in range(steps):
        idx = [order[(step * 64 + j) % len(order)] for j in range(64)]
        batch = make_batch(fs, [items[i] for i in idx])
        captured = {}

        def hook(_m, _inp, out):
            out.retain_grad()
            captured["raw"] = out

        h = model.region.out.register_forward_hook(hook)
        losses = model.training_loss(batch)
        h.remove()
        opt.zero_grad()
        losses["loss"].backward()
        if step % 10 == 0 or step == steps - 1:
            with torch.no_grad():
                out = model.predict(batch.features, batch.tokens)
                iou = box_loss.paired_iou(out.boxes * units, batch.boxes * units)
                raw = captured["raw"]
                wh = raw[:, 2:] if args["box_output"] == "relu" else None
                alpha = out.image_attention
                area = ((batch.boxes[:, 2] - batch.boxes[:, 0]) * (batch.boxes[:, 3] - batch.boxes[:, 1])) * args["grid"] ** 2
                log.append({
                    "step": step, "loss": round(float(losses["loss"]), 4), "iou": round(float(iou.mean()), 4),
                    "no_overlap": round(float((iou == 0).float().mean()), 3),
                    "dead_box": None if wh is None else round(float((wh <= 0).any(-1).float().mean()), 3),
                    "dead_alpha": None if alpha is None else round(float((alpha == 0).float().mean()), 3),
                    "mass": None if alpha is None else round(float(alpha.sum(-1).mean()), 2),
                    "target_area": round(float(area.mean()), 2),
                    "grad_box": round(float(raw.grad.abs().mean()), 8),
                })
        opt.step()
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/ablations/data/600img")
    ap.add_argument("--images", type=int, default=600, help="benchmark size when --data must be generated")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", default="runs/attnreg_paper_setting.json")
    args = ap.parse_args()
    from phraseground.train.config import DataConfig, default_config
    from phraseground.train.data import ensure_synthetic, features_for, load_split
    from phraseground.models.registry import create_model

    data = DataConfig(root=str(args.data), synthetic_images=args.images)
    if not (Path(args.data) / "train.txt").is_file():
        ensure_synthetic(data, Path(args.data))
    samples = load_split(data, "train")
    probe = create_model("attnreg", vocab=["a"], config=default_config("attnreg").model_args)
    fs = features_for(probe, samples, DataConfig(features="memory"))
    report = {}
    for name, setting in SETTINGS.items():
        t = time.time()
        report[name] = run(setting, fs, args.steps)
        last = report[name][-1]
        print(f"{name}: after {args.steps} steps iou {last['iou']} no_overlap {last['no_overlap']} "
              f"dead_box {last['dead_box']} dead_alpha {last['dead_alpha']} mass {last['mass']} "
              f"(target area {last['target_area']}) grad_box {last['grad_box']} ({time.time() - t:.0f} s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
