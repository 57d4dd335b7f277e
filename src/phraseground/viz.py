"""Heatmap overlays: the heatmap blended on the image in a perceptually uniform colour map
(magma), the ground-truth boxes in cyan, the predicted point and box in lime, an optional label
whose size follows the image's."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write

COLOUR_MAP = "magma"
GT_COLOUR = (0, 229, 255)  # cyan: not a colour of magma, so it stands out on any heat
PRED_COLOUR = (118, 255, 3)  # lime
Box = tuple[float, float, float, float]


def display_scale(width: int, height: int, min_side: int = 256, max_side: int = 1024) -> float:
    """Factor that brings an image to display size: small images up (integer factors, so pixels
    stay square) until the short side reaches ``min_side``; large ones down to ``max_side``."""
    short, long = min(width, height), max(width, height)
    if short < min_side:
        return float(min(math.ceil(min_side / short), max(1, max_side // long)))
    if long > max_side:
        return max_side / long
    return 1.0


def _font(size: int):
    return ImageFont.load_default(size=max(8, size))


def _heat_colours(heatmap: torch.Tensor, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colours (0-255) of a non-negative heatmap scaled to its peak, and (H, W, 1)
    opacities ``alpha * sqrt(heat)``: cold regions stay transparent."""
    hm = torch.as_tensor(heatmap).detach().float().clamp_min(0).cpu().numpy()
    peak = hm.max() if hm.size else 0.0
    norm = hm / peak if peak > 0 else hm
    colour = (colormaps[COLOUR_MAP](norm)[..., :3] * 255).astype(np.float32)
    return colour, (alpha * np.sqrt(norm))[..., None].astype(np.float32)


def heat_layer(heatmap: torch.Tensor, alpha: float = 0.75) -> Image.Image:
    """The heatmap alone as an RGBA image (magma, opacity growing with the heat), to lay over
    the picture (the web page does)."""
    colour, a = _heat_colours(heatmap, alpha)
    return Image.fromarray(np.concatenate([colour, a * 255], axis=-1).round().clip(0, 255).astype(np.uint8), "RGBA")


def _rectangle(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int], line: int) -> None:
    """Outline the pixels of a continuous xyxy box (last pixel inside: x1 - 1); a box under a
    pixel wide or high is drawn on the pixel it lies in."""
    x0, y0 = box[0], box[1]
    x1, y1 = max(x0, box[2] - 1), max(y0, box[3] - 1)
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=line + 2)  # a dark edge: the box
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)  # shows on objects of its own colour


def overlay(image: Image.Image, heatmap: torch.Tensor | None, point: tuple[float, float] | None = None,
            box: Box | None = None, label: str | None = None, alpha: float = 0.6,
            gt_boxes: Sequence[Box] = ()) -> Image.Image:
    """Blend a non-negative heatmap (already at the image's size, (H, W)) on the image, with an
    opacity growing with the heat (``alpha`` at the peak); ``None`` draws the marks only.

    Ground-truth boxes (pixel xyxy) are drawn in cyan, the predicted box in lime, the point as a
    lime dot ringed in black; line widths, the dot and the label follow the image size.
    """
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heatmap is not None:
        if tuple(heatmap.shape) != (image.height, image.width):
            raise ValueError(f"heatmap {tuple(heatmap.shape)} does not match the image {(image.height, image.width)}")
        colour, a = _heat_colours(heatmap, alpha)
        base = base * (1 - a) + colour * a
    out = Image.fromarray(base.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    side = min(image.size)
    line = max(1, round(side / 110))
    for g in gt_boxes:
        _rectangle(draw, g, GT_COLOUR, line)
    if box is not None:
        _rectangle(draw, box, PRED_COLOUR, line)
    if point is not None:
        r = max(3, round(side / 45))
        x, y = point
        draw.ellipse([x - r, y - r, x + r, y + r], fill=PRED_COLOUR, outline=(0, 0, 0), width=max(1, r // 3))
    if label:
        font = _font(round(side / 18))
        text = label[:120]
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        pad = max(2, (y1 - y0) // 4)
        draw.rectangle([0, 0, out.width, y1 + 2 * pad], fill=(0, 0, 0))
        draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return out


def display_overlay(image: Image.Image, heatmap: torch.Tensor | None, point: tuple[float, float] | None = None,
                    box: Box | None = None, label: str | None = None, gt_boxes: Sequence[Box] = (),
                    min_side: int = 256, max_side: int = 1024) -> Image.Image:
    """``overlay`` at display size (``display_scale``): the image resized, the heatmap (any
    resolution) resized bilinearly to it, points and boxes (pixels of the original) scaled."""
    from .eval.metrics import resize_heatmap

    f = display_scale(image.width, image.height, min_side, max_side)
    w, h = max(1, round(image.width * f)), max(1, round(image.height * f))
    shown = image if f == 1 else image.resize((w, h), Image.BICUBIC if f > 1 else Image.LANCZOS)
    hm = None if heatmap is None else resize_heatmap(heatmap.detach().float().cpu(), w, h)
    return overlay(shown, hm, point=point and (point[0] * f, point[1] * f),
                   box=box and tuple(v * f for v in box), label=label,
                   gt_boxes=[tuple(v * f for v in g) for g in gt_boxes])


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically."""
    with atomic_write(path) as f:
        image.save(f, format="PNG")
