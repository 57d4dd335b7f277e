"""Checks every dataset reader applies the same way: image sizes from file headers, boxes
against their image."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.ops import clip_boxes_to_image

from phraseground.data.types import Box
from phraseground.errors import DataFormatError

BOX_OK, BOX_CLIPPED, BOX_BROKEN, BOX_OUTSIDE = "ok", "clipped", "broken", "outside"


def image_size(path: Path, required: bool = True) -> tuple[int, int]:
    """``(width, height)`` from the image file header (no decoding; the pixel limit is checked).

    Args:
        path: the image file.
        required: when False a missing file gives ``(0, 0)`` (size unknown) instead of an error.

    Raises:
        DataFormatError: the file is missing (and required), is not a readable image or is over
            the pixel limit (``phraseground.data.images``).
    """
    from phraseground.data.images import image_size as header_size

    path = Path(path)
    if not required and not path.is_file():
        return 0, 0
    return header_size(path)  # the stored frame; ImageError (a DataFormatError) names the file


def check_boxes(boxes: list[Box], width: int, height: int) -> list[tuple[str, Box]]:
    """Check xyxy boxes against an image and clip them to it.

    Returns:
        Per box a verdict and the clipped box: ``BOX_OK``; ``BOX_CLIPPED`` (it passed the image
        edge); ``BOX_BROKEN`` (not finite, or ``x1 <= x0`` or ``y1 <= y0``); ``BOX_OUTSIDE``
        (nothing of it is inside the image).
    """
    if not boxes:
        return []
    raw = torch.tensor(boxes, dtype=torch.float64)  # (K, 4) xyxy
    ordered = torch.isfinite(raw).all(dim=1) & (raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1])
    clipped = clip_boxes_to_image(raw, (height, width))  # (K, 4)
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = (clipped != raw).any(dim=1)
    verdicts = []
    for box_ok, in_ok, box_moved, box in zip(ordered.tolist(), inside.tolist(), moved.tolist(), clipped.tolist()):
        verdict = BOX_BROKEN if not box_ok else BOX_OUTSIDE if not in_ok else BOX_CLIPPED if box_moved else BOX_OK
        verdicts.append((verdict, tuple(box)))
    return verdicts
