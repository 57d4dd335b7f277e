"""The one output record (DECISIONS §2): what ``Grounder``, ``ground``, ``serve`` and
evaluation write for a phrase and for an image.

Per image::

    {"image": str | None, "width": int, "height": int, "predictions": [<phrase record>, ...]}

Per phrase::

    {"label": "a red star",                      # the phrase as given
     "score": 0.71,                              # see SCORE_DOC
     "box": {"xmin", "ymin", "xmax", "ymax"},    # or None (all-zero heatmap)
     "point": {"x", "y"},                        # or None
     "boxes": [{"score", "box": {...}}, ...],    # top-k candidate boxes, best first
     "level": "c3" | None,                       # visual level the heatmap comes from
     "unknown_words": ["zebra"],                 # words the model's vocabulary lacks
     "concepts": None | [...],                   # cam: matched classes and similarities
     "overlay": None | "00_a_red_star.png",      # file name, when an overlay was written
     "heatmap": np.ndarray (H, W)}               # only when asked for (never in JSON)

Coordinates are pixels of the image as displayed (EXIF orientation applied), continuous
``xyxy`` with the origin at the top-left corner: a box covering pixel columns ``c0..c1``
has ``xmin = c0`` and ``xmax = c1 + 1``; a point is a pixel centre ``(col + 0.5, row + 0.5)``.
Every key is always present (None where it does not apply), so consumers can rely on the shape.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
PHRASE_KEYS = ("label", "score", "box", "point", "boxes", "level", "unknown_words", "concepts", "overlay")
IMAGE_KEYS = ("image", "width", "height", "predictions")

SCORE_DOC = """\
``score`` is the model's phrase–image relevance (higher = the phrase is more present in the
image); it ranks phrases and images for one model and is not a calibrated probability:
mlmcs — the mean over the phrase's words of the best level's cosine between the word and its
attended visual vector, clamped at 0, in [0, 1] (0 when every word score is 0); dsve — the
cosine between the phrase and image embeddings, in [-1, 1]; attnreg — the image attention
mass of the phrase, in [0, 1]; cam — the best matched ImageNet class's text similarity × the
image's probability of the matched classes, in [0, 1] (0: no matching concept). A candidate box's score in ``boxes`` is its heatmap peak over
the heatmap's maximum, in (0, 1] (the regressed box of attnreg carries the phrase score)."""

_DIGITS = 2


def box_dict(box: Sequence[float] | None) -> dict[str, float] | None:
    """(x0, y0, x1, y1) -> {"xmin", "ymin", "xmax", "ymax"} (pixels, 2 decimals)."""
    if box is None:
        return None
    return {k: round(float(v), _DIGITS) for k, v in zip(BOX_KEYS, box)}


def point_dict(point: Sequence[float] | None) -> dict[str, float] | None:
    if point is None:
        return None
    return {"x": round(float(point[0]), _DIGITS), "y": round(float(point[1]), _DIGITS)}


def box_tuple(box: dict[str, float] | None) -> tuple[float, float, float, float] | None:
    """The inverse of ``box_dict``."""
    return None if box is None else tuple(float(box[k]) for k in BOX_KEYS)  # type: ignore[return-value]


def phrase_record(label: str, score: float, box: Sequence[float] | None, point: Sequence[float] | None,
                  boxes: Iterable[tuple[Sequence[float], float]] = (), level: str | None = None,
                  unknown_words: Iterable[str] = (), concepts: list[dict[str, Any]] | None = None,
                  overlay: str | None = None, heatmap: Any = None) -> dict[str, Any]:
    """One phrase's record; ``boxes`` as (xyxy, score) pairs, best first."""
    rec: dict[str, Any] = {
        "label": label,
        "score": round(float(score), 6),
        "box": box_dict(box),
        "point": point_dict(point),
        "boxes": [{"score": round(float(s), 6), "box": box_dict(b)} for b, s in boxes],
        "level": level,
        "unknown_words": list(unknown_words),
        "concepts": concepts,
        "overlay": overlay,
    }
    if heatmap is not None:
        rec["heatmap"] = heatmap
    return rec


def image_record(image: str | None, width: int, height: int, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": image, "width": int(width), "height": int(height), "predictions": predictions}


def json_ready(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of an image record without the (array) heatmaps, ready for ``json.dumps``."""
    out = dict(record)
    out["predictions"] = [{k: v for k, v in p.items() if k != "heatmap"} for p in record["predictions"]]
    return out


def check_record(record: dict[str, Any]) -> None:
    """Raise ValueError unless ``record`` has the shape of an image record (for consumers' tests)."""
    missing = [k for k in IMAGE_KEYS if k not in record]
    if missing:
        raise ValueError(f"image record lacks {missing}")
    for i, p in enumerate(record["predictions"]):
        missing = [k for k in PHRASE_KEYS if k not in p]
        if missing:
            raise ValueError(f"prediction {i} lacks {missing}")
        for b in [p["box"]] + [c["box"] for c in p["boxes"]]:
            if b is not None and (set(b) != set(BOX_KEYS) or not b["xmin"] <= b["xmax"] or not b["ymin"] <= b["ymax"]):
                raise ValueError(f"prediction {i}: bad box {b}")
