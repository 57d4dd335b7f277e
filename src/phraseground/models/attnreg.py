"""Attention-based box regression (Endo et al., IJCAI 2017).

Image: a frozen backbone's map(s) resized to M×M -> N = M² region features v_r.
Text: word embeddings -> BiLSTM; v_l = tanh(W_f h_fwd + W_b h_bwd + b) (the text encoder's last
layer is the linear merge of both directions, tanh is applied here); v_T = mean_l v_l.
Image attention: per region, an MLP on (v_r, v_T) with tanh hidden layers and a ReLU scalar
α_i (no softmax). Text attention: per word, an MLP on (v_l, α map), softmax over the words,
v'_T = Σ_l α_l v_l. Region prediction: an MLP on (α map, v'_T) -> box.
Loss: L_IoU + λ1 L_SE + λ2 L_S (see ``box_loss``).

Deviations from the paper are options (the paper's setting in brackets): ``box_output``
["relu"], ``iou_loss`` ["iou"], ``attention_init`` [not stated: PyTorch's default is 0].
On the synthetic scenes the paper's setting did not train (accuracy@0.5 0.04): with the default
init the area penalty switched the ReLU attention off for good, and ReLU (x, y, w, h) outputs
with 1 − IoU stalled even with a live attention map and a 10–100× larger λ1 for the first epoch;
either a sigmoid box or the GIoU loss alone was enough.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn
from torchvision.ops import box_convert

from ..encoders.vision import BackboneSpec
from ..errors import ConfigError
from ..features import resize_to_grid
from . import box_loss
from .base import BackboneConfig, GroundingModel, GroundingResult, TrainBatch
from .products import PointwiseConv
from .registry import register_model
from .text_factory import create_text_encoder


@dataclass
class AttnRegConfig(BackboneConfig):
    """Configuration of ``attnreg`` (defaults: the embedded synthetic setting; paper configs in configs/).

    Attributes:
        backbone, backbone_weights: frozen backbone name and weights ("pretrained", a path, "random").
        taps: backbone taps used as region features, concatenated over channels (empty: the
            backbone's deepest default level; paper: VGG16 conv5_3).
        grid: M, the taps are resized to M×M regions (paper: 14).
        text_encoder, text_encoder_args: "learned" (random embeddings) or "word_table"
            (pretrained vectors, ``text_encoder_args.path``); both end in a BiLSTM.
        word_dim: learned word-embedding size (a word table brings its own; paper: 300).
        lstm_hidden: BiLSTM hidden size per direction.
        attention: "image+text" (paper), "image" (ablation −TA) or "none" (ablation −TA −IA:
            the region MLP gets the flattened region features instead of the attention map).
        image_attention_layers, image_attention_hidden: tanh hidden layers of the image attention MLP.
        text_attention_layers, text_attention_hidden: the same for the text attention MLP.
        region_layers, region_hidden: the same for the region prediction MLP.
        attention_init: 0: PyTorch's default initialisation of the image attention output
            (the paper does not say); > 0: that output starts at about this value in every region
            (weights ×0.1, bias = the value), so the map starts alive with a mass of about
            value · N. With the default init the map starts with a mass far above S_box and,
            under Adam, the area penalty drove every α to 0 within ~50 steps (then ReLU is dead
            for good) on the synthetic scenes.
        dropout: dropout after every hidden layer of the three MLPs.
        box_output: "relu" (paper: g = relu(·) = (x, y, w, h) in ``box_units``) or "sigmoid"
            (centre and size as sigmoids of the image side: the box stays inside a bounded range
            and never dies). Both start as a centred box of half the image side.
        box_units: image side in the units the box is regressed in (the SE term and λ1 depend
            on it; paper: 224, the input pixels).
        iou_loss: "iou" (paper: 1 − IoU) or "giou" (1 − GIoU, non-zero gradient for disjoint boxes).
        lambda_se, lambda_area: λ1 (squared error) and λ2 (area penalty); paper 1e-4, 1e-5.
        area_penalty: use the λ2 term (ablation: off).
    """

    grid: int = 16
    text_encoder: Literal["learned", "word_table"] = "learned"  # word vectors -> BiLSTM, as the paper
    text_encoder_args: dict = field(default_factory=dict)
    word_dim: int = 128
    lstm_hidden: int = 128
    attention: Literal["image+text", "image", "none"] = "image+text"
    attention_init: float = 0.05
    image_attention_layers: int = 2
    image_attention_hidden: int = 256
    text_attention_layers: int = 1
    text_attention_hidden: int = 128
    region_layers: int = 2
    region_hidden: int = 256
    dropout: float = 0.0
    box_output: Literal["relu", "sigmoid"] = "sigmoid"
    box_units: float = 128.0
    iou_loss: Literal["iou", "giou"] = "giou"
    lambda_se: float = 1e-4
    lambda_area: float = 1e-5
    area_penalty: bool = True

    at_least_one: ClassVar[tuple[str, ...]] = (
        "grid", "image_attention_layers", "image_attention_hidden", "text_attention_layers", "text_attention_hidden",
        "region_layers", "region_hidden", "word_dim", "lstm_hidden")
    fractions: ClassVar[tuple[str, ...]] = ("dropout",)
    non_negative: ClassVar[tuple[str, ...]] = ("lambda_se", "lambda_area", "attention_init")
    positive: ClassVar[tuple[str, ...]] = ("box_units",)

    def feature_grid(self) -> int | None:
        return self.grid

    def default_taps(self, spec: BackboneSpec) -> list[str]:
        """The region features default to the backbone's deepest default level."""
        return [spec.default_levels[-1]]


class FusionMLP(nn.Module):
    """MLP on a pair of inputs: h = tanh(W_a a + W_b b + c), then ``layers − 1`` more tanh
    layers, then a linear output; dropout after every hidden layer. ``a`` and ``b`` broadcast
    against each other (e.g. a: (B, N, A) regions, b: (B, 1, Bd) one phrase per image). The
    layers are :class:`PointwiseConv`: Linear layers that run over (B, N, ·) rows as 1×1
    convolutions (oneDNN on CPU, models/products.py)."""

    def __init__(self, dim_a: int, dim_b: int, hidden: int, layers: int, out: int, dropout: float) -> None:
        super().__init__()
        self.in_a = PointwiseConv(dim_a, hidden)
        self.in_b = PointwiseConv(dim_b, hidden, bias=False)
        body: list[nn.Module] = [nn.Tanh(), nn.Dropout(dropout)]
        for _ in range(layers - 1):
            body += [PointwiseConv(hidden, hidden), nn.Tanh(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*body)
        self.out = PointwiseConv(hidden, out)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.in_a(a) + self.in_b(b)))


@dataclass
class AttnRegOutput:
    """What one forward pass predicts for B (image, phrase) pairs.

    Attributes:
        boxes: (B, 4) xyxy boxes as fractions of the image size.
        image_attention: (B, N) ReLU attention map over the regions, None without image attention.
        word_attention: (B, T) softmax weights over the words, None without text attention.
    """

    boxes: torch.Tensor
    image_attention: torch.Tensor | None
    word_attention: torch.Tensor | None


@register_model("attnreg", AttnRegConfig)
class AttnReg(GroundingModel):
    supervision = "full"

    def __init__(self, cfg: AttnRegConfig, vocab: list[str] | None = None, text_spec: dict | None = None) -> None:
        super().__init__(cfg)
        channels = sum(self.spec.channels[t] for t in self.taps)
        regions = cfg.grid * cfg.grid
        self.text = create_text_encoder(cfg.text_encoder, vocab, cfg.word_dim,
                                        {"lstm_hidden": cfg.lstm_hidden, **cfg.text_encoder_args}, text_spec)
        e = self.text.word_dim
        drop = cfg.dropout
        self.image_attention = (
            FusionMLP(channels, e, cfg.image_attention_hidden, cfg.image_attention_layers, 1, drop)
            if cfg.attention != "none" else None
        )
        self.text_attention = (
            FusionMLP(e, regions, cfg.text_attention_hidden, cfg.text_attention_layers, 1, drop)
            if cfg.attention == "image+text" else None
        )
        image_input = regions if cfg.attention != "none" else regions * channels
        self.region = FusionMLP(image_input, e, cfg.region_hidden, cfg.region_layers, 4, drop)
        self._init_outputs()

    @torch.no_grad()
    def _init_outputs(self) -> None:
        """The box starts as a centred box of half the image side (small weights, bias = that
        box); with ``attention_init``, the attention map starts near that constant."""
        out = self.region.out
        out.weight.mul_(0.1)
        if self.cfg.box_output == "relu":  # (x, y, w, h) in box units
            out.bias.copy_(torch.tensor([0.25, 0.25, 0.5, 0.5]) * self.cfg.box_units)
        else:  # sigmoid(cx, cy, w, h) = (0.5, 0.5, 0.5, 0.5)
            out.bias.zero_()
        if self.image_attention is not None and self.cfg.attention_init > 0:
            self.image_attention.out.weight.mul_(0.1)
            self.image_attention.out.bias.fill_(self.cfg.attention_init)


    def encode_image(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """{tap: (B, C, h, w)} -> region features (B, N, C_total)."""
        maps = resize_to_grid({t: features[t].float() for t in self.taps}, self.cfg.grid)
        return torch.cat([maps[t] for t in self.taps], dim=1).flatten(2).transpose(1, 2)  # (B, N, C)

    def encode_text(self, tokens: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Phrases -> word features v_l (B, T, E) and mask (B, T)."""
        feats = self.text(tokens, [self.text.num_layers - 1])
        return torch.tanh(feats.words[:, 0]), feats.mask  # (B, T, E)

    def predict(self, features: dict[str, torch.Tensor], tokens: list[list[str]]) -> AttnRegOutput:
        """Box, image attention and word attention for B (image b, phrase b) pairs."""
        regions = self.encode_image(features)  # (B, N, C)
        words, mask = self.encode_text(tokens)
        m = mask.unsqueeze(-1).float()  # (B, T, 1)
        phrase = (words * m).sum(1) / m.sum(1).clamp_min(1)  # (B, E) v_T
        alpha = word_alpha = None
        if self.image_attention is None:
            image_input = regions.flatten(1)  # (B, N·C)
        else:
            alpha = torch.relu(self.image_attention(regions, phrase.unsqueeze(1))).squeeze(-1)  # (B, N)
            image_input = alpha
            if self.text_attention is not None:
                logits = self.text_attention(words, alpha.unsqueeze(1)).squeeze(-1)  # (B, T)
                word_alpha = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)  # (B, T)
                phrase = (word_alpha.unsqueeze(-1) * words).sum(1)  # (B, E) v'_T
        raw = self.region(image_input, phrase)  # (B, 4)
        return AttnRegOutput(self._to_boxes(raw), alpha, word_alpha)

    def _to_boxes(self, raw: torch.Tensor) -> torch.Tensor:
        """Region MLP output (B, 4) -> xyxy boxes as image fractions."""
        if self.cfg.box_output == "relu":
            return box_convert(torch.relu(raw) / self.cfg.box_units, "xywh", "xyxy")
        return box_convert(torch.sigmoid(raw), "cxcywh", "xyxy")

    def training_loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        if batch.boxes is None:
            raise ConfigError("attnreg is trained on phrase boxes (full supervision); the batch has none")
        out = self.predict(batch.features, batch.tokens)
        units = self.cfg.box_units
        pred, target = out.boxes * units, batch.boxes * units  # (B, 4) in box units
        l_iou = box_loss.iou_loss(pred, target, self.cfg.iou_loss).mean()
        l_se = box_loss.squared_error(pred, target).mean()
        loss = l_iou + self.cfg.lambda_se * l_se
        scalars = {"iou": box_loss.paired_iou(pred, target).mean().detach(), "loss_iou": l_iou.detach(),
                   "loss_se": l_se.detach()}
        if out.image_attention is not None:
            l_area = box_loss.area_penalty(batch.boxes, out.image_attention.sum(-1), self.cfg.grid).mean()
            if self.cfg.area_penalty:
                loss = loss + self.cfg.lambda_area * l_area
            scalars["loss_area"] = l_area.detach()
        return {"loss": loss, **scalars}

    def ground(
        self, features: dict[str, torch.Tensor], tokens: list[list[str]], spans: list[list[tuple[int, int]]],
        image_of: torch.Tensor | None = None,
    ) -> list[GroundingResult]:
        """Each phrase (the span's words alone) with its image; heatmap = the image attention map
        (zeros in the "none" ablation), score = the attention mass Σα, box = the regressed box
        (clipped to the image), ``extras["word_attention"]`` = the text attention (P, T)."""
        m = self.cfg.grid
        counts = [len(bspans) for bspans in spans]
        phrases = [tokens[b][s:e] for b, bspans in enumerate(spans) for s, e in bspans]
        if not phrases:
            empty = GroundingResult(torch.zeros(0, m, m), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
            return [empty for _ in spans]
        owner = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)], device=next(iter(features.values())).device)
        if image_of is not None:  # each phrase's image row
            owner = image_of.to(owner.device).index_select(0, owner)
        out = self.predict({t: f.index_select(0, owner) for t, f in features.items()}, phrases)
        alpha = out.image_attention if out.image_attention is not None else out.boxes.new_zeros(len(phrases), m * m)
        word_alpha = out.word_attention.split(counts) if out.word_attention is not None else [None] * len(spans)
        results = []
        for heat, box, words in zip(alpha.view(-1, m, m).split(counts), out.boxes.clamp(0, 1).split(counts), word_alpha):  # (P, M, M)
            results.append(GroundingResult(heat, heat.sum((1, 2)), torch.full((len(heat),), -1), box,
                                           {"word_attention": words} if words is not None else {}))
        return results
