"""Ground phrases in images with a trained checkpoint: heatmap, point, box, score, level."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .encoders.vision import create_backbone, get_backbone_spec
from .errors import PhrasegroundError
from .eval.boxes import heatmap_to_boxes
from .eval.metrics import point_from_argmax, resize_heatmap, union_box
from .data.images import load_image
from .features import images_to_tensor
from .train.checkpoint import model_from_checkpoint
from .train.data import tokenize


@dataclass
class PhrasePrediction:
    phrase: str
    span: tuple[int, int]
    heatmap: torch.Tensor  # (H, W) at the image's size
    point: tuple[float, float] | None
    box: tuple[float, float, float, float] | None  # pixel xyxy
    score: float
    level: str | None
    unknown_words: list[str]

    def to_json(self) -> dict:
        return {
            "phrase": self.phrase, "span": list(self.span), "point": list(self.point) if self.point else None,
            "box": [round(v, 2) for v in self.box] if self.box else None, "score": round(self.score, 6),
            "level": self.level, "unknown_words": self.unknown_words,
        }


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
    hm = resize_heatmap(heatmap.float().cpu(), width, height)
    point = point_from_argmax(hm, width, height) if float(hm.max()) > 0 else None
    if box is not None:
        pixels = (box.float().cpu() * torch.tensor([width, height, width, height])).tolist()
    else:
        boxes, _ = heatmap_to_boxes(hm)
        pixels = union_box(boxes).tolist() if len(boxes) else None
    return hm, point, tuple(pixels) if pixels else None


class Grounder:
    """A checkpoint and its frozen backbone, ready to ground phrases in image files."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        self.model, self.ckpt = model_from_checkpoint(Path(checkpoint))
        self.model.to(device)
        cfg = self.model.cfg
        self.spec = get_backbone_spec(cfg.backbone)
        self.backbone = create_backbone(cfg.backbone, cfg.backbone_weights, self.model.feature_taps).to(device)
        self.device = device
        self.vocab = getattr(getattr(self.model, "text", None), "vocab", None)

    @torch.no_grad()
    def features(self, image) -> dict[str, torch.Tensor]:
        x = images_to_tensor([image], self.spec).to(self.device)
        feats = self.backbone(x)
        grid = self.model.feature_grid
        if grid is not None:
            feats = {t: torch.nn.functional.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
                     for t, f in feats.items()}
        return feats

    def _unknown(self, words: list[str]) -> list[str]:
        return [w for w in words if self.vocab is not None and w not in self.vocab]

    @torch.no_grad()
    def ground(self, image_path: Path, sentence: str, spans: list[tuple[int, int]]) -> tuple[list[PhrasePrediction], tuple[int, int]]:
        """Ground the phrases (word spans) of ``sentence`` in the image; returns predictions and (W, H)."""
        words = tokenize(sentence)
        if not words or not spans:
            raise PhrasegroundError("empty phrase: nothing to ground")
        for s, e in spans:
            if not 0 <= s < e <= len(words):
                raise PhrasegroundError(f"phrase span {s}:{e} does not fit the {len(words)}-word sentence")
            if len(self._unknown(words[s:e])) == e - s:
                raise PhrasegroundError(
                    f"phrase {' '.join(words[s:e])!r}: no word is known to the model's vocabulary")
        image = load_image(image_path)
        width, height = image.size
        res = self.model.ground(self.features(image), [words], [spans])[0]
        levels = list(self.model.feature_taps)
        preds = []
        for k, (s, e) in enumerate(spans):
            hm, point, box = locate(res.heatmaps[k], None if res.boxes is None else res.boxes[k], width, height)
            lv = int(res.levels[k])
            preds.append(PhrasePrediction(" ".join(words[s:e]), (s, e), hm, point, box,
                                          float(res.scores[k]), levels[lv] if 0 <= lv < len(levels) else None,
                                          self._unknown(words[s:e])))
        return preds, (width, height)
