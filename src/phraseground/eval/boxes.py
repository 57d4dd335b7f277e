"""Box accuracy and attention correctness from heatmaps (and from regressed boxes).

Heatmap -> boxes (``heatmap_to_boxes``), after MultiGrounding's ``heat2bbox``:
local peaks of the full-resolution map -> for each peak the connected region of pixels at
least a fraction of the peak's value -> its bounding box scored by the peak -> overlap
suppression -> the best few boxes. Box accuracy compares the union of the predicted boxes
with the union of the GT boxes (IoU >= 0.5). Boxes are continuous pixel xyxy
(``phraseground.data.types``): a region covering pixel columns c0..c1 is ``(c0, ., c1 + 1, .)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.ops import box_iou, masks_to_boxes, nms

from phraseground.data.types import Phrase
from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval.metrics import (
    BoxesLike,
    Tally,
    TallyGroup,
    as_boxes,
    check_heatmap,
    check_image_size,
    resize_heatmap,
    union_box,
)
from phraseground.eval.pointing import DEFAULT_PROTOCOL, PointingProtocol, get_protocol, skip_reason

__all__ = [
    "AttentionCorrectness",
    "BoxAccuracy",
    "BoxExtraction",
    "attention_share",
    "box_pixel_mask",
    "heatmap_to_boxes",
    "union_box",
]


@dataclass(frozen=True)
class BoxExtraction:
    """Settings of ``heatmap_to_boxes``.

    Defaults follow MultiGrounding's ``heat2bbox`` (peaks and regions at 0.3 of the reference
    value, 3 boxes); its containment-based merge (intersection over area > 0.6) is replaced by
    standard IoU non-maximum suppression at 0.5.

    Attributes:
        peak_frac: a local maximum is a peak when its value is >= peak_frac * global max.
        region_frac: a peak's region is its 4-connected component of pixels >= region_frac * peak value.
        nms_iou: boxes overlapping a better-scored box with IoU > nms_iou are dropped.
        max_boxes: keep at most this many boxes (best peaks first), after suppression.
    """

    peak_frac: float = 0.3
    region_frac: float = 0.3
    nms_iou: float = 0.5
    max_boxes: int = 3

    def __post_init__(self) -> None:
        for name in ("peak_frac", "region_frac", "nms_iou"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"{name} must lie in (0, 1], got {v!r}")
        if self.max_boxes < 1:
            raise ConfigError(f"max_boxes must be >= 1, got {self.max_boxes!r}")


def heatmap_to_boxes(
    heatmap: torch.Tensor,
    peak_frac: float = BoxExtraction.peak_frac,
    region_frac: float = BoxExtraction.region_frac,
    nms_iou: float = BoxExtraction.nms_iou,
    max_boxes: int = BoxExtraction.max_boxes,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes around the peaks of a full-resolution (H, W) heatmap (see ``BoxExtraction``).

    Peaks are pixels equal to the max of their 3x3 neighbourhood (``max_pool2d``) and
    >= ``peak_frac`` of the global max; each peak's region is the connected component
    (``scipy.ndimage.label``, 4-connectivity) of ``heatmap >= region_frac * peak`` holding it;
    its bounding box (``torchvision.ops.masks_to_boxes``) is scored by the peak value;
    ``torchvision.ops.nms`` then drops overlapping boxes. A map without positive values has
    no boxes.

    Returns:
        boxes (K, 4) float64 pixel xyxy and their scores (K,), best first, K <= max_boxes.
    """
    cfg = BoxExtraction(peak_frac, region_frac, nms_iou, max_boxes)
    hm = check_heatmap(heatmap).to(torch.float64)
    top = float(hm.max())
    if top <= 0:
        return torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    pooled = F.max_pool2d(hm[None, None], kernel_size=3, stride=1, padding=1)[0, 0]  # (H, W)
    rows, cols = torch.nonzero((hm == pooled) & (hm >= cfg.peak_frac * top), as_tuple=True)
    values = hm[rows, cols]
    arr = hm.numpy()
    boxes = torch.zeros(0, 4, dtype=torch.float64)
    scores = torch.zeros(0, dtype=torch.float64)
    # best peaks first; peaks of equal value inside one region (plateaus) share a box
    for v in torch.unique(values).flip(0).tolist():
        labels, _ = ndimage.label(arr >= cfg.region_frac * v)  # (H, W) component ids
        at_v = values == v
        ids = np.unique(labels[rows[at_v].numpy(), cols[at_v].numpy()])
        regions = torch.from_numpy(labels[None] == ids[:, None, None])  # (n, H, W)
        b = masks_to_boxes(regions).to(torch.float64)  # (n, 4), inclusive max pixel
        b[:, 2:] += 1  # inclusive last pixel -> continuous xyxy
        boxes = torch.cat([boxes, b])
        scores = torch.cat([scores, torch.full((len(ids),), v, dtype=torch.float64)])
        keep = nms(boxes, scores, cfg.nms_iou)
        # greedy suppression never lets a weaker box remove a stronger one: once max_boxes
        # boxes survive, the remaining (weaker) peaks cannot change the answer
        if len(keep) >= cfg.max_boxes:
            break
    keep = keep[: cfg.max_boxes]
    return boxes[keep], scores[keep]


def box_pixel_mask(boxes: BoxesLike, width: int, height: int) -> torch.Tensor:
    """(height, width) bool mask of the pixels inside any box (``x0 <= col < x1``, ``y0 <= row < y1``)."""
    b = as_boxes(boxes)  # (K, 4)
    cols = torch.arange(width, dtype=torch.float64)
    rows = torch.arange(height, dtype=torch.float64)
    in_x = (cols[None] >= b[:, 0:1]) & (cols[None] < b[:, 2:3])  # (K, W)
    in_y = (rows[None] >= b[:, 1:2]) & (rows[None] < b[:, 3:4])  # (K, H)
    return (in_y[:, :, None] & in_x[:, None, :]).any(dim=0)  # (K, H, W) -> (H, W)


def _non_negative(heatmap: torch.Tensor) -> torch.Tensor:
    hm = check_heatmap(heatmap).to(torch.float64)
    if bool((hm < 0).any()):
        raise PhrasegroundError("attention correctness needs a non-negative heatmap")
    return hm


def attention_share(heatmap: torch.Tensor, boxes: BoxesLike) -> float:
    """Share of a non-negative full-resolution (H, W) heatmap's mass inside the union of the boxes' pixels.

    Overlapping boxes count their common pixels once; an all-zero map scores 0.

    Raises:
        PhrasegroundError: the heatmap has negative values.
    """
    hm = _non_negative(heatmap)
    total = float(hm.sum())
    if total == 0:
        return 0.0
    h, w = hm.shape
    return float(hm[box_pixel_mask(boxes, w, h)].sum()) / total


class BoxAccuracy:
    """Share of phrases whose predicted box matches the ground truth at IoU >= ``iou_threshold``.

    ``accuracy`` compares the union of the predicted boxes with the union of the phrase's GT
    boxes (MultiGrounding); ``accuracy_any_gt`` compares the union of the predicted boxes with
    the best-matching single GT box. Phrases are skipped as by the pointing protocol.

    Heatmaps become boxes by the protocol's ``box_method`` (``akbari2019``: MultiGrounding's
    ``heat2bbox`` with its 90 % filter, compared in the dataset's frame; the others: ``nms``,
    ``heatmap_to_boxes`` with ``extraction``), unless ``box_method`` overrides it.

    Args:
        protocol: pointing protocol whose skip rules apply.
        iou_threshold: smallest IoU that counts as a hit (heat2bbox: MultiGrounding's 0.5 only).
        extraction: heatmap -> boxes settings of the ``nms`` method.
        box_frame: the dataset's frame for protocols that use MultiGrounding's frames.
        box_method: ``heat2bbox`` | ``nms`` (None: the protocol's).
    """

    def __init__(
        self,
        protocol: str | PointingProtocol = DEFAULT_PROTOCOL,
        iou_threshold: float = 0.5,
        extraction: BoxExtraction = BoxExtraction(),
        box_frame: str = "xyxy",
        box_method: str | None = None,
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise ConfigError(f"iou_threshold must lie in (0, 1], got {iou_threshold!r}")
        self.protocol = get_protocol(protocol)
        self.box_frame = box_frame
        self.box_method = box_method or self.protocol.box_method
        self.iou_threshold = iou_threshold
        self.extraction = extraction
        self._tally = Tally(("hit", "hit_any_gt"))

    def reset(self) -> None:
        """Forget every recorded phrase."""
        self._tally.reset()

    def update(
        self,
        phrase: Phrase,
        width: int,
        height: int,
        heatmap: torch.Tensor | None = None,
        boxes: BoxesLike | None = None,
    ) -> bool | None:
        """Score one phrase.

        Args:
            phrase: the phrase with its GT boxes and types.
            width: image width in pixels.
            height: image height in pixels.
            heatmap: the phrase's (h, w) heatmap, resized bilinearly to the image before box
                extraction; or
            boxes: directly predicted box(es) in image pixels, xyxy, (4,) or (K, 4).
                Give exactly one.

        Returns:
            True/False for a hit/miss of the union-vs-union test, None when skipped.
        """
        if (heatmap is None) == (boxes is None):
            raise ValueError("give exactly one of heatmap or boxes")
        check_image_size(width, height)
        reason = skip_reason(phrase, width, height, self.protocol, self.box_frame)
        if reason is not None:
            self._tally.skip(reason)
            return None
        if heatmap is not None and self.box_method == "heat2bbox" and self.iou_threshold == 0.5:
            from phraseground.eval.akbari2019 import to_frame
            from phraseground.eval.score import boxes_from_heatmap, resize_once

            low, resized = resize_once(heatmap, width, height)
            frame = to_frame(as_boxes(phrase.boxes).numpy(), width, height,
                             self.box_frame if self.protocol.frames else "xyxy")
            hit, pred = boxes_from_heatmap(low, resized, as_boxes(phrase.boxes), frame, width, height)
            hit_any = bool(pred.shape[0]) and float(box_iou(union_box(pred)[None], as_boxes(phrase.boxes)).max()) >= 0.5
            self._tally.add(phrase.types, {"hit": float(hit), "hit_any_gt": float(hit_any)})
            return hit
        if heatmap is not None:
            pred, _ = heatmap_to_boxes(resize_heatmap(heatmap, width, height), **asdict(self.extraction))
        else:
            pred = as_boxes(boxes)
        hit = hit_any = False
        if pred.shape[0]:
            gt = as_boxes(phrase.boxes)  # (G, 4)
            pred_union = union_box(pred)[None]  # (1, 4)
            hit = float(box_iou(pred_union, union_box(gt)[None])) >= self.iou_threshold
            hit_any = float(box_iou(pred_union, gt).max()) >= self.iou_threshold
        self._tally.add(phrase.types, {"hit": float(hit), "hit_any_gt": float(hit_any)})
        return hit

    def compute(self) -> dict:
        """Report ``protocol, iou_threshold, accuracy, hits, misses, accuracy_any_gt, hits_any_gt,
        misses_any_gt, n_evaluated, skipped, per_type`` (per type: both accuracies and counts)."""
        t = self._tally

        def both(group: TallyGroup) -> dict:
            return {**Tally.counts(group, "hit"), **Tally.counts(group, "hit_any_gt", suffix="_any_gt")}

        return {
            "protocol": self.protocol.name,
            "iou_threshold": self.iou_threshold,
            **both(t.total),
            "n_evaluated": t.total.n,
            "skipped": dict(sorted(t.skipped.items())),
            "per_type": {name: both(g) for name, g in sorted(t.per_type.items())},
        }


class AttentionCorrectness:
    """Mean attention correctness: the protocol's rule (``akbari2019``: MultiGrounding's
    per-box sums in the dataset's frame, which can exceed 1; the others: ``attention_share``,
    the share inside the union of the GT boxes' pixels), unless ``attention`` overrides it.

    Args:
        protocol: pointing protocol whose skip rules apply.
        box_frame: the dataset's frame for protocols that use MultiGrounding's frames.
        attention: ``per_box`` | ``union`` (None: the protocol's).
    """

    def __init__(self, protocol: str | PointingProtocol = DEFAULT_PROTOCOL, box_frame: str = "xyxy",
                 attention: str | None = None) -> None:
        self.protocol = get_protocol(protocol)
        self.box_frame = box_frame
        self.attention = attention or self.protocol.attention
        self._tally = Tally(("share",))

    def reset(self) -> None:
        """Forget every recorded phrase."""
        self._tally.reset()

    def update(self, phrase: Phrase, width: int, height: int, heatmap: torch.Tensor) -> float | None:
        """Score one phrase from its non-negative (h, w) heatmap, resized bilinearly to the image.

        Returns:
            the phrase's share, or None when skipped.
        """
        check_image_size(width, height)
        reason = skip_reason(phrase, width, height, self.protocol, self.box_frame)
        if reason is not None:
            self._tally.skip(reason)
            return None
        if self.attention == "per_box":
            from phraseground.eval.akbari2019 import attention_correctness, resize, to_frame

            frame = to_frame(as_boxes(phrase.boxes).numpy(), width, height,
                             self.box_frame if self.protocol.frames else "xyxy")
            share = attention_correctness(resize(check_heatmap(heatmap), width, height), frame.pixel)
        else:
            share = attention_share(resize_heatmap(_non_negative(heatmap), width, height), phrase.boxes)
        self._tally.add(phrase.types, {"share": share})
        return share

    def compute(self) -> dict:
        """Report ``protocol, attention_correctness, n_evaluated, skipped, per_type``
        (per type: ``{attention_correctness, n_evaluated}``); the mean is None when nothing was evaluated."""
        t = self._tally
        return {
            "protocol": self.protocol.name,
            "attention_correctness": Tally.mean(t.total, "share"),
            "n_evaluated": t.total.n,
            "skipped": dict(sorted(t.skipped.items())),
            "per_type": {
                name: {"attention_correctness": Tally.mean(g, "share"), "n_evaluated": g.n}
                for name, g in sorted(t.per_type.items())
            },
        }
