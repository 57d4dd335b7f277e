"""Score one phrase from its heatmap under a protocol: the function every evaluator shares.

``score_heatmap`` is public (``phraseground.eval.score_heatmap``) so that heatmaps of other
methods can be scored under this project's protocols; the evaluation runner calls
``score_resized`` with the heatmap it resized once.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval import akbari2019 as ak
from phraseground.eval.metrics import as_boxes, check_heatmap, check_image_size, point_from_argmax, union_box
from phraseground.eval.pointing import (
    DEFAULT_PROTOCOL,
    PointingProtocol,
    box_skip_reason,
    frame_boxes,
    get_protocol,
    point_hits,
)

BOX_METHODS = ("heat2bbox", "nms")
ATTENTION_RULES = ("per_box", "union")


def _choice(value: str | None, default: str, known: tuple[str, ...], name: str) -> str:
    v = default if value is None else value
    if v not in known:
        raise ConfigError(f"unknown {name} {v!r}; known: {', '.join(known)}")
    return v


def resize_once(heatmap, width: int, height: int) -> tuple[torch.Tensor, np.ndarray]:
    """The checked (h, w) heatmap and its bilinear resize to (height, width) as a NumPy array."""
    check_image_size(width, height)
    low = check_heatmap(heatmap)
    return low, ak.resize(low, width, height)


def score_heatmap(
    heatmap,
    gt_boxes_xyxy,
    size: tuple[int, int],
    protocol: str | PointingProtocol = DEFAULT_PROTOCOL,
    box_frame: str = "xyxy",
    *,
    box_method: str | None = None,
    attention: str | None = None,
) -> dict:
    """Score one phrase's heatmap against its ground-truth boxes under a protocol.

    Args:
        heatmap: (h, w) NumPy array or tensor at any resolution (resized as the protocol says).
        gt_boxes_xyxy: the phrase's boxes, absolute pixel xyxy as the dataset readers give them
            (0-based, continuous; ``phraseground.data.types``).
        size: the image's ``(width, height)``.
        protocol: ``akbari2019`` (default), ``engilberge2018`` or ``tolerance15``.
        box_frame: ``akbari2019`` only: convert the boxes to the frame MultiGrounding's loader
            had for the dataset (``flickr30k``, ``referit``, ``coco``, ``visual_genome``);
            ``xyxy`` (default) applies the tests to the boxes as given.
        box_method: override the protocol's heatmap -> box method (``heat2bbox`` | ``nms``).
        attention: override the protocol's attention rule (``per_box`` | ``union``).

    Returns:
        ``{"kept", "hit", "attention_correctness", "box_correct", "skip_reason", "point",
        "box", "boxes"}``: ``kept`` False with a ``skip_reason`` (``no_box``, ``small_box``)
        and None scores when the protocol leaves the phrase out; ``point`` (x, y) is the
        answer pixel's centre (None for an all-zero map), ``boxes`` the predicted boxes and
        ``box`` their union, in continuous pixel xyxy (a heat2bbox box covering columns
        c0..c1 is ``(c0, ., c1 + 1, .)``).
    """
    width, height = size
    low, resized = resize_once(heatmap, width, height)
    return score_resized(low, resized, gt_boxes_xyxy, width, height, protocol, box_frame,
                         box_method=box_method, attention=attention)


def skipped(reason: str) -> dict:
    return {"kept": False, "hit": None, "attention_correctness": None, "box_correct": None,
            "skip_reason": reason, "point": None, "box": None, "boxes": None}


def score_resized(
    low: torch.Tensor,
    resized: np.ndarray,
    gt_boxes_xyxy,
    width: int,
    height: int,
    protocol: str | PointingProtocol = DEFAULT_PROTOCOL,
    box_frame: str = "xyxy",
    *,
    box_method: str | None = None,
    attention: str | None = None,
    boxes: bool = True,
) -> dict:
    """``score_heatmap`` for a heatmap already resized to the image (``resize_once``)."""
    proto = get_protocol(protocol)
    method = _choice(box_method, proto.box_method, BOX_METHODS, "box method")
    att_rule = _choice(attention, proto.attention, ATTENTION_RULES, "attention rule")
    gt = as_boxes(gt_boxes_xyxy)
    reason = box_skip_reason(gt, width, height, proto, box_frame)
    if reason is not None:
        return skipped(reason)
    frame = ak.to_frame(gt.numpy(), width, height, box_frame if proto.frames else "xyxy")
    if not bool(low.any()):  # zero word scores: no answer, a miss
        return {"kept": True, "hit": False, "attention_correctness": 0.0, "box_correct": False if boxes else None,
                "skip_reason": None, "point": None, "box": None, "boxes": [] if boxes else None}
    # the point
    if proto.full_resolution:
        row, col = ak.argmax_pixel(resized)
        point = (col + 0.5, row + 0.5)
    else:
        point = point_from_argmax(low, width, height)
    hit = point_hits(point, frame_boxes(gt, width, height, proto, box_frame), proto)
    # attention
    if att_rule == "per_box":
        att = ak.attention_correctness(resized, frame.pixel)
    else:
        if bool((low < 0).any()):
            raise PhrasegroundError("attention correctness over the union needs a non-negative heatmap")
        from phraseground.eval.boxes import attention_share

        att = attention_share(torch.from_numpy(resized), gt)
    out = {"kept": True, "hit": bool(hit), "attention_correctness": float(att), "skip_reason": None,
           "point": point, "box_correct": None, "box": None, "boxes": None}
    if boxes:
        correct, pred = boxes_from_heatmap(low, resized, gt, frame, width, height, method)
        out["box_correct"] = correct
        out["boxes"] = pred.tolist()
        out["box"] = union_box(pred).tolist() if len(pred) else None
    return out


def boxes_from_heatmap(low: torch.Tensor, resized: np.ndarray, gt: torch.Tensor, frame: ak.FrameBoxes,
                       width: int, height: int, method: str = "heat2bbox") -> tuple[bool, torch.Tensor]:
    """Box correctness (union vs union IoU >= 0.5) and the predicted boxes (K, 4) in continuous xyxy."""
    if method == "heat2bbox":
        pix, _ = ak.heat2bbox(low.numpy(), width, height, resized=resized)
        correct = ak.box_correct(pix, frame.norm, width, height)
        pred = torch.from_numpy(pix.astype(np.float64) + np.array([0.0, 0.0, 1.0, 1.0])).reshape(-1, 4)
        return correct, pred
    from phraseground.eval.boxes import heatmap_to_boxes

    pred, _ = heatmap_to_boxes(torch.from_numpy(resized))
    if not len(pred):
        return False, pred
    return bool(float(box_iou(union_box(pred)[None], union_box(gt)[None])) >= 0.5), pred
