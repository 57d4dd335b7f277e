"""Differentiable box losses for box-regression grounding (Endo et al. 2017, Sec. 3.6).

Boxes are ``(N, 4)`` xyxy tensors in any common unit; every loss is per row (no reduction).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou_loss

EPS = 1e-7
IOU_LOSSES = ("iou", "giou")


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (``torchvision.ops.box_iou`` gives all pairs).

    Degenerate boxes (zero or negative width/height) have zero area; two boxes without
    area have IoU 0.

    Args:
        a, b: (N, 4) xyxy boxes.

    Returns:
        (N,) IoU values, differentiable in both arguments.
    """
    wh_a = (a[:, 2:] - a[:, :2]).clamp_min(0)  # (N, 2)
    wh_b = (b[:, 2:] - b[:, :2]).clamp_min(0)  # (N, 2)
    inter_wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)  # (N, 2)
    inter = inter_wh.prod(-1)
    union = wh_a.prod(-1) + wh_b.prod(-1) - inter
    return inter / (union + eps)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "iou") -> torch.Tensor:
    """Per-row box loss: ``"iou"`` = 1 − IoU (the paper's L_IoU; no gradient once the boxes
    are disjoint) or ``"giou"`` = 1 − GIoU (Rezatofighi et al. 2019; pulls disjoint boxes
    together through the smallest enclosing box).

    Args:
        pred, target: (N, 4) xyxy boxes.
        kind: one of ``IOU_LOSSES``.
    """
    if kind == "iou":
        return 1.0 - paired_iou(pred, target)
    if kind == "giou":
        return generalized_box_iou_loss(pred, target, reduction="none", eps=EPS)
    raise ValueError(f"unknown IoU loss {kind!r}; known: {IOU_LOSSES}")


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row ½‖t − g‖² on the boxes as (x, y, w, h) vectors (the paper's L_SE).

    Args:
        pred, target: (N, 4) xyxy boxes.
    """
    diff = box_convert(pred, "xyxy", "xywh") - box_convert(target, "xyxy", "xywh")  # (N, 4)
    return 0.5 * diff.pow(2).sum(-1)


def area_penalty(target: torch.Tensor, attention_mass: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-row ½(S_box − S_att)² (the paper's L_S).

    Args:
        target: (N, 4) ground-truth xyxy boxes as fractions of the image size.
        attention_mass: (N,) S_att, the sum of the image attention map.
        grid: side of the (grid × grid) attention map; S_box is the target area in cells.
    """
    wh = (target[:, 2:] - target[:, :2]).clamp_min(0)  # (N, 2)
    s_box = wh.prod(-1) * grid * grid
    return 0.5 * (s_box - attention_mass).pow(2)
