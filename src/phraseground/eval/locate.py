"""``locate``: one phrase's answer for users (point and box) from a model's output.

It is one box method among the protocols' (DECISIONS §3), not a protocol's definition: the
``Grounder`` (``phraseground.predict``) calls it with the default ``"nms"``; ``"heat2bbox"``
gives MultiGrounding's boxes (``phraseground.eval.akbari2019``).
"""
from __future__ import annotations

import torch

from phraseground.errors import ConfigError
from phraseground.eval import akbari2019 as ak
from phraseground.eval.boxes import heatmap_to_boxes
from phraseground.eval.metrics import point_from_argmax, resize_heatmap, union_box

LOCATE_METHODS = ("nms", "heat2bbox")


def regressed_box_pixels(box: torch.Tensor, width: int, height: int) -> tuple[float, float, float, float] | None:
    """A regressed box (fractions of the image, xyxy) in pixels, put in order and clipped to the
    image; None when it is not finite or has no area inside the image."""
    b = box.detach().double().cpu() * torch.tensor([width, height, width, height], dtype=torch.float64)
    if not bool(torch.isfinite(b).all()):
        return None
    x0, x1 = (min(max(v, 0.0), float(width)) for v in sorted((float(b[0]), float(b[2]))))
    y0, y1 = (min(max(v, 0.0), float(height)) for v in sorted((float(b[1]), float(b[3]))))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def locate_candidates(heatmap: torch.Tensor, box: torch.Tensor | None, width: int, height: int,
                      method: str = "nms"):
    """``locate`` plus the candidate boxes it chose from: a list of (pixel xyxy, score), best first.

    Heatmap models: the boxes of ``heatmap_to_boxes`` (``"nms"``: IoU suppression over the
    peaks' regions) or of MultiGrounding's ``heat2bbox`` (``"heat2bbox"``: its merge and 90 %
    filter; inclusive pixel boxes made continuous, + 1 on the far edges), scored by their peak
    over the map's maximum; the answer is their union. Box-regressing models: the one regressed
    box (score 1.0; the caller may replace it by the phrase score).
    """
    if method not in LOCATE_METHODS:
        raise ConfigError(f"unknown box method {method!r}; known: {', '.join(LOCATE_METHODS)}")
    low = heatmap.float().cpu()
    hm = resize_heatmap(low, width, height)
    top = float(hm.max())
    point = point_from_argmax(hm, width, height) if top > 0 else None
    if box is not None:
        pixels = regressed_box_pixels(box, width, height)
        return hm, point, pixels, [] if pixels is None else [(pixels, 1.0)]
    if method == "heat2bbox":
        b, s = ak.heat2bbox(low.numpy(), width, height, resized=hm.numpy())
        boxes = torch.from_numpy(b).to(torch.float64) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
        cands = [(tuple(x), float(v)) for x, v in zip(boxes.tolist(), s.tolist())]  # normalised peak values
    else:
        boxes, scores = heatmap_to_boxes(hm)
        cands = [(tuple(x), float(v) / top) for x, v in zip(boxes.tolist(), scores.tolist())]
    return hm, point, (tuple(union_box(boxes).tolist()) if len(boxes) else None), cands


def locate(heatmap: torch.Tensor, box: torch.Tensor | None, width: int, height: int, method: str = "nms"
           ) -> tuple[torch.Tensor, tuple[float, float] | None, tuple[float, float, float, float] | None]:
    """One phrase's answer in image pixels from a model's output.

    Args:
        heatmap: (h, w) heatmap on the model's grid.
        box: (4,) regressed box as fractions of the image (xyxy), or None for heatmap models.
        method: heatmap -> box, ``"nms"`` (default) or ``"heat2bbox"`` (see ``locate_candidates``).

    Returns:
        the heatmap resized to (height, width), the argmax point (pixel centre; None for an
        all-zero map) and the box in continuous pixel xyxy (regressed — in order, clipped to the
        image, None when not finite or empty —, or the union of the boxes extracted from the
        heatmap; None when there is none).
    """
    hm, point, pixels, _ = locate_candidates(heatmap, box, width, height, method)
    return hm, point, pixels


__all__ = ["LOCATE_METHODS", "locate", "locate_candidates", "regressed_box_pixels"]
