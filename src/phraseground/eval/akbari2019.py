"""The ``akbari2019`` protocol exactly as MultiGrounding's evaluation code computes it.

Akbari et al. (CVPR 2019) published their evaluation in ``code/utils.py`` (``isCorrectHit``,
``attCorrectness``, ``heat2bbox``, ``filter_bbox``, ``isCorrect``, ``check_percent``) and the
boxes it reads in ``data/data_utils.py``. This module re-implements those rules, including the
ones that a cleaner protocol would not choose (each is listed in the README's protocol table):

* **Frames** (``to_frame``): the tests run on the boxes as MultiGrounding's loaders stored them,
  two per box: ``pixel`` (for the hit and attention) and ``norm`` (divided by W and H, for the
  5 % rule and the box IoU). Flickr30k: the XML's 1-based integers, i.e. our
  ``(x0 + 1, y0 + 1, x1, y1)``, for both. ReferIt: ``int(x), int(y), int(x + w), int(y + h)``
  for ``pixel`` but the unrounded floats for ``norm``. COCO, Visual Genome and ``xyxy`` (boxes
  as given): ``[x, y, x + w, y + h]`` for both.
* **Hit** (``hit``): the argmax pixel ``(row, col)`` (first on ties) of the heatmap resized
  bilinearly to the image is a hit when ``x0 <= col <= x1`` and ``y0 <= row <= y1`` for any
  ``pixel`` box: the right and bottom edges count as inside.
* **Attention correctness** (``attention_correctness``): the resized map divided by its sum,
  summed over ``map[y0:y1, x0:x1]`` of *each* box separately (right/bottom edge excluded here;
  overlapping boxes count twice, so the value can exceed 1).
* **Boxes** (``heat2bbox``): local peaks of the min-max-normalised low-resolution map (3x3
  maximum, value > 0.3, as ``skimage.feature.peak_local_max(exclude_border=False,
  threshold_rel=0.3)``), each moved to the image by ``int((p + 0.5) * H / h)``; per peak the
  4-connected region of the resized normalised map *strictly* above 0.3 x the peak's value,
  its bounding box by inclusive pixel indices (no + 1); the 3 best-scored boxes; the
  intersection-over-smaller-area merge at 0.6; then ``filter_boxes`` drops boxes with score 0
  and boxes covering 90 % or more of the image.
* **Box accuracy** (``box_correct``): IoU (normalised coordinates) of the union of the kept
  boxes with the union of the GT boxes >= 0.5; no box is a miss.
* **Skip** (``small_union``): the union of the ``norm`` GT boxes covers less than 5 % of the image.

Plateaus: ``peak_local_max`` keeps every pixel of a plateau that equals its 3x3 maximum when
``min_distance=1`` (checked against scikit-image 0.26, ``tests/test_akbari2019.py``); peaks are
ordered by value, ties row-major (a stable sort), and boxes of equal score keep that order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from phraseground.errors import ConfigError, PhrasegroundError

REL_PEAK_THR = 0.3  # peak_local_max threshold_rel on the normalised map
REL_REGION_THR = 0.3  # region: resized normalised map > this x the peak's value
IOA_THR = 0.6  # merge when intersection / own area exceeds this
TOPK_BOXES = 3
MAX_BOX_FRAC = 0.9  # filter_bbox: drop boxes covering >= 90 % of the image
MIN_UNION_FRAC = 0.05  # check_percent
IOU_THR = 0.5

#: dataset -> box frame of MultiGrounding's loaders; ``xyxy`` = the boxes as given
FRAMES = ("flickr30k", "referit", "coco", "visual_genome", "xyxy")


#: dataset reader (``phraseground.data.index.DATASETS``) / data format -> its frame
DATASET_FRAMES = {"flickr30k": "flickr30k", "coco": "coco", "coco-karpathy": "coco", "referit": "referit",
                  "referit-hu": "referit", "vg": "visual_genome", "visual_genome": "visual_genome"}


def frame_of_dataset(name: str | None) -> str:
    """The MultiGrounding frame of a dataset name; ``xyxy`` (boxes as given) when unknown."""
    return DATASET_FRAMES.get(str(name).lower(), "xyxy") if name else "xyxy"


@dataclass(frozen=True)
class FrameBoxes:
    """GT boxes in MultiGrounding's frame: ``pixel`` (K, 4) for hit/attention, ``norm`` (K, 4) in [0, 1]."""

    pixel: np.ndarray
    norm: np.ndarray


def to_frame(boxes_xyxy, width: int, height: int, frame: str = "xyxy") -> FrameBoxes:
    """Our 0-based continuous xyxy boxes -> the boxes MultiGrounding's loader had for the dataset.

    Args:
        boxes_xyxy: (K, 4) absolute pixel boxes as ``phraseground.data.types`` defines them.
        frame: one of ``FRAMES``.
    """
    if frame not in FRAMES:
        raise ConfigError(f"unknown box frame {frame!r}; known: {', '.join(FRAMES)}")
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if frame == "flickr30k":  # the XML's 1-based inclusive integers
        pixel = np.rint(b + np.array([1.0, 1.0, 0.0, 0.0]))
        norm_src = pixel
    elif frame == "referit":  # int() truncation for the box, the floats for bbox_norm
        pixel = np.trunc(b)
        norm_src = b
    else:
        pixel = b
        norm_src = b
    scale = np.array([width, height, width, height], dtype=np.float64)
    return FrameBoxes(pixel, norm_src / scale)


def resize(heatmap, width: int, height: int) -> np.ndarray:
    """(h, w) map -> (height, width), bilinear with half-pixel centres (cv2.INTER_LINEAR).

    Computed in float32 (float64 when given float64), as cv2 keeps the input's float type."""
    t = torch.as_tensor(heatmap)
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.shape == (height, width):
        return t.numpy()
    return F.interpolate(t[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def small_union(norm: np.ndarray) -> bool:
    """``not check_percent(union(bbox_norm))``: the union GT box covers < 5 % of the image."""
    x0, y0 = norm[:, 0].min(), norm[:, 1].min()
    x1, y1 = norm[:, 2].max(), norm[:, 3].max()
    return bool((x1 - x0) * (y1 - y0) < MIN_UNION_FRAC)


def argmax_pixel(resized: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first maximum, row-major."""
    row, col = np.unravel_index(int(np.argmax(resized)), resized.shape)
    return int(row), int(col)


def hit(resized: np.ndarray, pixel: np.ndarray) -> bool:
    """``isCorrectHit``: the argmax pixel lies in a box, right and bottom edges included."""
    row, col = argmax_pixel(resized)
    inside = (pixel[:, 0] <= col) & (col <= pixel[:, 2]) & (pixel[:, 1] <= row) & (row <= pixel[:, 3])
    return bool(inside.any())


def attention_correctness(resized: np.ndarray, pixel: np.ndarray) -> float:
    """``attCorrectness``: the map's share inside each box, summed over boxes (can exceed 1).

    Boxes slice the map as ``[y0:y1, x0:x1]`` (NumPy slicing; float coordinates are truncated
    with ``int()``, MultiGrounding's data held integers there).
    """
    total = float(resized.sum(dtype=np.float64))
    if total == 0:
        return 0.0
    acc = 0.0
    for x0, y0, x1, y1 in pixel.tolist():
        acc += float(resized[int(y0):int(y1), int(x0):int(x1)].sum(dtype=np.float64))
    return acc / total


def find_peaks(norm_low: np.ndarray) -> np.ndarray:
    """(P, 2) (row, col) local maxima as ``peak_local_max(exclude_border=False, threshold_rel=0.3)``.

    A peak equals the maximum of its 3x3 neighbourhood and exceeds ``max(min, 0.3 * max)``;
    a constant map has none. Ordered by value (highest first), ties row-major.
    """
    maxed = ndimage.maximum_filter(norm_low, size=3, mode="nearest")
    is_max = norm_low == maxed
    if bool(is_max.all()):
        return np.zeros((0, 2), dtype=np.int64)
    thr = max(float(norm_low.min()), REL_PEAK_THR * float(norm_low.max()))
    rows, cols = np.nonzero(is_max & (norm_low > thr))
    order = np.argsort(-norm_low[rows, cols], kind="stable")
    return np.stack([rows[order], cols[order]], axis=1)


def _ioa_merge(boxes: list[tuple[int, int, int, int]]) -> list[int]:
    """Indices removed by heat2bbox's merge loop (kept verbatim: its order and its ties)."""
    removed: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(boxes)):
            for j in range(i):
                if j in removed:
                    continue
                b1, b2 = boxes[i], boxes[j]
                isec = max(min(b1[2], b2[2]) - max(b1[0], b2[0]), 0) * max(min(b1[3], b2[3]) - max(b1[1], b2[1]), 0)
                # NumPy division: 0 / 0 is nan (never merges), x / 0 is inf
                ioa1 = np.float64(isec) / np.float64((b1[2] - b1[0]) * (b1[3] - b1[1]))
                ioa2 = np.float64(isec) / np.float64((b2[2] - b2[0]) * (b2[3] - b2[1]))
                if ioa1 > IOA_THR and ioa1 >= ioa2:
                    removed.append(i)
                elif ioa2 > IOA_THR and ioa2 >= ioa1:
                    removed.append(j)
    return removed


def heat2bbox(low: np.ndarray, width: int, height: int, resized: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of a phrase heatmap as MultiGrounding's ``heat2bbox`` followed by ``filter_bbox``.

    Args:
        low: the (h, w) heatmap at the model's resolution.
        resized: the same map already resized to (height, width) (saves the resize).

    Returns:
        boxes (K, 4) as inclusive integer pixel indices ``(min_x, min_y, max_x, max_y)`` and
        their scores (the normalised resized map at each peak), K <= 3, after the 90 % filter.
    """
    low = np.asarray(low)
    low = low.astype(np.float64 if low.dtype == np.float64 else np.float32, copy=False)
    lo, hi = low.min(), low.max()
    none = (np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.float32))
    if not hi > lo:  # MultiGrounding divides by zero here: a nan map has no peaks
        return none
    norm_low = (low - lo) / (hi - lo)
    peaks = find_peaks(norm_low)
    if not len(peaks):
        return none
    if resized is None:
        resized = resize(low, width, height)
    norm_res = (resized - lo) / (hi - lo)  # = the resized normalised map (resizing is affine)
    h, w = low.shape
    at = ((peaks + 0.5) * np.array([[height, width]]) / np.array([[h, w]])).astype(np.int32)  # (P, 2) row, col
    scores = norm_res[at[:, 0], at[:, 1]]
    order = np.argsort(-scores, kind="stable")[:TOPK_BOXES]
    boxes: list[tuple[int, int, int, int]] = []
    labelled: dict[float, np.ndarray] = {}
    for k in order:
        v = float(scores[k])
        if v not in labelled:
            labelled[v] = ndimage.label(norm_res > v * REL_REGION_THR)[0]
        lab = labelled[v]
        region = lab == lab[at[k, 0], at[k, 1]]
        ys = np.flatnonzero(region.any(axis=1))
        xs = np.flatnonzero(region.any(axis=0))
        boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])))
    removed = set(_ioa_merge(boxes))
    keep = [i for i in range(len(boxes)) if i not in removed]
    out_b = np.array([boxes[i] for i in keep], dtype=np.int64).reshape(-1, 4)
    out_s = scores[order][keep]
    return filter_boxes(out_b, out_s, width, height)


def filter_boxes(boxes: np.ndarray, scores: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``filter_bbox``: keep boxes with a positive score covering < 90 % of the image (normalised area)."""
    n = boxes / np.array([width, height, width, height], dtype=np.float64)
    area = (n[:, 2] - n[:, 0]) * (n[:, 3] - n[:, 1])
    keep = (scores > 0) & (area < MAX_BOX_FRAC)
    return boxes[keep], scores[keep]


def box_correct(pred_pixel: np.ndarray, gt_norm: np.ndarray, width: int, height: int) -> bool:
    """``isCorrect(union(gt_norm), union(pred_norm), 0.5)``; no predicted box is a miss."""
    if not len(pred_pixel) or not len(gt_norm):
        return False
    p = pred_pixel / np.array([width, height, width, height], dtype=np.float64)
    a = (p[:, 0].min(), p[:, 1].min(), p[:, 2].max(), p[:, 3].max())
    b = (gt_norm[:, 0].min(), gt_norm[:, 1].min(), gt_norm[:, 2].max(), gt_norm[:, 3].max())
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    denom = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if denom <= 0:  # MultiGrounding raises ZeroDivisionError here (two empty boxes)
        return False
    return bool(inter / denom >= IOU_THR)


def check_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    b = b.reshape(-1, 4) if b.ndim == 1 and b.size == 4 else b
    if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
        raise PhrasegroundError(f"boxes must be finite (K, 4) xyxy, got shape {b.shape}")
    return b
