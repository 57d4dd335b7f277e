"""Run a model over a split for cross-modal retrieval: every caption against every image.

Any model of the retrieval protocol (``models.base.SupportsRetrieval``) works: separable ones
through their unit embeddings (similarity = dot products, each side encoded once), the others
through ``retrieval_similarity(features, tokens)``, called block by block.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..data.types import ImageSample
from ..errors import ConfigError
from ..models.base import GroundingModel, supports_retrieval
from .retrieval import DEFAULT_KS, fold_retrieval_metrics, retrieval_metrics


def caption_queries(samples: list[ImageSample], tokenize: Callable[[str], list[str]]) -> tuple[list[list[str]], torch.Tensor]:
    """Tokens of every caption of the split and (n_captions,) the index of each caption's image."""
    tokens = [tokenize(c.text) for s in samples for c in s.captions]
    owner = torch.tensor([i for i, s in enumerate(samples) for _ in s.captions], dtype=torch.long)
    return tokens, owner


@torch.no_grad()
def similarity_matrix(model: GroundingModel, fs, tokens: list[list[str]], image_batch: int = 64,
                      text_batch: int = 256) -> torch.Tensor:
    """(n_texts, n_images) similarity of every text with every image of a FeatureSet.

    Raises:
        ConfigError: the model does not implement the retrieval protocol.
    """
    if not supports_retrieval(model):
        raise ConfigError(f"model {model.model_name!r} cannot rank: it does not implement the retrieval protocol")
    model.eval()
    device = next(model.parameters()).device
    image_starts = range(0, len(fs.samples), image_batch)
    text_starts = range(0, len(tokens), text_batch)

    def features(start: int) -> dict[str, torch.Tensor]:
        return fs.select(list(range(start, min(start + image_batch, len(fs.samples)))), device)

    if model.separable:
        images = torch.cat([model.embed_images(features(i)).float().cpu() for i in image_starts])  # (I, d)
        texts = torch.cat([model.embed_texts(tokens[t : t + text_batch]).float().cpu() for t in text_starts])  # (C, d)
        return texts @ images.t()
    columns = []
    for i in image_starts:
        feats = features(i)
        columns.append(torch.cat([model.retrieval_similarity(feats, tokens[t : t + text_batch]).float().cpu()
                                  for t in text_starts]))  # (C, image_batch)
    return torch.cat(columns, dim=1)  # (C, I)


def chance_recall(caption_to_image: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Expected R@K of a uniformly random ranking, in both directions.

    Caption -> image: one matching image among n, R@K = K / n. Image -> caption: an image with
    m of the N captions is found in the top K with probability 1 - C(N - m, K) / C(N, K)
    (K clipped to N).
    """
    c2i = torch.as_tensor(caption_to_image).long()
    n_img, n_cap = int(c2i.max()) + 1, len(c2i)
    per_image = torch.bincount(c2i, minlength=n_img).tolist()
    return {
        "caption_to_image": {f"R@{k}": min(k, n_img) / n_img for k in ks},
        "image_to_caption": {
            f"R@{k}": sum(1 - math.comb(n_cap - m, min(k, n_cap)) / math.comb(n_cap, min(k, n_cap)) for m in per_image) / n_img
            for k in ks
        },
    }


def _fold_chance(caption_to_image: torch.Tensor, fold_size: int, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """``chance_recall`` averaged over the folds of ``fold_retrieval_metrics``."""
    n_img = int(caption_to_image.max()) + 1
    folds = []
    for start in range(0, n_img, fold_size):
        inside = (caption_to_image >= start) & (caption_to_image < start + fold_size)
        folds.append(chance_recall(caption_to_image[inside] - start, ks))
    return {d: {key: sum(f[d][key] for f in folds) / len(folds) for key in folds[0][d]} for d in folds[0]}


def evaluate_retrieval(model: GroundingModel, fs, fold_size: int | None = None, ks: Sequence[int] = DEFAULT_KS,
                       image_batch: int = 64, text_batch: int = 256) -> dict:
    """Caption -> image and image -> caption retrieval of ``model`` on a FeatureSet.

    Args:
        fs: the split's FeatureSet; every caption of every image is a query.
        fold_size: also report the mean over consecutive folds of this many images (the COCO
            "1k" protocol: 1000); must divide the number of images. None: full set only.
        ks: the K of each R@K.

    Returns:
        ``{"full": retrieval_metrics, "chance": chance_recall}``, plus ``"folds"`` and
        ``"chance_folds"`` when ``fold_size`` is given.
    """
    tokens, owner = caption_queries(fs.samples, model.tokenize)
    sim = similarity_matrix(model, fs, tokens, image_batch, text_batch)
    report = {"full": retrieval_metrics(sim, owner, ks), "chance": chance_recall(owner, ks)}
    if fold_size is not None:
        report["folds"] = fold_retrieval_metrics(sim, owner, fold_size, ks)
        report["chance_folds"] = _fold_chance(owner, fold_size, ks)
    return report
