"""Deep semantic-visual embedding with localization, DSVE-Loc (Engilberge et al., CVPR 2018).

Visual path: a frozen fully convolutional backbone tap F (cached once) -> 1×1 conv g_θ1 to D'
maps G -> WELDON pooling h = max G + min G per map (Eq. 2) -> affine projection (A, b) -> L2
normalisation -> x (Eq. 1, 3). Any input size: nothing depends on the map size.
Text path: word vectors (learned, or a pretrained table) -> multi-layer SRU -> output at the
last word -> L2 normalisation -> v (Eq. 4).
Loss: triplet ranking with the hardest negative of the batch in both directions (Eq. 7).
Localization: G' = A·G (1×1 conv, bias ignored); the heatmap of any unit vector v of the space
is H = Σ_{u ∈ K(v)} |v[u]| G'[u], K(v) the indices of the k largest entries of v (Eq. 9).

Staged schedule (``on_epoch_start``): the paper first trains only the SRU and the projection,
then fine-tunes "the rest of the visual path". The backbone here is frozen and cached, so the
rest of the visual path is the 1×1 adaptation conv: it stays frozen for the first
``frozen_adapt_epochs`` epochs. ``warmup_epochs`` (not in the paper) first trains with the sum
of the hinges over every negative, then switches to hardest negatives: on the embedded
benchmark, hardest negatives from the first step collapse the embedding (DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.vision import BackboneSpec
from ..errors import ConfigError
from .base import BackboneConfig, GroundingModel, GroundingResult, SupportsRetrieval, TrainBatch
from .registry import register_model
from .sru import SRU
from .text_factory import create_text_encoder


@dataclass
class DSVEConfig(BackboneConfig):
    """Configuration of ``dsve`` (defaults: the embedded synthetic setting; paper configs in configs/).

    Attributes:
        backbone, backbone_weights: frozen backbone name and weights ("pretrained", a path, "random").
        taps: the one backbone tap feeding the visual path (empty: the backbone's deepest default level).
        maps: D', number of maps of the 1×1 adaptation conv (paper: 2400).
        dim: d, size of the joint space and of the SRU layers (paper: 2400).
        pool_k: WELDON pooling adds the mean of the ``pool_k`` highest and of the ``pool_k``
            lowest values of each map (Eq. 2 is pool_k = 1).
        proj_dropout: dropout before the projection (A, b) while training (paper: 0.5).
        text_encoder: "learned" (trainable embeddings) or "word_table" (pretrained vectors; its
            ``text_encoder_args`` name the file, see ``text_factory``).
        text_encoder_args: options of the text encoder.
        word_dim: size of learned word embeddings (a word table brings its own size; paper: 620).
        sru_layers, sru_dropout: SRU depth and dropout (paper: 4 and 0.25).
        margin: α of the triplet loss.
        warmup_epochs: epochs trained with the sum over all negatives before hardest negatives.
        frozen_adapt_epochs: epochs during which the 1×1 adaptation conv is not updated (paper: 8).
        localize_k: k, the number of embedding dimensions combined into a heatmap (paper: 180).
        pooling: "weldon" (paper: max + min), "avg" (global average) or "max" (max only), the
            paper's ablation of the spatial pooling.
    """

    maps: int = 256
    dim: int = 256
    pool_k: int = 1
    proj_dropout: float = 0.0
    text_encoder: Literal["learned", "word_table"] = "learned"
    text_encoder_args: dict = field(default_factory=dict)
    word_dim: int = 256
    sru_layers: int = 2
    sru_dropout: float = 0.25
    margin: float = 0.2
    warmup_epochs: int = 3
    frozen_adapt_epochs: int = 0
    localize_k: int = 30
    pooling: Literal["weldon", "avg", "max"] = "weldon"

    n_taps: ClassVar[int | None] = 1
    at_least_one: ClassVar[tuple[str, ...]] = ("maps", "dim", "pool_k", "word_dim", "sru_layers", "localize_k")
    fractions: ClassVar[tuple[str, ...]] = ("proj_dropout", "sru_dropout")
    non_negative: ClassVar[tuple[str, ...]] = ("warmup_epochs", "frozen_adapt_epochs")
    positive: ClassVar[tuple[str, ...]] = ("margin",)

    def default_taps(self, spec: BackboneSpec) -> list[str]:
        return [spec.default_levels[-1]]

    def validate(self) -> None:
        super().validate()
        if self.localize_k > self.dim:
            raise ConfigError(f"localize_k: cannot exceed dim ({self.dim}), got {self.localize_k}")


def spatial_pool(maps: torch.Tensor, mode: str = "weldon", k: int = 1) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) by WELDON (``weldon_pool``), global average or global max."""
    if mode == "avg":
        return maps.flatten(2).mean(-1)
    if mode == "max":
        return maps.flatten(2).amax(-1)
    return weldon_pool(maps, k)


def weldon_pool(maps: torch.Tensor, k: int = 1) -> torch.Tensor:
    """WELDON pooling with negative evidence: (B, C, h, w) -> (B, C), the mean of the k highest
    plus the mean of the k lowest values of each map (k = 1: max + min, Eq. 2)."""
    flat = maps.flatten(2)  # (B, C, h*w)
    k = min(k, flat.shape[-1])
    return flat.topk(k, dim=-1).values.mean(-1) + flat.topk(k, dim=-1, largest=False).values.mean(-1)


def triplet_ranking_loss(sim: torch.Tensor, margin: float, image_index: torch.Tensor | None = None,
                         hardest: bool = True) -> torch.Tensor:
    """Bidirectional triplet ranking loss over a batch (Eq. 7 when ``hardest``, Eq. 5 otherwise).

    Args:
        sim: (B, B) text × image similarities, matched pairs on the diagonal.
        margin: α.
        image_index: (B,) image id of each pair; a text and an image of the same id are not
            a negative pair even off the diagonal.
        hardest: keep only the hardest negative per query (else sum the hinges of all negatives).

    Returns:
        the mean over the B pairs of the caption-query and the image-query terms.
    """
    pos = sim.diagonal()  # (B,)
    negative = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    if image_index is not None:
        negative &= image_index[:, None] != image_index[None, :]
    # text i as query against negative image j: rows; image j as query against negative text i: columns
    cost_text = (margin - pos[:, None] + sim).clamp_min(0).masked_fill(~negative, 0)  # (B, B)
    cost_image = (margin - pos[None, :] + sim).clamp_min(0).masked_fill(~negative, 0)  # (B, B)
    if hardest:
        return (cost_text.amax(dim=1) + cost_image.amax(dim=0)).mean()
    return (cost_text.sum(dim=1) + cost_image.sum(dim=0)).mean()


def above_mean(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative version of signed (P, h, w) heatmaps: max(H - mean(H), 0) / its max.

    The argmax (the pointing answer) is kept; a constant offset of a map, like the bias the
    paper ignores, has no effect; a constant map becomes all zeros.
    """
    flat = maps.flatten(1)  # (P, h*w)
    above = (flat - flat.mean(dim=1, keepdim=True)).clamp_min(0)
    return (above / above.amax(dim=1, keepdim=True).clamp_min(1e-12)).view_as(maps)  # (P, h, w)


@register_model("dsve", DSVEConfig)
class DSVE(GroundingModel, SupportsRetrieval):
    """DSVE-Loc: joint image/text embedding (retrieval) with a heatmap for any text."""

    supervision = "weak"

    def __init__(self, cfg: DSVEConfig, vocab: list[str] | None = None, text_spec: dict | None = None) -> None:
        super().__init__(cfg)
        self.adapt = nn.Conv2d(self.spec.channels[self.tap], cfg.maps, 1)  # g_θ1
        self.proj_dropout = nn.Dropout(cfg.proj_dropout)
        self.project = nn.Linear(cfg.maps, cfg.dim)  # p_θ2 = (A, b)
        self.text = create_text_encoder(cfg.text_encoder, vocab, cfg.word_dim, {**cfg.text_encoder_args, "lstm": False},
                                        text_spec)
        self.sru = SRU(self.text.word_dim, cfg.dim, cfg.sru_layers, dropout=cfg.sru_dropout, rnn_dropout=cfg.sru_dropout)
        # every parameter starts trainable so the optimizer holds them all; on_epoch_start sets the stage
        self.hardest_negatives = cfg.warmup_epochs == 0

    @property
    def tap(self) -> str:
        """The one backbone tap the visual path reads (features at native resolution)."""
        return self.taps[0]

    def on_epoch_start(self, epoch: int) -> None:
        """Sum-over-negatives hinge before ``warmup_epochs``, hardest negatives after; the 1×1
        adaptation conv frozen before ``frozen_adapt_epochs``."""
        self.hardest_negatives = epoch >= self.cfg.warmup_epochs
        self.adapt.requires_grad_(epoch >= self.cfg.frozen_adapt_epochs)

    # ------------------------------------------------------------ the two paths
    def visual_maps(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{tap: (B, C, h, w)} -> G (B, D', h, w)."""
        return self.adapt(features[self.tap].float())

    def _embed_maps(self, g: torch.Tensor) -> torch.Tensor:
        """G (B, D', h, w) -> unit image embeddings x (B, d)."""
        return F.normalize(self.project(self.proj_dropout(spatial_pool(g, self.cfg.pooling, self.cfg.pool_k))), dim=-1)

    def embed_images(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{tap: (B, C, h, w)} -> unit image embeddings x (B, d)."""
        return self._embed_maps(self.visual_maps(features))

    def embed_texts(self, tokens: list[list[str]]) -> torch.Tensor:
        """B tokenised texts -> unit text embeddings v (B, d): the SRU output at the last word."""
        feats = self.text(tokens, [0])
        _, last = self.sru(feats.words[:, 0], feats.mask.sum(dim=1))  # words[:, 0]: (B, T, E)
        return F.normalize(last, dim=-1)

    # ------------------------------------------------------------ training
    def training_loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Triplet ranking loss of the batch (hardest negatives or, during warm-up, all of them)."""
        texts, images = self.embed_texts(batch.tokens), self.embed_images(batch.features)  # (B, d) each
        image_index = batch.image_index if batch.image_index is not None else torch.arange(len(images), device=images.device)
        texts, images, image_index = batch.gathered(texts, images, image_index)  # DDP: the global batch
        sim = texts @ images.t()  # (B, B)
        loss = triplet_ranking_loss(sim, self.cfg.margin, image_index, self.hardest_negatives)
        return {"loss": loss, "positive_similarity": sim.diagonal().mean().detach()}

    # ------------------------------------------------------------ localization
    def _heatmaps(self, g: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Eq. 9 for G (B, D', h, w) and vectors (B, P, d) -> signed heatmaps (B, P, h, w)."""
        top = vectors.topk(self.cfg.localize_k, dim=-1)
        weights = torch.zeros_like(vectors).scatter(-1, top.indices, top.values.abs())  # (B, P, d)
        # Σ_u w[u] G'[u] = Σ_u w[u] Σ_c A[u, c] G[c] = Σ_c (w A)[c] G[c]
        return torch.einsum("bpc,bchw->bphw", weights @ self.project.weight, g)

    def localize(self, features: dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """Heatmaps of any vectors of the joint space (phrases, sentences, ...) in B images.

        Args:
            features: tap -> (B, C, h, w) features of B images.
            vectors: (B, P, d) vectors, P per image.

        Returns:
            (B, P, h, w) signed heatmaps of Eq. 9 (argmax = the pointing answer).
        """
        return self._heatmaps(self.visual_maps(features), vectors)

    def ground(
        self, features: dict[str, torch.Tensor], tokens: list[list[str]], spans: list[list[tuple[int, int]]],
        image_of: torch.Tensor | None = None,
    ) -> list[GroundingResult]:
        """Each phrase is embedded from its own words; its heatmap (Eq. 9 made non-negative by
        ``above_mean``) and its cosine with the image come from that embedding. Empty spans get
        zero maps and scores."""
        g = self.visual_maps(features)  # (I, D', h, w): each image once
        x = self._embed_maps(g)  # (I, d)
        if image_of is not None:
            g, x = g.index_select(0, image_of.to(g.device)), x.index_select(0, image_of.to(x.device))  # (B, ...)
        phrases = [tokens[b][s:e] for b, bspans in enumerate(spans) for s, e in bspans]
        v = self.embed_texts(phrases) if phrases else x.new_zeros(0, self.cfg.dim)  # (P_total, d)
        non_empty = torch.tensor([e > s for bspans in spans for s, e in bspans], dtype=torch.bool, device=v.device)
        per_image = torch.split(v * non_empty[:, None], [len(bspans) for bspans in spans])  # B × (P_b, d)
        maps = self._heatmaps(g, nn.utils.rnn.pad_sequence(list(per_image), batch_first=True))  # (B, P_max, h, w)
        return [GroundingResult(above_mean(maps[b, : len(vb)]), vb @ x[b], torch.zeros(len(vb), dtype=torch.long))
                for b, vb in enumerate(per_image)]
