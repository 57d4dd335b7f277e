"""Pretrain the small synthetic backbone (the analogue of ImageNet pretraining) and ship it.

Task: classify the shape, colour and size of one object on a textured background (images
drawn on the fly by the synthetic benchmark's renderer). Writes
``src/phraseground/weights/synthcnn.safetensors`` (atomically) and its ``.sha256``.

    python scripts/pretrain_synthcnn.py [--minutes 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save

from phraseground.data.synthetic import COLOURS, SHAPES, SIZES, render_single_object
from phraseground.encoders.synthcnn import SynthCNN
from phraseground.io import write_bytes, write_text
from phraseground.encoders.vision import PACKAGE_WEIGHTS, get_backbone_spec, sha256_file
from phraseground.features import images_to_tensor


def make_batch(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, labels = [], {"shape": [], "colour": [], "size": []}
    for _ in range(n):
        img, obj = render_single_object(rng, size)
        images.append(img)
        labels["shape"].append(SHAPES.index(obj.shape))
        labels["colour"].append(list(COLOURS).index(obj.colour))
        labels["size"].append(list(SIZES).index(obj.size))
    spec = get_backbone_spec("synthcnn")
    return images_to_tensor(images, spec), {k: torch.tensor(v) for k, v in labels.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = SynthCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    size = get_backbone_spec("synthcnn").input_size
    val_x, val_y = make_batch(np.random.default_rng(args.seed + 1), 512, size)
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        net.train()
        x, y = make_batch(rng, args.batch, size)
        out = net(x)
        loss = sum(F.cross_entropy(out[k], y[k]) for k in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            net.eval()
            with torch.no_grad():
                vo = net(val_x)
            acc = {k: round((vo[k].argmax(1) == val_y[k]).float().mean().item(), 3) for k in vo}
            print(f"step {step} {time.time() - start:.0f}s loss {loss.item():.3f} val acc {acc}", flush=True)
    out = PACKAGE_WEIGHTS / "synthcnn.safetensors"
    write_bytes(out, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    write_text(PACKAGE_WEIGHTS / "synthcnn.sha256", sha256_file(out) + "  synthcnn.safetensors\n")
    print(f"wrote {out} after {step} steps")


if __name__ == "__main__":
    main()
