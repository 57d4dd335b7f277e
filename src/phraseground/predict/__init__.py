"""Grounding for users: the ``Grounder`` pipeline, the one output record, and the helpers they share.

``from phraseground import Grounder`` is the entry point; the record shape is documented in
``phraseground.predict.records``.
"""
from __future__ import annotations

import re

import torch

from ..errors import PhrasegroundError
from ..eval.boxes import heatmap_to_boxes
from ..eval.metrics import point_from_argmax, resize_heatmap, union_box

def parse_bracketed(sentence: str) -> tuple[str, list[tuple[int, int]]]:
    """'[a red star] left of [a blue square]' -> plain text and the word spans of the brackets.

    Without brackets the whole sentence is the one phrase.
    """
    if "[" not in sentence and "]" not in sentence:
        words = sentence.split()
        return " ".join(words), [(0, len(words))]
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    for m in re.finditer(r"\[([^\[\]]*)\]|([^\[\]]+)|([\[\]])", sentence):
        if m.group(3):
            raise PhrasegroundError(f"unbalanced brackets in sentence {sentence!r}")
        chunk = (m.group(1) if m.group(1) is not None else m.group(2)).split()
        if m.group(1) is not None:
            if not chunk:
                raise PhrasegroundError(f"empty phrase [] in sentence {sentence!r}")
            spans.append((len(words), len(words) + len(chunk)))
        words.extend(chunk)
    return " ".join(words), spans


def locate_candidates(heatmap: torch.Tensor, box: torch.Tensor | None, width: int, height: int):
    """``locate`` plus the candidate boxes it chose from: a list of (pixel xyxy, score), best first.

    Heatmap models: the boxes of ``heatmap_to_boxes`` (NMS over the peaks' regions) scored by
    their peak over the map's maximum, and the answer is their union. Box-regressing models:
    the one regressed box (score 1.0; the caller may replace it by the phrase score).
    """
    hm = resize_heatmap(heatmap.float().cpu(), width, height)
    top = float(hm.max())
    point = point_from_argmax(hm, width, height) if top > 0 else None
    if box is not None:
        pixels = (box.float().cpu() * torch.tensor([width, height, width, height])).tolist()
        return hm, point, tuple(pixels), [(tuple(pixels), 1.0)]
    boxes, scores = heatmap_to_boxes(hm)
    cands = [(tuple(b), float(s) / top) for b, s in zip(boxes.tolist(), scores.tolist())]
    return hm, point, (tuple(union_box(boxes).tolist()) if len(boxes) else None), cands


def locate(heatmap: torch.Tensor, box: torch.Tensor | None, width: int, height: int
           ) -> tuple[torch.Tensor, tuple[float, float] | None, tuple[float, float, float, float] | None]:
    """One phrase's answer in image pixels from a model's output.

    Args:
        heatmap: (h, w) heatmap on the model's grid.
        box: (4,) regressed box as fractions of the image (xyxy), or None for heatmap models.

    Returns:
        the heatmap resized to (height, width), the argmax point (None for an all-zero map) and
        the box in pixels (regressed, or the union of the boxes extracted from the heatmap).
    """
    hm, point, pixels, _ = locate_candidates(heatmap, box, width, height)
    return hm, point, pixels


from .grounder import Grounder  # noqa: E402  (needs parse_bracketed and locate above)
from .records import SCORE_DOC, check_record, image_record, json_ready, phrase_record  # noqa: E402

__all__ = ["Grounder", "SCORE_DOC", "check_record", "image_record", "json_ready", "locate", "locate_candidates",
           "parse_bracketed", "phrase_record"]
