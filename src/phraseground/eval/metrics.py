"""Helpers shared by the evaluation metrics: input checks, box tensors, heatmap resizing and a
running tally of per-phrase scores (overall, per phrase type, and skip counts).

Boxes follow ``phraseground.data.types``: absolute, 0-based, continuous pixel ``xyxy``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from phraseground.errors import PhrasegroundError

#: one box ``(x0, y0, x1, y1)``, several boxes, or a (4,) / (K, 4) tensor
BoxesLike = Union[Sequence[float], Sequence[Sequence[float]], torch.Tensor]


def as_boxes(boxes: BoxesLike) -> torch.Tensor:
    """Return boxes as a (K, 4) float64 tensor; a single (4,) box becomes (1, 4).

    Raises:
        PhrasegroundError: a box is not 4 finite numbers with ``x0 <= x1`` and ``y0 <= y1``.
    """
    # checked in NumPy: evaluation calls this several times per phrase, on a box or two, where
    # each small torch operation costs more than the check itself
    a = boxes.detach().cpu().to(torch.float64).numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, np.float64)
    if a.size == 0:
        return torch.zeros(0, 4, dtype=torch.float64)  # (0, 4)
    if a.ndim == 1 and a.size == 4:
        a = a.reshape(1, 4)  # (1, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise PhrasegroundError(f"boxes must have shape (K, 4) (xyxy), got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise PhrasegroundError(f"boxes hold non-finite values: {a.tolist()}")
    bad = (a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1])
    if bad.any():
        raise PhrasegroundError(f"box {a[bad][0].tolist()} is not xyxy (needs x0 <= x1 and y0 <= y1)")
    return torch.from_numpy(np.array(a, copy=True))  # a tensor of its own (not a view of the input)


def union_box(boxes: BoxesLike) -> torch.Tensor:
    """The smallest box enclosing all boxes: (min x0, min y0, max x1, max y1), shape (4,).

    Raises:
        PhrasegroundError: no box given.
    """
    a = as_boxes(boxes).numpy()  # (K, 4); in NumPy, like as_boxes: a box or two per call
    if a.shape[0] == 0:
        raise PhrasegroundError("union_box needs at least one box")
    return torch.from_numpy(np.concatenate([a[:, :2].min(axis=0), a[:, 2:].max(axis=0)]))


def check_image_size(width: int, height: int) -> None:
    """Raise PhrasegroundError unless ``width`` and ``height`` are positive integers."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise PhrasegroundError(f"image {name} must be a positive integer, got {v!r}")


def check_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
    """Return a heatmap as a detached floating (h, w) CPU tensor.

    Raises:
        PhrasegroundError: not 2-D, empty, or holding NaN/inf.
    """
    t = torch.as_tensor(heatmap).detach().cpu()
    if not t.is_floating_point():
        t = t.float()
    if t.ndim != 2 or t.numel() == 0:
        raise PhrasegroundError(f"a heatmap must be a non-empty (h, w) tensor, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise PhrasegroundError("heatmap holds NaN or infinite values")
    return t


def resize_heatmap(heatmap: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinearly resize an (h, w) heatmap to (height, width) (``align_corners=False``)."""
    hm = check_heatmap(heatmap)
    return F.interpolate(hm[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def point_from_argmax(heatmap: torch.Tensor, width: int, height: int) -> tuple[float, float]:
    """Centre of the heatmap's argmax cell in image pixels: ``((j + 0.5) * W / w, (i + 0.5) * H / h)``.

    The argmax is row-major and the first maximum wins ties. For a full-resolution map
    (w = W, h = H) this is the centre ``(col + 0.5, row + 0.5)`` of the argmax pixel.
    """
    h, w = heatmap.shape
    row, col = divmod(int(torch.argmax(heatmap)), w)  # flat index of (h, w), first max on ties
    return (col + 0.5) * width / w, (row + 0.5) * height / h


@dataclass
class TallyGroup:
    """Number of phrases and per-key sums of one group (all phrases, or one phrase type)."""

    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)


class Tally:
    """Running sums of named per-phrase scores, overall and per phrase type, and skip counts.

    A phrase with several types counts once in each of its types.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded."""
        self.total = TallyGroup()
        self.per_type: dict[str, TallyGroup] = {}
        self.skipped: dict[str, int] = {}

    def skip(self, reason: str) -> None:
        """Count one skipped phrase under ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(self, types: Iterable[str], values: Mapping[str, float]) -> None:
        """Record one evaluated phrase with one value per key."""
        if set(values) != set(self.keys):
            raise ValueError(f"expected values for {self.keys}, got {tuple(values)}")
        for group in (self.total, *(self.per_type.setdefault(t, TallyGroup()) for t in set(types))):
            group.n += 1
            for k, v in values.items():
                group.sums[k] = group.sums.get(k, 0.0) + float(v)

    @staticmethod
    def mean(group: TallyGroup, key: str) -> float | None:
        """Mean of ``key`` over the group's phrases; None when the group is empty."""
        return group.sums.get(key, 0.0) / group.n if group.n else None

    @staticmethod
    def counts(group: TallyGroup, key: str, suffix: str = "") -> dict[str, float | int | None]:
        """``{accuracy, hits, misses}`` of a 0/1 key, each name followed by ``suffix``."""
        hits = int(group.sums.get(key, 0.0))
        return {
            f"accuracy{suffix}": Tally.mean(group, key),
            f"hits{suffix}": hits,
            f"misses{suffix}": group.n - hits,
        }
