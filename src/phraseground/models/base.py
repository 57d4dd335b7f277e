"""The interface every grounding model implements, so one training loop, one evaluation
harness and one predictor serve them all."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class TrainBatch:
    """A training batch built from cached frozen-backbone features.

    Attributes:
        features: tap name -> (B, C, h, w) feature maps of the B images.
        tokens: B whitespace-tokenised, lower-cased texts (captions for weakly supervised
            models; the phrase itself for fully supervised ones).
        boxes: for fully supervised models, (B, 4) target boxes as fractions of the image
            size, xyxy in [0, 1]; None for weakly supervised models.
        image_index: (B,) dataset index of each item's image, so that a contrastive loss does
            not use another caption of the same image as a negative.
    """

    features: dict[str, torch.Tensor]
    tokens: list[list[str]]
    boxes: torch.Tensor | None = None
    image_index: torch.Tensor | None = None


@dataclass
class GroundingResult:
    """Grounding of P phrases.

    Attributes:
        heatmaps: (P, h, w) non-negative maps on the model's feature grid.
        scores: (P,) phrase–image scores (higher = more pertinent); 0 when all word scores are 0.
        levels: (P,) index of the visual level each heatmap comes from (-1 when not applicable).
        boxes: (P, 4) predicted boxes as fractions of the image size (xyxy), for models that
            regress boxes; None for heatmap-only models (boxes then come from the heatmap).
    """

    heatmaps: torch.Tensor
    scores: torch.Tensor
    levels: torch.Tensor
    boxes: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class GroundingModel(nn.Module):
    """Base class: a trainable head on top of a frozen backbone's cached features."""

    #: registry name of the model ("mlmcs", "dsve", "attnreg")
    model_name: ClassVar[str] = ""
    #: "weak" (image–caption pairs) or "full" (phrase + box)
    supervision: ClassVar[str] = "weak"

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for staged schedules (e.g. freezing parts or switching losses for the first
        epochs); called by the training loop before every epoch, also after a resume."""

    def training_loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Return a dict of scalars that holds at least ``"loss"`` (what the optimizer minimises)."""
        raise NotImplementedError

    def ground(
        self,
        features: dict[str, torch.Tensor],
        tokens: list[list[str]],
        spans: list[list[tuple[int, int]]],
    ) -> list[GroundingResult]:
        """Ground phrases given inside texts.

        Args:
            features: tap name -> (B, C, h, w) features of B images.
            tokens: B texts, text b belongs to image b.
            spans: for text b, half-open word spans (start, end) of its phrases.

        Returns:
            one GroundingResult per text, with one row per span.
        """
        raise NotImplementedError
