"""attnreg (Endo et al. 2017): box losses against hand-computed boxes, attention shapes,
ablation switches, output parametrisations, grounding and a tiny end-to-end run."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from phraseground.errors import ConfigError
from phraseground.models import box_loss
from phraseground.models.base import TrainBatch
from phraseground.models.registry import build_config, create_model


def _t(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- box losses
def test_paired_iou_hand_computed():
    a = _t((0, 0, 2, 2), (0, 0, 1, 1), (0, 0, 4, 2), (1, 1, 3, 3))
    b = _t((1, 1, 3, 3), (2, 2, 3, 3), (1, 0, 3, 1), (1, 1, 3, 3))
    # overlap 1 / union 7; disjoint; inner 2x1 strip of an 8 box: 2 / 8; identical
    expected = torch.tensor([1 / 7, 0.0, 2 / 8, 1.0], dtype=torch.float64)
    assert torch.allclose(box_loss.paired_iou(a, b), expected, atol=1e-6)


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 10
    a = torch.cat([xy, xy + 0.1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 5], 1)  # (50, 4)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 10
    b = torch.cat([xy, xy + 0.1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 5], 1)  # (50, 4)
    assert (box_iou(a, b).diagonal() > 0).sum() > 10  # the check sees overlapping pairs too
    assert torch.allclose(box_loss.paired_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6)


def test_iou_gradient_hand_computed():
    # pred (x1,y1,x2,y2) = (0,0,2,2) vs target (1,1,3,3): I = (x2 − 1)(y2 − 1) = 1, U = 8 − I = 7.
    # d/dx2: dI = 1, dU = h_pred − dI = 1 -> (1·7 − 1·1) / 49 = 6/49;
    # d/dx1: dI = 0 (x1 < 1), dU = −h_pred = −2 -> (0·7 + 1·2) / 49 = 2/49 (same for y).
    pred = _t((0, 0, 2, 2)).requires_grad_()
    box_loss.paired_iou(pred, _t((1, 1, 3, 3))).sum().backward()
    assert torch.allclose(pred.grad, _t((2 / 49, 2 / 49, 6 / 49, 6 / 49)), atol=1e-6)


def test_iou_loss_gives_no_gradient_to_a_disjoint_box_but_giou_does():
    target = _t((5, 5, 6, 6))
    for kind, expected in (("iou", 1.0), ("giou", 1 + (36 - 2) / 36)):  # enclosing box 6x6, union 2
        pred = _t((0, 0, 1, 1)).requires_grad_()
        loss = box_loss.iou_loss(pred, target, kind)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
        loss.sum().backward()
        if kind == "iou":
            assert torch.count_nonzero(pred.grad) == 0
        else:  # translating the box by t towards the target: loss = 2 − 2 / (6 − t)², slope −4 / 6³
            assert pred.grad.sum().item() == pytest.approx(-4 / 216, abs=1e-6)


def test_degenerate_boxes_are_finite():
    pred = _t((1, 1, 1, 3), (2, 2, 2, 2), (3, 3, 1, 1)).requires_grad_()  # zero width, a point, inverted
    target = _t((0, 0, 2, 2), (2, 2, 2, 2), (0, 0, 4, 4))
    iou = box_loss.paired_iou(pred, target)
    assert torch.equal(iou, torch.zeros(3, dtype=torch.float64))
    for kind in box_loss.IOU_LOSSES:
        loss = box_loss.iou_loss(pred, target, kind)
        assert torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), pred)
        assert torch.isfinite(g).all()


def test_iou_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown IoU loss"):
        box_loss.iou_loss(_t((0, 0, 1, 1)), _t((0, 0, 1, 1)), "diou")


def test_squared_error_and_area_penalty_hand_computed():
    # xywh (0,0,2,2) vs (1,1,2,3): differences (-1,-1,0,-1) -> ½·3
    se = box_loss.squared_error(_t((0, 0, 2, 2), (1, 1, 2, 2)), _t((1, 1, 3, 4), (1, 1, 2, 2)))
    assert torch.allclose(se, torch.tensor([1.5, 0.0], dtype=torch.float64))
    # target covers 0.5 × 0.25 of the image = 2 cells of a 4×4 grid; attention mass 5 -> ½·3²
    pen = box_loss.area_penalty(_t((0, 0, 0.5, 0.25), (0.5, 0.5, 1, 1)), torch.tensor([5.0, 4.0], dtype=torch.float64), 4)
    assert torch.allclose(pen, torch.tensor([4.5, 0.0], dtype=torch.float64))
