"""Cross-modal retrieval recall: caption -> image and image -> caption R@K and median rank.

Ranks start at 1 (best). A query's rank is 1 + the number of non-matching items scoring **at
least** as high as its best matching item: ties count against the model, so a collapsed
embedding (all similarities equal) gets the worst rank, not the best. For image -> caption the
matching items are all captions of the image, and the best-ranked one counts.
The median rank is ``floor(median)`` of the ranks, as in VSE++ and the COCO retrieval papers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from phraseground.errors import ConfigError, PhrasegroundError

DEFAULT_KS = (1, 5, 10)
_CHUNK_ROWS = 4096  # caption rows compared at once; bounds memory at 4096 x n_images


def _check_inputs(similarity: torch.Tensor, caption_to_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sim = torch.as_tensor(similarity).detach().cpu()
    c2i = torch.as_tensor(caption_to_image).detach().cpu()
    if sim.ndim != 2 or sim.numel() == 0:
        raise PhrasegroundError(f"similarity must be a non-empty (n_captions, n_images) matrix, got {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.double()
    if not bool(torch.isfinite(sim).all()):
        raise PhrasegroundError("similarity matrix holds NaN or infinite values")
    n_cap, n_img = sim.shape
    if c2i.shape != (n_cap,) or c2i.is_floating_point() or c2i.dtype == torch.bool:
        raise PhrasegroundError(f"caption_to_image must be ({n_cap},) integer image indices, got {tuple(c2i.shape)} {c2i.dtype}")
    c2i = c2i.long()
    if int(c2i.min()) < 0 or int(c2i.max()) >= n_img:
        raise PhrasegroundError(f"caption_to_image holds indices outside [0, {n_img})")
    lonely = torch.nonzero(torch.bincount(c2i, minlength=n_img) == 0).flatten()
    if len(lonely):
        raise PhrasegroundError(f"{len(lonely)} image(s) have no caption, e.g. image index {int(lonely[0])}")
    return sim, c2i


def retrieval_ranks(similarity: torch.Tensor, caption_to_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of every caption query and every image query (see module doc for ties).

    Args:
        similarity: (n_captions, n_images) scores, higher = more similar.
        caption_to_image: (n_captions,) index of each caption's image; every image needs a caption.

    Returns:
        caption -> image ranks (n_captions,) and image -> caption ranks (n_images,), int64.
    """
    sim, c2i = _check_inputs(similarity, caption_to_image)
    n_cap, n_img = sim.shape
    s_match = sim[torch.arange(n_cap), c2i]  # (C,) score of each caption with its own image
    best = torch.full((n_img,), -torch.inf, dtype=sim.dtype).scatter_reduce(0, c2i, s_match, "amax")  # (I,)
    cap_ranks = torch.empty(n_cap, dtype=torch.long)
    at_least_best = torch.zeros(n_img, dtype=torch.long)  # captions scoring >= each image's best match
    for start in range(0, n_cap, _CHUNK_ROWS):
        block = sim[start : start + _CHUNK_ROWS]  # (c, I)
        cap_ranks[start : start + len(block)] = (block >= s_match[start : start + len(block), None]).sum(dim=1)
        at_least_best += (block >= best[None]).sum(dim=0)
    # the matching captions that reach the best score are not competitors
    matched_at_best = torch.zeros(n_img, dtype=torch.long).scatter_add(0, c2i, (s_match >= best[c2i]).long())
    img_ranks = 1 + at_least_best - matched_at_best
    return cap_ranks, img_ranks


def rank_summary(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"R@k": share of ranks <= k for each k, "median_rank": floor(median), "mean_rank": mean}``."""
    r = ranks.double()
    out = {f"R@{k}": float((r <= k).double().mean()) for k in ks}
    out["median_rank"] = float(np.floor(np.median(r.numpy())))
    out["mean_rank"] = float(r.mean())
    return out


def retrieval_metrics(
    similarity: torch.Tensor, caption_to_image: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict:
    """Full-set retrieval recall in both directions.

    Args:
        similarity: (n_captions, n_images) scores, higher = more similar.
        caption_to_image: (n_captions,) index of each caption's image.
        ks: the K of each R@K.

    Returns:
        ``{"caption_to_image": summary, "image_to_caption": summary, "n_captions", "n_images"}``
        with summaries as in ``rank_summary`` (recalls as fractions in [0, 1]).
    """
    cap_ranks, img_ranks = retrieval_ranks(similarity, caption_to_image)
    return {
        "caption_to_image": rank_summary(cap_ranks, ks),
        "image_to_caption": rank_summary(img_ranks, ks),
        "n_captions": len(cap_ranks),
        "n_images": len(img_ranks),
    }


def fold_retrieval_metrics(
    similarity: torch.Tensor,
    caption_to_image: torch.Tensor,
    fold_size: int = 1000,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """The COCO "1k" protocol: metrics on consecutive folds of ``fold_size`` images, averaged.

    Fold f holds images ``[f * fold_size, (f + 1) * fold_size)`` and their captions; every
    number (recalls, median and mean ranks) is the mean over folds.

    Raises:
        ConfigError: ``fold_size`` does not divide the number of images.
    """
    sim, c2i = _check_inputs(similarity, caption_to_image)
    n_img = sim.shape[1]
    if fold_size < 1 or n_img % fold_size:
        raise ConfigError(f"fold_size {fold_size} does not split {n_img} images into equal folds")
    folds = []
    for start in range(0, n_img, fold_size):
        rows = torch.nonzero((c2i >= start) & (c2i < start + fold_size)).flatten()
        folds.append(retrieval_metrics(sim[rows, start : start + fold_size], c2i[rows] - start, ks))
    out: dict = {
        direction: {key: float(np.mean([f[direction][key] for f in folds])) for key in folds[0][direction]}
        for direction in ("caption_to_image", "image_to_caption")
    }
    out.update(n_captions=len(c2i), n_images=n_img, fold_size=fold_size, n_folds=len(folds))
    return out
