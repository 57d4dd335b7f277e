"""``Grounder``: a trained model and its frozen backbone as one callable pipeline.

    >>> g = Grounder.from_checkpoint("runs/demo/run/best.pt")           # or .from_pretrained(dir)
    >>> g("photo.jpg", ["a red star", "a blue square"])                  # one image -> one record
    >>> g(["a.jpg", "b.jpg"], "[a red star] left of [a blue square]")  # a list -> a list of records

Several phrases of one image share one backbone pass; several images go through the backbone
in batches of ``batch_size``. The records are described in ``phraseground.predict.records``.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import torch
from PIL import Image

from ..data.images import load_image
from ..device import resolve_device
from ..errors import PhrasegroundError
from ..features import FeatureExtractor
from . import locate_candidates, parse_bracketed
from .records import SCORE_DOC, image_record, phrase_record

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image, bytes]
Texts = Union[str, Sequence[str]]


def _load_image(src: ImageInput) -> tuple[Image.Image, str | None]:
    """RGB image in its displayed frame (EXIF orientation applied, the project's loader) and its name."""
    if isinstance(src, (bytes, bytearray)):
        return load_image(bytes(src), name="<bytes>"), None
    if isinstance(src, Image.Image):
        return load_image(src), getattr(src, "filename", None) or None
    if not isinstance(src, (str, os.PathLike)):
        raise PhrasegroundError(f"an image must be a path, a PIL image or bytes, got {type(src).__name__}")
    return load_image(Path(src)), str(src)


@dataclass
class _Text:
    """One text of a request: its words, tokens, the phrase spans and their labels."""

    tokens: list[str]
    spans: list[tuple[int, int]]
    labels: list[str]
    unknown: list[list[str]]


@dataclass
class _Prepared:
    image: Image.Image
    name: str | None
    texts: list[_Text]


class Grounder:
    """Ground phrases in images with a trained model (see the module docstring).

    Args:
        model: a GroundingModel (``from_checkpoint`` / ``from_pretrained`` build one).
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        backbone_weights: the frozen backbone's weights: None = what the model was trained
            with (its weights id, resolved from the package or the caches), or a local file.
        batch_size: images per backbone pass.
        top_k: candidate boxes per phrase in ``boxes``.
        backbone_state: a fine-tuned backbone's weights (a checkpoint's ``"backbone"``, written
            by online training); they replace the declared weights.
    """

    score_doc = SCORE_DOC

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "auto", backbone_weights: str | None = None,
                 batch_size: int = 8, top_k: int = 3, source: str | None = None,
                 backbone_state: dict[str, torch.Tensor] | None = None) -> None:
        if batch_size < 1 or top_k < 1:
            raise PhrasegroundError("batch_size and top_k must be >= 1")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        needs = model.feature_needs
        if backbone_state is not None:
            if backbone_weights is not None:
                raise PhrasegroundError("this checkpoint holds its own fine-tuned backbone: backbone_weights cannot replace it")
            self.extractor = FeatureExtractor.for_checkpoint(model, {"backbone": backbone_state}, self.device)
        else:  # the same extractor as training and evaluate (preprocessing, grid resize, seeded random weights)
            spec = needs if backbone_weights is None else replace(needs, weights=backbone_weights)
            self.extractor = FeatureExtractor(spec, self.device)
        self.levels = list(needs.taps)
        self.batch_size = batch_size
        self.top_k = top_k
        self.source = source
        #: counters: backbone forward calls and images passed through the backbone
        self.stats = {"backbone_calls": 0, "backbone_images": 0}
        self._lock = threading.Lock()  # forward hooks keep state: one forward at a time
        log.debug("grounder: %s on %s (backbone %s, levels %s)", model.model_name, self.device, needs.backbone, self.levels)

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        backbone_weights: str | None = None, **kwargs: Any) -> "Grounder":
        """From a training checkpoint (``best.pt``/``last.pt``): the file alone rebuilds the model."""
        from ..models.checkpoint import model_from_checkpoint

        model, ckpt = model_from_checkpoint(Path(path))
        return cls(model, device, backbone_weights, source=str(path), backbone_state=ckpt.get("backbone"), **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "auto",
                        backbone_weights: str | None = None, **kwargs: Any) -> "Grounder":
        """From a folder written by ``phraseground export`` (model.safetensors + config.json)."""
        from .export import load_exported

        model = load_exported(Path(directory))
        return cls(model, device, backbone_weights, source=str(directory), **kwargs)

    @classmethod
    def from_model(cls, name: str, device: str | torch.device = "auto", backbone_weights: str | None = None,
                   model_args: dict[str, Any] | None = None, **kwargs: Any) -> "Grounder":
        """A registered model that needs no training (``cam``), built from its name and options."""
        from ..models.registry import create_model, model_class

        if model_class(name).supervision != "none":  # an unknown name is a ConfigError listing the known ones
            raise PhrasegroundError(f"model {name!r} must be trained first: give its checkpoint")
        return cls(create_model(name, **(model_args or {})), device, backbone_weights, source=f"model:{name}", **kwargs)

    @property
    def backbone(self) -> torch.nn.Module:
        """The backbone the grounder runs (the extractor's)."""
        return self.extractor.backbone

    @property
    def model_name(self) -> str:
        return self.model.model_name

    def info(self) -> dict[str, Any]:
        """What the grounder runs: model, backbone, levels, device, source file."""
        return {"model": self.model_name, "backbone": self.model.feature_needs.backbone, "levels": self.levels,
                "device": str(self.device), "source": self.source}

    # text ---------------------------------------------------------------------------------
    def unknown_words(self, words: Sequence[str]) -> list[str]:
        """The words the model's vocabulary lacks (none for open-vocabulary encoders)."""
        return list(self.model.unknown_words(list(words)))

    def _parse_text(self, text: str) -> _Text:
        if not isinstance(text, str):
            raise PhrasegroundError(f"a phrase must be a string, got {type(text).__name__}")
        plain, spans = parse_bracketed(text)
        words = plain.split()
        if not words:
            raise PhrasegroundError("empty phrase: nothing to ground")
        tokens, token_spans = self.model.tokenize_spans(plain, spans)  # spans index whitespace words
        unknown = []
        for (s, e), (ts, te) in zip(spans, token_spans):
            unk = self.unknown_words(tokens[ts:te])
            if len(unk) == te - ts:
                raise PhrasegroundError(f"phrase {' '.join(words[s:e])!r}: no word is known to the model's vocabulary")
            if unk:
                log.warning("phrase %r: word(s) unknown to the model, read as the unknown word: %s",
                            " ".join(words[s:e]), unk)
            unknown.append(unk)
        return _Text(tokens, token_spans, [" ".join(words[s:e]) for s, e in spans], unknown)

    @staticmethod
    def _texts(phrases: Texts) -> list[str]:
        if isinstance(phrases, str):
            return [phrases]
        texts = list(phrases)
        if not texts:
            raise PhrasegroundError("no phrase given: nothing to ground")
        return texts

    def prepare(self, image: ImageInput, phrases: Texts) -> _Prepared:
        """Read the image and check the phrases (PhrasegroundError on bad input), before any model runs."""
        texts = [self._parse_text(t) for t in self._texts(phrases)]
        im, name = _load_image(image)
        return _Prepared(im, name, texts)

    # running ------------------------------------------------------------------------------
    def _features(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """One backbone pass -> tap -> (B, C, h, w), resized to the model's grid when it has one."""
        return self.extractor.extract(images)

    @torch.no_grad()
    def run_prepared(self, batch: list[_Prepared], heatmap: bool = False) -> list[dict[str, Any]]:
        """Ground prepared requests (``prepare``) in one backbone pass; one image record each."""
        with self._lock:
            feats = self._features([p.image for p in batch])
            self.stats["backbone_calls"] += 1
            self.stats["backbone_images"] += len(batch)
            owner = torch.tensor([b for b, p in enumerate(batch) for _ in p.texts], device=self.device)
            texts = [t for p in batch for t in p.texts]
            results = self.model.ground(feats, [t.tokens for t in texts], [t.spans for t in texts], owner)
        records, it = [], iter(zip(texts, results))
        for p in batch:
            w, h = p.image.size
            preds = []
            for _ in p.texts:
                text, res = next(it)
                for k, label in enumerate(text.labels):
                    box = None if res.boxes is None else res.boxes[k]
                    hm, point, pixels, cands = locate_candidates(res.heatmaps[k], box, w, h)
                    score = float(res.scores[k])
                    if box is not None:
                        cands = [(pixels, score)]
                    lv = int(res.levels[k])
                    concepts = res.extras.get("concepts")  # cam: the matched classes
                    preds.append(phrase_record(label, score, pixels, point, cands[: self.top_k],
                                               self.levels[lv] if 0 <= lv < len(self.levels) else None,
                                               text.unknown[k], concepts=None if concepts is None else concepts[k],
                                               heatmap=hm.numpy() if heatmap else None))
            records.append(image_record(p.name, w, h, preds))
        return records

    def stream(self, requests: Iterable[tuple[ImageInput, Texts]], heatmap: bool = False,
               return_errors: bool = False) -> Iterator[dict[str, Any] | PhrasegroundError]:
        """Ground (image, phrases) requests in order, ``batch_size`` images per backbone pass.

        With ``return_errors`` a bad request yields its PhrasegroundError in its place and the
        others go on; otherwise the error is raised. A request may itself be a PhrasegroundError
        (one that failed upstream, e.g. a malformed line): it is passed through in its place.
        """
        slots: list[_Prepared | PhrasegroundError] = []  # in request order

        def flush() -> Iterator[dict[str, Any] | PhrasegroundError]:
            ready = [s for s in slots if isinstance(s, _Prepared)]
            out = iter(self.run_prepared(ready, heatmap) if ready else [])
            for s in slots:
                yield s if isinstance(s, PhrasegroundError) else next(out)
            slots.clear()

        n_ready = 0
        for req in requests:
            try:
                if isinstance(req, PhrasegroundError):
                    raise req
                image, phrases = req
                slots.append(self.prepare(image, phrases))
                n_ready += 1
            except PhrasegroundError as e:
                if not return_errors:
                    raise
                slots.append(e)
            if n_ready >= self.batch_size:
                yield from flush()
                n_ready = 0
        yield from flush()

    def __call__(self, images: ImageInput | Sequence[ImageInput], phrases: Texts | Sequence[Texts],
                 heatmap: bool = False) -> dict[str, Any] | list[dict[str, Any]]:
        """Ground phrases in one image (-> its record) or in a list of images (-> a list).

        Args:
            images: a path, a PIL image, an encoded file's bytes, or a list of them.
            phrases: a phrase, a list of phrases, or a sentence with ``[bracketed]`` phrases
                (items with brackets are sentences: the whole sentence is fed to the model and
                each bracketed part is one prediction); for a list of images, the same phrases
                for every image, or one list per image.
            heatmap: add each phrase's (H, W) float32 heatmap at the image's size (``"heatmap"``).
        """
        single = isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray))
        image_list = [images] if single else list(images)
        if not single and not isinstance(phrases, str) and phrases and all(not isinstance(p, str) for p in phrases):
            per_image = list(phrases)
            if len(per_image) != len(image_list):
                raise PhrasegroundError(f"{len(per_image)} phrase lists for {len(image_list)} images")
        else:
            per_image = [phrases] * len(image_list)
        records = list(self.stream(zip(image_list, per_image), heatmap))
        return records[0] if single else records
