"""Multi-level multimodal common semantic space (Akbari et al., CVPR 2019).

Visual path: L frozen-backbone taps, each bilinearly resized to M×M (done once, when features
are cached), then 3 × (1×1 conv, D filters, LeakyReLU) and L2 normalisation -> V (B, L, N, D).
Text path: a learned mix of the text encoder's layers -> 2 FC layers -> words S (B, T, D);
a learned mix of the sentence vectors -> 2 FC layers -> s̄ (B, D); both L2-normalised.
Attention without softmax: H = max(0, <s_t, v_n>), attended a = Σ_n H v_n, R = cos(a, s_t),
level selection R_t = max_l R_{t,l}, sentence score R_w = logsumexp(γ1 R_t)/γ1; the sentence
path gives R_s = max_l cos(a_l, s̄). Loss: batch softmax (γ2) in both directions, L = L^w + L^s.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..features import resize_to_grid
from .base import BackboneConfig, GroundingModel, GroundingResult, TrainBatch
from .products import PointwiseConv, linear_rows, rows_summed
from .registry import register_model
from .text_factory import create_text_encoder

EPS = 1e-8


@dataclass
class MLMCSConfig(BackboneConfig):
    """Configuration of ``mlmcs`` (defaults: the embedded synthetic setting; paper configs in configs/).

    Attributes:
        backbone, backbone_weights: frozen backbone name and weights ("pretrained", a path, "random").
        taps: backbone taps used as visual levels (empty: the backbone's defaults).
        level_ablation: "multi" (all levels), or a single level, "middle" or "last" (paper Table 3).
        grid: M, every level is resized to M×M.
        dim: D, the common space size.
        loss_terms: "both" (paper: word- plus sentence-level loss), "words" or "sentence" (Table 3 ablation).
        mapping: "nonlinear" (paper: 3 conv / 2 FC layers with LeakyReLU) or "linear" (one linear layer each).
        text_encoder, text_encoder_args: the text encoder and its options.
        word_dim: size of learned word embeddings (a pretrained encoder brings its own).
        word_layers: text-encoder layers mixed into the word features (learned encoder: 0 = the
            word's own embedding, 1 = BiLSTM output; ELMo: 0, 1, 2).
        attention: "relu" (paper) or "softmax" (ablation) over regions.
        gamma1, gamma2: word pooling and batch-softmax temperatures.
        grounding: "words" (phrase heatmap from its words in the full sentence, Flickr30k) or
            "sentence" (the query's sentence heatmap, ReferIt/Visual Genome).
        word_heatmap_norm: how each word's heatmap enters the R_t-weighted average of a phrase:
            "none" (the raw ReLU attention map) or "sum" (each map divided by its sum, so a
            word with a broad, strong response does not outweigh the others; not specified by
            the paper — measured in README "Measured notes").
        autocast: "off" (fp32), or "bf16": the training forward under bfloat16 autocast (matrix
            products in bf16 — AVX-512 BF16 CPUs, GPU tensor cores; scores reduced in fp32);
            grounding and evaluation stay fp32. Measured in README "Training speed".
    """

    level_ablation: Literal["multi", "middle", "last"] = "multi"
    grid: int = 16
    dim: int = 256
    mapping: Literal["nonlinear", "linear"] = "nonlinear"
    leaky_slope: float = 0.25
    text_encoder: str = "learned"
    text_encoder_args: dict = field(default_factory=dict)
    word_dim: int = 256
    word_layers: list[int] = field(default_factory=lambda: [0])
    attention: Literal["relu", "softmax"] = "relu"
    gamma1: float = 5.0
    gamma2: float = 10.0
    grounding: Literal["words", "sentence"] = "words"
    word_heatmap_norm: Literal["none", "sum"] = "none"
    loss_terms: Literal["both", "words", "sentence"] = "both"
    autocast: Literal["off", "bf16"] = "off"

    at_least_one: ClassVar[tuple[str, ...]] = ("grid", "dim", "word_dim")
    positive: ClassVar[tuple[str, ...]] = ("gamma1", "gamma2")

    def feature_grid(self) -> int | None:
        return self.grid

    def used_taps(self) -> list[str]:
        """The taps actually fed to the model after the level ablation."""
        levels = super().used_taps()
        if self.level_ablation == "middle":
            return [levels[len(levels) // 2]]
        if self.level_ablation == "last":
            return [levels[-1]]
        return levels


def _mlp(dims: list[int], slope: float) -> nn.Sequential:
    """1×1 convolutions dims[0] -> dims[1] -> ... each followed by LeakyReLU (on vectors, Linear layers)."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [PointwiseConv(a, b), nn.LeakyReLU(slope, inplace=True)]  # in place: the product's output is not kept
    return nn.Sequential(*layers)


class _SharedReluScores(torch.autograd.Function):
    """R (G, P) = cos(a, q) with a = Vᵀ relu(V q), for P queries shared by G region groups,
    with a hand-written backward.

    v: (G, N, D) unit regions, q: (P, D) unit queries. The backward forms the region gradient
    from two products accumulated into one buffer, (relu' ∘ ∂H) q + H ∂aᵀ, instead of autograd's
    two (G, N, D) gradients and their sum, and keeps only H and a from the forward; tested
    against the reference formulation (values and gradients).
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        heat = torch.relu_(linear_rows(v, q))  # (G, N, P)
        a = torch.bmm(heat.transpose(1, 2), v)  # (G, P, D): aᵀ, the faster layout of this product
        length = torch.linalg.vector_norm(a, dim=2)  # (G, P)
        norm = length.clamp_min(EPS)
        r = torch.linalg.vector_norm(heat, dim=1).square_() / norm  # <a, q> = Σ_n H_n <v_n, q> = Σ_n H_n²
        ctx.save_for_backward(v, q, heat, a, norm, r, length > EPS)
        return r

    @staticmethod
    def backward(ctx, dr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, q, heat, a, norm, r, live = ctx.saved_tensors
        dnum = dr / norm  # (G, P)
        dlength = torch.where(live, -dr * r / norm, 0.0)  # the clamp passes no gradient
        da = a * (dlength / norm)[:, :, None]  # (G, P, D): ∂|a|/∂a = a / |a|
        dheat = torch.bmm(v, da.transpose(1, 2)).addcmul_(heat, (2 * dnum)[:, None, :])  # (G, N, P): from a and Σ H²
        ddots = torch.ops.aten.threshold_backward(dheat, heat, 0.0)  # (G, N, P); ReLU: none where it cut
        dv = linear_rows(ddots, q.t())  # (G, N, D): through the dots (oneDNN on CPU)
        dv.baddbmm_(heat, da)  # + through a, accumulated in place
        return dv, rows_summed(ddots, v)  # dq (P, D)


def _region_attention(q: torch.Tensor, v: torch.Tensor, softmax: bool, need_heat: bool
                      ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Attention of P queries over the regions of G (image, level) groups.

    Args:
        q: (G or 1, P, D) unit queries (a leading 1 is shared by every group).
        v: (G, N, D) unit region features.

    Returns:
        H (G, N, P) attention maps (None unless ``need_heat``) and R (G, P) = cos(a, q) with the
        attended vector a = Σ_n H_n v_n.

    Layout: the dots come from one matrix product (G·N, D) × (D, P) when the queries are
    shared, and their buffer becomes H in place (ReLU), so the (G, N, P) tensor exists once;
    a (G, D, P) comes from one batched product; the score needs only a: <a, q> = Σ_n H_n <v_n, q>,
    and |a| (with |q| = 1). When N < D the norm is formed from the regions' Gram matrix
    instead, |a|² = Hᵀ (V Vᵀ) H, which costs N² instead of N·D per query. Shared queries, ReLU,
    N ≥ D and no maps asked for (the training loss): :class:`_SharedReluScores`.
    """
    g, n, d = v.shape
    if q.shape[0] == 1 and not (softmax or need_heat or n < d or torch.is_autocast_enabled(v.device.type)):
        return None, _SharedReluScores.apply(v, q[0])
    if q.shape[0] == 1:
        dots = linear_rows(v, q[0])  # (G, N, P)
    else:
        dots = torch.bmm(v, q.transpose(1, 2))  # (G, N, P)
    heat = torch.softmax(dots, dim=1) if softmax else torch.relu_(dots)
    if n < d:
        gram = torch.bmm(v, v.transpose(1, 2))  # (G, N, N)
        num = ((heat * dots).sum(1) if softmax else heat.square().sum(1)).float()  # <a, q>; relu: H·dots = H²
        norm = (heat * torch.bmm(gram, heat)).float().sum(1).clamp_min(EPS * EPS).sqrt()  # clamp first: no inf gradient
    else:
        a = torch.bmm(v.transpose(1, 2), heat).float()  # (G, D, P); fp32 reductions under bf16 autocast
        num = (a * q.transpose(1, 2)).sum(1)  # (G, P)
        norm = a.norm(dim=1).clamp_min(EPS)
    return (heat if need_heat else None), num / norm


def attend(q: torch.Tensor, v: torch.Tensor, softmax: bool = False, all_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries over regions at every level.

    Args:
        q: (Bq, T, D) unit queries (words, or a sentence with T = 1).
        v: (Bv, L, N, D) unit region features.
        softmax: normalise over regions with a softmax instead of the paper's ReLU.
        all_pairs: score every query text against every image (Bq × Bv pairs); otherwise
            text b is paired with image b (Bq = Bv).

    Returns:
        H (..., L, T, N) attention maps and R (..., L, T) = cos(Σ_n H v_n, q), where ``...``
        is (Bq, Bv) for all pairs and (B,) otherwise (H is a view of an (…, L, N, T) buffer).
    """
    bq, t, d = q.shape
    bv, L, n, _ = v.shape
    if all_pairs:
        heat, r = _region_attention(q.reshape(1, bq * t, d), v.reshape(bv * L, n, d), softmax, True)
        heat = heat.view(bv, L, n, bq, t).permute(3, 0, 1, 4, 2)  # (Bq, Bv, L, T, N)
        return heat, r.view(bv, L, bq, t).permute(2, 0, 1, 3)
    qg = q[:, None].expand(bq, L, t, d).reshape(bq * L, t, d)
    heat, r = _region_attention(qg, v.reshape(bv * L, n, d), softmax, True)
    return heat.view(bv, L, n, t).transpose(2, 3), r.view(bv, L, t)


def _first_of_groups(inverse: torch.Tensor) -> torch.Tensor:
    """(K,) the smallest index of each group of ``inverse`` (R,) (groups 0..K-1)."""
    k = int(inverse.max()) + 1 if len(inverse) else 0
    first = torch.full((k,), len(inverse), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce_(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")


@functools.lru_cache(maxsize=8)
def row_hash_weights(d: int, device: torch.device) -> torch.Tensor:
    """(D,) the fixed int64 weights of :func:`identical_rows`' row hash (drawn once per size and
    device; read-only); odd, so that a change of any one bit of a row changes its hash (an even
    weight times 2^63 vanishes modulo 2^64)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randint(-2**31, 2**31 - 1, (d,), generator=g, dtype=torch.int64) | 1).to(device)


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def identical_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of bit-identical rows of ``rows`` (R, D): ``first`` (K,) the index of each group's
    first row and ``inverse`` (R,) each row's group (groups in no particular order).

    The rows' bit patterns are hashed to one integer per row and the integers grouped, which
    costs ~0.15 ms where ``torch.unique(rows, dim=0)`` (a sort of whole rows) costs ~2 ms at
    the training batch's ~400 × 128. A hash collision is detected (every row is compared with
    its group's first row) and falls back to ``torch.unique(dim=0)``.
    """
    bits = rows.contiguous().view(_SAME_SIZE_INT[rows.element_size()]).to(torch.int64)  # (R, D): the bit patterns
    _, inverse = torch.unique((bits * row_hash_weights(rows.shape[1], rows.device)).sum(1), return_inverse=True)  # wraps: a hash
    first = _first_of_groups(inverse)
    if not torch.equal(bits, bits.index_select(0, first.index_select(0, inverse))):  # a collision
        _, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = _first_of_groups(inverse)
    return first, inverse


def all_pairs_scores(queries: list[tuple[torch.Tensor, torch.Tensor | None]], v: torch.Tensor, softmax: bool = False
                     ) -> list[torch.Tensor]:
    """R of :func:`attend` for every (text, image) pair, computed only where it is needed.

    Several query sets (the words and the sentence vectors of a batch) are scored in one pass
    over the regions. Padded positions (mask False) are left out and get 0; a query vector that
    occurs several times (a context-free word feature: the same word in several captions) is
    scored once and its scores shared — bit-identical rows only, so the values and the
    parameters' gradients are those of the full computation.

    Args:
        queries: (q, mask) pairs, q (Bq, T, D) unit queries, mask (Bq, T) bool or None.
        v: (Bv, L, N, D) unit region features; level-major in memory (a view of (L, Bv, N, D),
            as :meth:`MLMCS.encode_image` returns them), the groups are taken without a copy.

    Returns:
        for each query set, R (Bq, Bv, L, T).
    """
    bv, L, n, d = v.shape
    groups = v.transpose(0, 1).reshape(L * bv, n, d)  # (L·Bv, N, D): groups in (level, image) order
    rows, places = [], []
    for q, mask in queries:
        flat = q.reshape(-1, d)
        pos = mask.reshape(-1).nonzero().squeeze(1) if mask is not None else None
        rows.append(flat if pos is None else flat.index_select(0, pos))
        places.append(pos)
    rows = torch.cat(rows) if len(rows) > 1 else rows[0]
    first, inverse = identical_rows(rows.detach())
    if len(first) < len(rows):  # one representative row (the first) per distinct vector
        _, r = _region_attention(rows.index_select(0, first)[None], groups, softmax, False)
        r = r.index_select(1, inverse)  # (L·Bv, P)
    else:
        _, r = _region_attention(rows[None], groups, softmax, False)
    out, start = [], 0
    for (q, _), pos in zip(queries, places):
        bq, t = q.shape[:2]
        size = bq * t if pos is None else len(pos)
        part = r[:, start:start + size]
        start += size
        if pos is not None:
            part = part.new_zeros(L * bv, bq * t).index_copy(1, pos, part)
        out.append(part.reshape(L, bv, bq, t).permute(2, 1, 0, 3))  # (Bq, Bv, L, T)
    return out


class _StackedUnit(torch.autograd.Function):
    """Tensors of one shape stacked along a new first dimension and each row divided by
    max(|row|, eps), written straight into the stacked tensor (no separate stack copy); the
    backward in three passes, ∂x = (∂y − y <y, ∂y>) / max(|x|, eps), instead of autograd's
    chain through the norm (about a dozen): on CPU the visual path's (L, B·N, D) tensor does
    not stay in cache, so each pass over it costs about a millisecond."""

    @staticmethod
    def forward(ctx, eps: float, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0].new_empty((len(xs), *xs[0].shape))
        inv = xs[0].new_empty((len(xs), *xs[0].shape[:-1], 1))
        live = torch.empty(inv.shape, dtype=torch.bool, device=inv.device)
        for k, x in enumerate(xs):
            length = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            torch.gt(length, eps, out=live[k])
            torch.reciprocal(length.clamp_min_(eps), out=inv[k])
            torch.mul(x, inv[k], out=y[k])
        ctx.save_for_backward(y, inv, live)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, inv, live = ctx.saved_tensors
        along = torch.einsum("...d,...d->...", y, dy).unsqueeze(-1).masked_fill_(~live, 0.0)  # a batched product: one pass; the clamp: no norm gradient
        return None, *torch.addcmul(dy, y, along, value=-1.0).mul_(inv).unbind(0)


def stacked_unit(xs: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """``torch.stack([F.normalize(x, dim=-1) for x in xs])``: the same values and gradients
    (tested), in one pass per tensor forward and three backward (:class:`_StackedUnit`)."""
    return _StackedUnit.apply(eps, *xs)


@register_model("mlmcs", MLMCSConfig)
class MLMCS(GroundingModel):
    supervision = "weak"

    def __init__(self, cfg: MLMCSConfig, vocab: list[str] | None = None, text_spec: dict | None = None) -> None:
        super().__init__(cfg)
        spec = self.spec
        linear = cfg.mapping == "linear"
        self.visual = nn.ModuleDict({
            lv: PointwiseConv(spec.channels[lv], cfg.dim) if linear
            else _mlp([spec.channels[lv], cfg.dim, cfg.dim, cfg.dim], cfg.leaky_slope)
            for lv in self.levels
        })
        self.text = create_text_encoder(cfg.text_encoder, vocab, cfg.word_dim, cfg.text_encoder_args, text_spec,
                                        word_layers=cfg.word_layers)
        bad = [k for k in cfg.word_layers if not 0 <= k < self.text.num_layers]
        if not cfg.word_layers or bad:
            raise ConfigError(f"mlmcs: word_layers {cfg.word_layers} invalid for a {self.text.num_layers}-layer text encoder")
        self.word_mix = nn.Parameter(torch.full((len(cfg.word_layers),), 1.0 / len(cfg.word_layers)))
        self.sentence_mix = nn.Parameter(torch.full((self.text.num_sentence_vectors,), 1.0 / self.text.num_sentence_vectors))
        e, s, d = self.text.word_dim, self.text.sentence_dim, cfg.dim
        self.word_fc = nn.Linear(e, d) if linear else _mlp([e, d, d], cfg.leaky_slope)
        self.sentence_fc = nn.Linear(s, d) if linear else _mlp([s, d, d], cfg.leaky_slope)


    @property
    def levels(self) -> list[str]:
        """The visual levels (the taps after the level ablation)."""
        return self.taps

    def encode_image(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{tap: (B, C, M, M)} -> V (B, L, N, D), L2-normalised over D.

        V is a view of a level-major (L, B, N, D) tensor: the levels are stacked along the first
        dimension, so the backward hands each level's mapping a contiguous gradient, and the
        all-pairs scores take (level, image) groups without a copy. The mappings are 1×1
        convolutions on channels-last maps, whose (B, D, M, M) outputs are (B·N, D) rows in
        memory: the regions are read as such, without a copy."""
        maps = []
        features = resize_to_grid({lv: features[lv].float() for lv in self.levels}, self.cfg.grid)
        b, _, m, _ = features[self.levels[0]].shape
        for lv in self.levels:
            x = self.visual[lv](features[lv].contiguous(memory_format=torch.channels_last))  # (B, D, M, M), channels-last
            maps.append(x.permute(0, 2, 3, 1).reshape(b * m * m, -1))  # (B, M, M, D) -> (B·N, D), a view
        v = stacked_unit(maps)  # (L, B·N, D)
        return v.view(len(maps), b, m * m, -1).transpose(0, 1)  # (L, B, N, D) -> (B, L, N, D) view

    def encode_text(self, tokens: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Texts -> words S (B, T, D), sentence s̄ (B, D), mask (B, T)."""
        feats = self.text(tokens, self.cfg.word_layers)
        layers = feats.words  # (B, K', T, E)
        words = (self.word_mix.view(1, -1, 1, 1) * layers).sum(1)  # (B, T, E)
        sent = (self.sentence_mix.view(1, -1, 1) * feats.sentence).sum(1)  # (B, S)
        return F.normalize(self.word_fc(words), dim=-1), F.normalize(self.sentence_fc(sent), dim=-1), feats.mask

    def pair_scores(self, words: torch.Tensor, sent: torch.Tensor, mask: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All-pairs word-level R_w and sentence-level R_s scores, each (B_text, B_image)."""
        softmax = self.cfg.attention == "softmax"
        wq, sq = (words, mask), (sent[:, None, :], None)
        if self.cfg.loss_terms == "both" or not torch.is_grad_enabled():
            r, r_s = all_pairs_scores([wq, sq], v, softmax)  # one pass: (Bs, Bi, L, T), (Bs, Bi, L, 1)
        else:  # the term left out of the loss is only reported: no gradient reaches its path
            used, other = (wq, sq) if self.cfg.loss_terms == "words" else (sq, wq)
            (r_used,) = all_pairs_scores([used], v, softmax)
            with torch.no_grad():
                (r_other,) = all_pairs_scores([other], v, softmax)
            r, r_s = (r_used, r_other) if self.cfg.loss_terms == "words" else (r_other, r_used)
        r_t = r.amax(dim=2).masked_fill(~mask[:, None, :], float("-inf"))  # (Bs, Bi, T)
        r_w = torch.logsumexp(self.cfg.gamma1 * r_t, dim=-1) / self.cfg.gamma1  # (Bs, Bi)
        return r_w, r_s.amax(dim=2).squeeze(-1)

    def training_loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        with torch.autocast(self.word_mix.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
            v = self.encode_image(batch.features)
            words, sent, mask = self.encode_text(batch.tokens)
            image_index = batch.image_index if batch.image_index is not None else torch.arange(len(v), device=v.device)
            v, words, sent, mask, image_index = batch.gathered(v, words, sent, mask, image_index)  # DDP: the global batch
            r_w, r_s = self.pair_scores(words, sent, mask, v)
        r_w, r_s = r_w.float(), r_s.float()
        loss_w = batch_softmax_loss(r_w, self.cfg.gamma2, image_index)
        loss_s = batch_softmax_loss(r_s, self.cfg.gamma2, image_index)
        terms = self.cfg.loss_terms
        loss = loss_w + loss_s if terms == "both" else loss_w if terms == "words" else loss_s
        return {"loss": loss, "loss_words": loss_w.detach(), "loss_sentence": loss_s.detach()}

    def ground(
        self, features: dict[str, torch.Tensor], tokens: list[list[str]], spans: list[list[tuple[int, int]]],
        image_of: torch.Tensor | None = None,
    ) -> list[GroundingResult]:
        v = self.encode_image(features)  # (I, L, N, D): each image once
        if image_of is not None:
            v = v.index_select(0, image_of.to(v.device))  # (B, L, N, D)
        words, sent, mask = self.encode_text(tokens)
        softmax = self.cfg.attention == "softmax"
        m = self.cfg.grid
        if self.cfg.grounding == "sentence":
            heat, r = attend(sent[:, None, :], v, softmax)  # (B, L, 1, N), (B, L, 1)
            level = r[:, :, 0].argmax(1)  # (B,)
            rows = torch.arange(len(level), device=level.device)
            maps, scores = heat[rows, level, 0].reshape(-1, m, m), r[rows, level, 0].clamp_min(0)  # (B, M, M), (B,)
            return [GroundingResult(maps[b].expand(len(bspans), m, m).clone(), scores[b].expand(len(bspans)).clone(),
                                    level[b].expand(len(bspans)).clone()) for b, bspans in enumerate(spans)]
        heat, r = attend(words, v, softmax)  # (B, L, T, N), (B, L, T)
        r_t, level_t = r.max(dim=1)  # (B, T): each word's best level
        b_, t_, n_ = heat.shape[0], heat.shape[2], heat.shape[3]
        word_maps = heat.gather(1, level_t[:, None, :, None].expand(b_, 1, t_, n_)).squeeze(1)  # (B, T, N)
        if self.cfg.word_heatmap_norm == "sum":
            word_maps = word_maps / word_maps.sum(-1, keepdim=True).clamp_min(EPS)
        # every phrase of every text at once: span masks (P, T), R_t weights, one batched product
        text_of = torch.tensor([b for b, bspans in enumerate(spans) for _ in bspans], dtype=torch.long)
        bounds = torch.tensor([se for bspans in spans for se in bspans], dtype=torch.long).view(-1, 2)
        pos = torch.arange(t_)
        inside = (pos[None] >= bounds[:, :1]) & (pos[None] < bounds[:, 1:])  # (P, T)
        inside = inside.to(heat.device)
        text_of, bounds = text_of.to(heat.device), bounds.to(heat.device)
        w = torch.where(inside, r_t[text_of].clamp_min(0), 0.0)  # (P, T)
        total = w.sum(1)  # (P,)
        maps = torch.bmm(w[:, None, :], word_maps[text_of]).squeeze(1)  # (P, N)
        maps = torch.where(total[:, None] > 0, maps / total.clamp_min(EPS)[:, None], 0.0)
        scores = total / (bounds[:, 1] - bounds[:, 0]).clamp_min(1)
        first_best = torch.where(inside, w, -1.0).argmax(1)  # the first word of largest weight
        levels = torch.where(inside.any(1), level_t[text_of, first_best], -1)
        results, k = [], 0
        for bspans in spans:
            n = len(bspans)
            results.append(GroundingResult(maps[k:k + n].view(n, m, m), scores[k:k + n], levels[k:k + n]))
            k += n
        return results


def batch_softmax_loss(scores: torch.Tensor, gamma: float, image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the matched pairs under a softmax over the batch, both directions.

    Args:
        scores: (B, B) text × image scores, matched pairs on the diagonal.
        gamma: softmax temperature factor (γ2 = 10 in the paper).
        image_index: (B,) image id of each pair; off-diagonal pairs showing the same image
            are not used as negatives.
    """
    logits = gamma * scores
    if image_index is not None:
        same = image_index[:, None] == image_index[None, :]
        off = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        logits = logits.masked_fill(same & off, float("-inf"))
    target = torch.arange(len(scores), device=scores.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
