"""The pointing game under named protocols, so numbers stay comparable with published ones.

Points are continuous image coordinates ``(x, y)`` in pixels (0-based, x to the right, y down);
pixel ``(col, row)`` spans ``[col, col + 1) x [row, row + 1)`` and has its centre at
``(col + 0.5, row + 0.5)``. Boxes follow ``phraseground.data.types`` (continuous pixel xyxy).

Protocols (``PROTOCOLS``):
    * ``akbari2019`` (default; MultiGrounding's evaluation code, ``phraseground.eval.akbari2019``):
      the GT boxes are first put in the frame MultiGrounding's loaders stored (``box_frame``);
      skip ``notvisual`` phrases, phrases without boxes and phrases whose union GT box covers
      < 5 % of the image; the heatmap is resized bilinearly to the image, its argmax pixel
      (first on ties) is the answer, a hit when ``x0 <= col <= x1`` and ``y0 <= row <= y1``
      for any GT box (right and bottom edges inside).
    * ``engilberge2018``: argmax on the low-resolution map, the point is that cell's centre
      scaled to image pixels, a hit when strictly inside a GT box (``x0 < x < x1``, ``y0 < y < y1``).
    * ``tolerance15`` (Zhang et al.'s pointing game): full-resolution argmax as in
      ``akbari2019``, a hit when the pixel centre is within 15 px of a GT box (0 inside).

For every protocol an all-zero heatmap (the model gave zero word scores) has no answer and
counts as a miss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from phraseground.data.types import Phrase
from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval.metrics import (
    BoxesLike,
    Tally,
    as_boxes,
    check_heatmap,
    check_image_size,
    point_from_argmax,
    resize_heatmap,
    union_box,
)

HitRule = Literal["inclusive", "pixel", "strict", "distance"]
BoxMethod = Literal["heat2bbox", "nms"]
AttentionRule = Literal["per_box", "union"]


@dataclass(frozen=True)
class PointingProtocol:
    """How a point is read from a heatmap, which phrases are skipped and what counts as a hit.

    Attributes:
        name: key in ``PROTOCOLS``.
        full_resolution: resize the heatmap bilinearly to the image before the argmax (else
            take the argmax of the map as given and scale its cell centre to the image).
        hit_rule: ``"inclusive"``: the pixel holding the point lies inside a box, edges included
            (``x0 <= col <= x1``, MultiGrounding); ``"pixel"``: ``x0 <= col < x1``;
            ``"strict"``: ``x0 < x < x1`` and ``y0 < y < y1``; ``"distance"``: the point lies
            within ``tolerance`` pixels of a box.
        tolerance: largest hit distance in pixels for ``hit_rule="distance"``.
        min_union_frac: skip a phrase (reason ``"small_box"``) when its union GT box covers
            less than this share of the image area; 0 disables the filter.
        box_method: heatmap -> boxes: ``"heat2bbox"`` (MultiGrounding's, with its 90 % filter)
            or ``"nms"`` (``heatmap_to_boxes``: 3x3 peaks at full resolution, IoU suppression).
        attention: ``"per_box"``: the map's share summed over each GT box (MultiGrounding; can
            exceed 1) or ``"union"``: the share inside the union of the GT boxes' pixels.
        frames: whether GT boxes are converted to the dataset's MultiGrounding frame first.
        reference: where the protocol comes from.
    """

    name: str
    full_resolution: bool
    hit_rule: HitRule
    tolerance: float = 0.0
    min_union_frac: float = 0.0
    box_method: BoxMethod = "nms"
    attention: AttentionRule = "union"
    frames: bool = False
    reference: str = ""


PROTOCOLS: dict[str, PointingProtocol] = {
    p.name: p
    for p in (
        PointingProtocol(
            "akbari2019", full_resolution=True, hit_rule="inclusive", min_union_frac=0.05,
            box_method="heat2bbox", attention="per_box", frames=True,
            reference="Akbari et al., CVPR 2019 (MultiGrounding evaluation code)",
        ),
        PointingProtocol(
            "engilberge2018", full_resolution=False, hit_rule="strict",
            reference="Engilberge et al., CVPR 2018 (DSVE-Loc)",
        ),
        PointingProtocol(
            "tolerance15", full_resolution=True, hit_rule="distance", tolerance=15.0,
            reference="Zhang et al., ECCV 2016 (excitation backprop pointing game)",
        ),
    )
}
DEFAULT_PROTOCOL = "akbari2019"


def get_protocol(protocol: str | PointingProtocol) -> PointingProtocol:
    """Return the protocol of that name (a PointingProtocol is returned unchanged).

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    if isinstance(protocol, PointingProtocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ConfigError(
            f"unknown pointing protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}"
        ) from None


def skip_reason(phrase: Phrase, width: int, height: int, protocol: str | PointingProtocol,
                box_frame: str = "xyxy") -> str | None:
    """Why the protocol leaves this phrase out (``"notvisual"``, ``"no_box"``, ``"small_box"``), or None.

    Shared by every phrase-level metric so they all evaluate the same phrases.
    """
    if phrase.is_notvisual:
        return "notvisual"
    return box_skip_reason(phrase.boxes, width, height, protocol, box_frame)


def box_skip_reason(boxes: BoxesLike, width: int, height: int, protocol: str | PointingProtocol,
                    box_frame: str = "xyxy") -> str | None:
    """``"no_box"``, ``"small_box"`` (union GT box under the protocol's share of the image,
    measured in the protocol's frame) or None."""
    proto = get_protocol(protocol)
    b = as_boxes(boxes)
    if not len(b):
        return "no_box"
    if proto.min_union_frac > 0:
        if proto.frames:
            from phraseground.eval.akbari2019 import to_frame

            norm = torch.from_numpy(to_frame(b.numpy(), width, height, box_frame).norm)
        else:
            norm = b / torch.tensor([width, height, width, height], dtype=torch.float64)
        x0, y0, x1, y1 = union_box(norm).tolist()
        if (x1 - x0) * (y1 - y0) < proto.min_union_frac:
            return "small_box"
    return None


def frame_boxes(boxes: BoxesLike, width: int, height: int, protocol: str | PointingProtocol,
                box_frame: str = "xyxy") -> torch.Tensor:
    """GT boxes as the protocol's hit test sees them (its frame's pixel boxes, else as given)."""
    proto = get_protocol(protocol)
    b = as_boxes(boxes)
    if proto.frames and len(b):
        from phraseground.eval.akbari2019 import to_frame

        return torch.from_numpy(to_frame(b.numpy(), width, height, box_frame).pixel)
    return b


def pointing_point(
    heatmap: torch.Tensor, width: int, height: int, protocol: str | PointingProtocol = DEFAULT_PROTOCOL
) -> tuple[float, float] | None:
    """The protocol's answer point ``(x, y)`` in image pixels for an (h, w) heatmap.

    Full-resolution protocols resize the map bilinearly (``align_corners=False``) to
    (height, width) and answer the centre of the argmax pixel; ``engilberge2018`` answers the
    centre of the argmax cell of the map as given, ``((j + 0.5) * W / w, (i + 0.5) * H / h)``.
    Ties go to the first maximum in row-major order.

    Returns:
        the point, or None when the heatmap is all zero (no answer: a miss).
    """
    proto = get_protocol(protocol)
    check_image_size(width, height)
    hm = check_heatmap(heatmap)
    if not bool(hm.any()):
        return None
    if proto.full_resolution:
        hm = resize_heatmap(hm, width, height)  # (height, width)
    return point_from_argmax(hm, width, height)


def point_hits(point: tuple[float, float], boxes: BoxesLike, protocol: str | PointingProtocol = DEFAULT_PROTOCOL) -> bool:
    """Whether ``point`` (x, y) in pixels is a hit for any of ``boxes`` under the protocol's rule.

    The boxes are tested as given: for ``akbari2019`` pass them through ``frame_boxes`` first.
    """
    proto = get_protocol(protocol)
    x, y = (float(v) for v in point)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PhrasegroundError(f"point {point!r} is not finite")
    x0, y0, x1, y1 = as_boxes(boxes).numpy().T  # (K,) each; NumPy: one phrase's box or two
    if proto.hit_rule == "inclusive":
        col, row = math.floor(x), math.floor(y)
        inside = (x0 <= col) & (col <= x1) & (y0 <= row) & (row <= y1)
    elif proto.hit_rule == "pixel":
        col, row = math.floor(x), math.floor(y)
        inside = (x0 <= col) & (col < x1) & (y0 <= row) & (row < y1)
    elif proto.hit_rule == "strict":
        inside = (x0 < x) & (x < x1) & (y0 < y) & (y < y1)
    else:
        dx = np.maximum(np.maximum(x0 - x, x - x1), 0.0)
        dy = np.maximum(np.maximum(y0 - y, y - y1), 0.0)
        inside = np.hypot(dx, dy) <= proto.tolerance
    return bool(inside.any())


class PointingGame:
    """Pointing accuracy with hit, miss and skip counts, overall and per phrase type.

    Args:
        protocol: a name in ``PROTOCOLS`` or a PointingProtocol.
        box_frame: the dataset's box frame for protocols that test MultiGrounding's frames
            (``phraseground.eval.akbari2019.FRAMES``; ``"xyxy"``: the boxes as given).
    """

    def __init__(self, protocol: str | PointingProtocol = DEFAULT_PROTOCOL, box_frame: str = "xyxy") -> None:
        self.protocol = get_protocol(protocol)
        self.box_frame = box_frame
        self._tally = Tally(("hit",))

    def reset(self) -> None:
        """Forget every recorded phrase."""
        self._tally.reset()

    def judge(self, phrase: Phrase, width: int, height: int) -> tuple[str | None, torch.Tensor | None]:
        """What :meth:`update` decides before it looks at an answer: the phrase's skip reason,
        or None and its GT boxes as the protocol's hit test sees them. A caller scoring several
        answers for one phrase (the random baseline's repeats) judges it once and passes the
        result to each game of the same protocol and box frame."""
        check_image_size(width, height)
        reason = skip_reason(phrase, width, height, self.protocol, self.box_frame)
        if reason is not None:
            return reason, None
        return None, frame_boxes(phrase.boxes, width, height, self.protocol, self.box_frame)

    def update(
        self,
        phrase: Phrase,
        width: int,
        height: int,
        heatmap: torch.Tensor | None = None,
        point: tuple[float, float] | None = None,
        judged: tuple[str | None, torch.Tensor | None] | None = None,
    ) -> bool | None:
        """Score one phrase of a ``width`` x ``height`` image.

        Args:
            phrase: the phrase with its GT boxes and types.
            width: image width in pixels.
            height: image height in pixels.
            heatmap: the phrase's (h, w) heatmap (any resolution); or
            point: a precomputed answer (x, y) in image pixels. Give exactly one.
            judged: this phrase's :meth:`judge` by a game of the same protocol and box frame
                (default: judged here).

        Returns:
            True for a hit, False for a miss, None when the protocol skips the phrase.
        """
        if (heatmap is None) == (point is None):
            raise ValueError("give exactly one of heatmap or point")
        reason, gt = self.judge(phrase, width, height) if judged is None else judged
        if reason is not None:
            self._tally.skip(reason)
            return None
        if heatmap is not None:
            point = pointing_point(heatmap, width, height, self.protocol)
        hit = point is not None and point_hits(point, gt, self.protocol)
        self._tally.add(phrase.types, {"hit": float(hit)})
        return hit

    def compute(self) -> dict:
        """Report ``protocol, accuracy, hits, misses, n_evaluated, skipped, per_type``.

        ``accuracy`` is None when no phrase was evaluated; ``skipped`` maps reason -> count;
        ``per_type`` maps type -> ``{accuracy, hits, misses}``.
        """
        t = self._tally
        return {
            "protocol": self.protocol.name,
            **Tally.counts(t.total, "hit"),
            "n_evaluated": t.total.n,
            "skipped": dict(sorted(t.skipped.items())),
            "per_type": {name: Tally.counts(g, "hit") for name, g in sorted(t.per_type.items())},
        }
