"""Heatmap overlays: the heatmap blended on the image, the max point marked, the box drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

from .io import atomic_write


def overlay(image: Image.Image, heatmap: torch.Tensor, point: tuple[float, float] | None = None,
            box: tuple[float, float, float, float] | None = None, label: str | None = None,
            alpha: float = 0.5) -> Image.Image:
    """Blend a non-negative heatmap (already at the image's size, (H, W)) on the image, with an
    opacity growing with the heat (``alpha`` at the peak).

    The point is marked with a white-ringed dot, the box (pixel xyxy) drawn in white, the label
    written on a dark strip at the top.
    """
    hm = heatmap.detach().float().clamp_min(0).cpu().numpy()
    if hm.shape != (image.height, image.width):
        raise ValueError(f"heatmap {hm.shape} does not match the image {(image.height, image.width)}")
    peak = hm.max()
    norm = hm / peak if peak > 0 else hm
    colour = (colormaps["jet"](norm)[..., :3] * 255).astype(np.float32)  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    a = (alpha * np.sqrt(norm))[..., None]  # (H, W, 1): cold regions keep the image visible
    out = Image.fromarray((base * (1 - a) + colour * a).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    r = max(3, min(image.size) // 40)
    if box is not None:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255), width=max(1, r // 2))
    if point is not None:
        x, y = point
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0), outline=(255, 255, 255), width=max(1, r // 3))
    if label:
        draw.rectangle([0, 0, out.width, 12], fill=(0, 0, 0))
        draw.text((2, 0), label[:120], fill=(255, 255, 255))
    return out


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically."""
    with atomic_write(path) as f:
        image.save(f, format="PNG")
