"""Sample types shared by every dataset reader, the synthetic benchmark and the models.

Coordinates: boxes are absolute pixel ``xyxy`` in the *continuous* 0-based convention used
by torchvision and COCO: a box covering pixel columns ``c0..c1`` (inclusive, 0-based) is stored
as ``(c0, r0, c1 + 1, r1 + 1)``, so ``width = x1 - x0``. A Flickr30k Entities ``<bndbox>`` with
1-based inclusive ``xmin..xmax`` therefore becomes ``(xmin - 1, ymin - 1, xmax, ymax)``.
A pixel ``(col, row)`` lies inside a box when ``x0 <= col < x1`` and ``y0 <= row < y1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Box = tuple[float, float, float, float]

NOTVISUAL = "notvisual"


@dataclass(frozen=True)
class Phrase:
    """A phrase inside a caption.

    Attributes:
        text: the phrase words joined by single spaces.
        first_word: index of the phrase's first word in the whitespace-tokenised caption.
        num_words: number of words of the phrase.
        chain_id: coreference chain id ("0" for notvisual phrases in Flickr30k Entities).
        types: phrase types, e.g. ("people",) or ("bodyparts", "people").
        boxes: every ground-truth box of the chain, 0-based pixel xyxy (see module doc).
    """

    text: str
    first_word: int
    num_words: int
    chain_id: str
    types: tuple[str, ...]
    boxes: tuple[Box, ...] = ()

    @property
    def word_span(self) -> tuple[int, int]:
        """Half-open word span ``(start, end)`` within the caption tokens."""
        return self.first_word, self.first_word + self.num_words

    @property
    def is_notvisual(self) -> bool:
        return NOTVISUAL in self.types


@dataclass(frozen=True)
class Caption:
    """A caption (or a referring expression) and the phrases annotated in it."""

    text: str
    phrases: tuple[Phrase, ...] = ()

    @property
    def tokens(self) -> list[str]:
        return self.text.split()


@dataclass(frozen=True)
class ImageSample:
    """One image with its captions; the unit every reader yields."""

    image_id: str
    image_path: Path
    width: int
    height: int
    captions: tuple[Caption, ...]


@dataclass
class ReadReport:
    """Tolerated oddities met while reading a dataset, counted by kind, with examples."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, max_examples: int = 5) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < max_examples:
            ex.append(where)

    def merge(self, other: "ReadReport") -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
            self.examples.setdefault(kind, []).extend(other.examples.get(kind, [])[:5])

    def summary(self) -> str:
        if not self.counts:
            return "no oddities"
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
