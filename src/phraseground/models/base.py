"""The contract every grounding model implements, so one training loop, one evaluation
harness and one predictor serve them all, and callers need nothing else.

A model declares, once:

* its **feature needs** (a :class:`~phraseground.features.FeatureSpec`: backbone, weights,
  taps, grid) — what the feature extractor / store computes for it, known from the config
  alone (``cfg.feature_spec()``, no model built); the taps are checked against the backbone
  when the config is read (:meth:`BackboneConfig.validate`);
* its **text side**: ``tokenize`` (the one tokenizer of :mod:`phraseground.encoders.text`),
  ``unknown_words`` (words its vocabulary or word table lacks; open-vocabulary encoders such
  as ELMo report none) and ``text_spec`` (what rebuilds the text encoder from a checkpoint
  without re-reading its files);
* ``training_loss`` (``forward`` calls it, written here once, so DDP works), ``ground`` and
  ``on_epoch_start``;
* optionally **retrieval**: a model that also embeds images and texts in one space subclasses
  :class:`SupportsRetrieval`; callers test ``supports_retrieval(model)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, get_args, get_origin, get_type_hints

import torch
from torch import nn

from ..encoders.text import TextEncoder, tokenize, tokenize_spans
from ..encoders.vision import BackboneSpec, get_backbone_spec
from ..errors import ConfigError
from ..features import FeatureSpec


@dataclass
class BackboneConfig:
    """The fields every model config shares: which frozen backbone, which weights, which taps.

    Attributes:
        backbone: registered backbone name (``phraseground.encoders.vision``).
        backbone_weights: "pretrained" (the registered weights), a local file, or "random".
        taps: backbone taps the model reads (empty: the model's default taps of the backbone).
    """

    backbone: str = "synthcnn"
    backbone_weights: str = "pretrained"
    taps: list[str] = field(default_factory=list)

    #: how many taps the model reads (None: one or more)
    n_taps: ClassVar[int | None] = None
    #: fields checked by ``validate``: at least 1, in [0, 1), at least 0, above 0
    at_least_one: ClassVar[tuple[str, ...]] = ()
    fractions: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()
    positive: ClassVar[tuple[str, ...]] = ()

    def default_taps(self, spec: BackboneSpec) -> list[str]:
        """Taps used when ``taps`` is empty (default: all the backbone's default levels)."""
        return list(spec.default_levels)

    def used_taps(self) -> list[str]:
        """The taps the model actually reads."""
        return list(self.taps) or self.default_taps(get_backbone_spec(self.backbone))

    def feature_grid(self) -> int | None:
        """Side of the grid the taps are resized to when features are computed (None: native size)."""
        return None

    def feature_spec(self) -> FeatureSpec:
        """The model's feature needs, from its config alone."""
        return FeatureSpec(self.backbone, str(self.backbone_weights), tuple(self.used_taps()), self.feature_grid())

    def validate(self) -> None:
        """Checks written once for every model config: ``Literal`` fields hold one of their
        values, the declared ranges hold, every tap exists in the backbone and there are as many
        as the model reads. Subclasses add cross-field checks (calling this first)."""
        for name, annotation in get_type_hints(type(self)).items():
            if get_origin(annotation) is Literal and getattr(self, name) not in get_args(annotation):
                raise ConfigError(f"{name}: expected one of {list(get_args(annotation))}, got {getattr(self, name)!r}")
        for names, ok, what in ((self.at_least_one, lambda v: v >= 1, "at least 1"),
                                (self.fractions, lambda v: 0 <= v < 1, "in [0, 1)"),
                                (self.non_negative, lambda v: v >= 0, "at least 0"),
                                (self.positive, lambda v: v > 0, "above 0")):
            for name in names:
                if not ok(getattr(self, name)):
                    raise ConfigError(f"{name}: must be {what}, got {getattr(self, name)!r}")
        spec = get_backbone_spec(self.backbone)
        taps = self.used_taps()
        missing = [t for t in taps if t not in spec.channels]
        if missing:
            raise ConfigError(f"taps: backbone {self.backbone} has no tap(s) {missing}; known: {list(spec.channels)}")
        if self.n_taps is not None and len(taps) != self.n_taps:
            raise ConfigError(f"taps: this model reads exactly {self.n_taps} tap(s), got {taps}")
        if not taps:
            raise ConfigError("taps: no tap to read")


@dataclass
class TrainBatch:
    """A training batch built from cached frozen-backbone features.

    Attributes:
        features: tap name -> (B, C, h, w) feature maps of the B images.
        tokens: B texts tokenised by the model's ``tokenize`` (captions for weakly supervised
            models; the phrase itself for fully supervised ones).
        boxes: for fully supervised models, (B, 4) target boxes as fractions of the image
            size, xyxy in [0, 1]; None for weakly supervised models.
        image_index: (B,) dataset index of each item's image, so that a contrastive loss does
            not use another caption of the same image as a negative.
        gather: under DDP with ``train.global_batch``, concatenates a tensor of every process
            along dim 0 (the local part keeps its gradient; ``train.distributed.Gatherer``):
            losses over all pairs of the batch apply it to their embeddings and ``image_index``
            to use the global batch. None: one process (or local batches).
        images: (B, 3, S, S) preprocessed images in online mode (``data.features: online``):
            the backbone in front of the model (``train.online.OnlineModel``) turns them into
            ``features`` inside the training step. None when features come from the store.
    """

    features: dict[str, torch.Tensor]
    tokens: list[list[str]]
    boxes: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    images: torch.Tensor | None = None

    def gathered(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` over the global batch (unchanged without ``gather``)."""
        return tensors if self.gather is None else tuple(self.gather(t) for t in tensors)


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
    """Base class: a trainable head on top of a frozen backbone's cached features.

    Subclasses call ``super().__init__(cfg)``, set ``self.text`` (a :class:`TextEncoder`) and
    implement ``training_loss`` and ``ground``; a config that reads features resized to a grid
    overrides ``feature_grid``.
    """

    #: registry name of the model ("mlmcs", "dsve", "attnreg")
    model_name: ClassVar[str] = ""
    #: "weak" (image–caption pairs) or "full" (phrase + box)
    supervision: ClassVar[str] = "weak"
    cfg: BackboneConfig
    text: TextEncoder

    def __init__(self, cfg: BackboneConfig | None) -> None:
        """``cfg`` None only for test doubles that read no backbone features."""
        super().__init__()
        if cfg is not None:
            cfg.validate()
        self.cfg = cfg
        self.taps: list[str] = cfg.used_taps() if cfg is not None else []
        self.spec: BackboneSpec | None = get_backbone_spec(cfg.backbone) if cfg is not None else None

    # ------------------------------------------------------------ features
    @property
    def feature_grid(self) -> int | None:
        """Side of the grid features are resized to when computed (None: native resolution)."""
        return self.cfg.feature_grid() if self.cfg is not None else None

    @property
    def feature_taps(self) -> list[str]:
        """The backbone taps the model reads, in order."""
        return list(self.taps)

    @property
    def feature_needs(self) -> FeatureSpec:
        """Everything the feature extractor needs to compute this model's inputs."""
        return self.cfg.feature_spec()

    # ------------------------------------------------------------ text
    def tokenize(self, text: str) -> list[str]:
        """Words of ``text`` as the model reads them (case kept; punctuation split off)."""
        return tokenize(text)

    def tokenize_spans(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[str], list[tuple[int, int]]]:
        """Tokens of ``text`` and its whitespace-word phrase ``spans`` (dataset spans) mapped onto them."""
        return tokenize_spans(text, spans)

    def unknown_words(self, words: list[str]) -> list[str]:
        """The words of ``words`` the model's vocabulary / word table lacks (they are read as
        the unknown word); empty for open-vocabulary encoders."""
        return self.text.unknown_words(words)

    def vocabulary(self) -> list[str] | None:
        """The model's word list (``<pad>``, ``<unk>`` first), or None for open-vocabulary encoders."""
        return self.text.vocabulary()

    def text_spec(self) -> dict[str, Any]:
        """Plain data that rebuilds the text encoder without its files (stored in checkpoints)."""
        return self.text.spec()

    # ------------------------------------------------------------ training
    def forward(self, batch: "TrainBatch") -> dict[str, torch.Tensor]:
        """Same as ``training_loss`` (DDP calls forward)."""
        return self.training_loss(batch)

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
        image_of: torch.Tensor | None = None,
    ) -> list[GroundingResult]:
        """Ground phrases given inside texts.

        Args:
            features: tap name -> (I, C, h, w) features of I images.
            tokens: B texts; text b belongs to image ``image_of[b]`` (image b when None).
            spans: for text b, half-open word spans (start, end) of its phrases.
            image_of: (B,) long, the image row of each text: several texts of one image share
                its features, and a model may encode each image once (see :func:`per_text`).

        Returns:
            one GroundingResult per text, with one row per span.
        """
        raise NotImplementedError


def per_text(features: dict[str, torch.Tensor], image_of: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The features of each text's image, tap -> (B, C, h, w) (``features`` itself when
    ``image_of`` is None): for models that encode every (text, image) pair jointly."""
    if image_of is None:
        return features
    return {t: f.index_select(0, image_of.to(f.device)) for t, f in features.items()}


class SupportsRetrieval:
    """Optional protocol: models that rank images for texts and texts for images (cross-modal
    retrieval) inherit from this mixin besides :class:`GroundingModel`.

    A model that embeds each side on its own implements ``embed_images`` and ``embed_texts``
    (unit vectors; retrieval then encodes every image and text once); one that scores pairs
    jointly sets ``separable = False`` and overrides ``retrieval_similarity``.
    """

    #: the similarity is the dot product of ``embed_texts`` and ``embed_images``
    separable: ClassVar[bool] = True

    def embed_images(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{tap: (B, C, h, w)} -> (B, d) unit image embeddings."""
        raise NotImplementedError

    def embed_texts(self, tokens: list[list[str]]) -> torch.Tensor:
        """B tokenised texts -> (B, d) unit text embeddings."""
        raise NotImplementedError

    def retrieval_similarity(self, features: dict[str, torch.Tensor], tokens: list[list[str]]) -> torch.Tensor:
        """(n_texts, n_images) similarity of every text with every image."""
        return self.embed_texts(tokens) @ self.embed_images(features).t()


def supports_retrieval(model: Any) -> bool:
    """Whether ``model`` implements the retrieval protocol."""
    return isinstance(model, SupportsRetrieval)
