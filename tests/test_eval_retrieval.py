"""Retrieval recall against a hand-computed 3x3 case and a naive Python loop."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval.retrieval import (
    fold_retrieval_metrics,
    rank_summary,
    retrieval_metrics,
    retrieval_ranks,
)


def naive_ranks(sim: list[list[float]], c2i: list[int]) -> tuple[list[int], list[int]]:
    """Rank = 1 + non-matching items scoring at least as high as the best matching one."""
    n_cap, n_img = len(sim), len(sim[0])
    cap = [1 + sum(1 for j in range(n_img) if j != c2i[c] and sim[c][j] >= sim[c][c2i[c]]) for c in range(n_cap)]
    img = []
    for i in range(n_img):
        per_caption = []
        for c in (c for c in range(n_cap) if c2i[c] == i):
            per_caption.append(1 + sum(1 for o in range(n_cap) if c2i[o] != i and sim[o][i] >= sim[c][i]))
        img.append(min(per_caption))
    return cap, img


def naive_summary(ranks: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["median_rank"] = float(math.floor(statistics.median(ranks)))
    out["mean_rank"] = sum(ranks) / len(ranks)
    return out


def random_case(seed: int, n_img: int, per_image_max: int, integer: bool):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, per_image_max + 1, (n_img,), generator=gen)
    c2i = torch.repeat_interleave(torch.arange(n_img), counts)
    c2i = c2i[torch.randperm(len(c2i), generator=gen)]  # captions in any order
    if integer:  # many ties
        sim = torch.randint(0, 4, (len(c2i), n_img), generator=gen).double()
    else:
        sim = torch.randn(len(c2i), n_img, generator=gen, dtype=torch.float64)
    return sim, c2i


SIM3 = [[0.9, 0.1, 0.5],
        [0.8, 0.7, 0.2],
        [0.3, 0.6, 0.4]]


def test_hand_computed_3x3():
    # caption 0: 0.9 is the best of its row -> 1; caption 1: 0.8 beats 0.7 -> 2; caption 2: 0.6 beats 0.4 -> 2
    # image 0: 0.9 best of its column -> 1; image 1: 0.7 best -> 1; image 2: 0.5 (caption 0) beats 0.4 -> 2
    cap, img = retrieval_ranks(torch.tensor(SIM3), torch.tensor([0, 1, 2]))
    assert cap.tolist() == [1, 2, 2] and img.tolist() == [1, 1, 2]
    report = retrieval_metrics(torch.tensor(SIM3), torch.tensor([0, 1, 2]), ks=(1, 2))
    assert report["caption_to_image"] == {"R@1": 1 / 3, "R@2": 1.0, "median_rank": 2.0, "mean_rank": 5 / 3}
    assert report["image_to_caption"] == {"R@1": 2 / 3, "R@2": 1.0, "median_rank": 1.0, "mean_rank": 4 / 3}
    assert (report["n_captions"], report["n_images"]) == (3, 3)


def test_ties_count_against_the_model():
    cap, img = retrieval_ranks(torch.ones(3, 3), torch.tensor([0, 1, 2]))
    assert cap.tolist() == [3, 3, 3] and img.tolist() == [3, 3, 3]
    # image 0: its captions 1 and 2 score 0.9, non-matching caption 3 ties with them -> rank 2
    sim = torch.tensor([[0.5, 0.2], [0.9, 0.4], [0.9, 0.3], [0.9, 0.6]])
    cap, img = retrieval_ranks(sim, torch.tensor([1, 0, 0, 1]))
    assert img.tolist() == [2, 1]
    assert cap.tolist() == [2, 1, 1, 2]


def test_median_rank_is_floored():
    summary = rank_summary(torch.tensor([1, 2, 3, 4]), ks=(1, 3))
    assert summary == {"R@1": 0.25, "R@3": 0.75, "median_rank": 2.0, "mean_rank": 2.5}


@pytest.mark.parametrize("seed, integer", [(0, False), (1, False), (2, True), (3, True)])
def test_vectorised_ranks_match_naive_loop(seed, integer):
    sim, c2i = random_case(seed, n_img=17, per_image_max=4, integer=integer)
    cap, img = retrieval_ranks(sim, c2i)
    naive_cap, naive_img = naive_ranks(sim.tolist(), c2i.tolist())
    assert cap.tolist() == naive_cap and img.tolist() == naive_img
    report = retrieval_metrics(sim, c2i)
    assert report["caption_to_image"] == pytest.approx(naive_summary(naive_cap))
    assert report["image_to_caption"] == pytest.approx(naive_summary(naive_img))


def test_chunked_rows_match_naive(monkeypatch):
    import phraseground.eval.retrieval as retrieval

    monkeypatch.setattr(retrieval, "_CHUNK_ROWS", 5)
    sim, c2i = random_case(4, n_img=9, per_image_max=3, integer=True)
    assert [t.tolist() for t in retrieval_ranks(sim, c2i)] == list(naive_ranks(sim.tolist(), c2i.tolist()))


def test_folds_average_per_fold_metrics():
    sim, c2i = random_case(5, n_img=6, per_image_max=3, integer=False)
    report = fold_retrieval_metrics(sim, c2i, fold_size=2)
    assert (report["n_folds"], report["fold_size"], report["n_images"]) == (3, 2, 6)
    per_fold = []
    for f in range(3):
        rows = [c for c in range(len(c2i)) if 2 * f <= c2i[c] < 2 * f + 2]
        sub = [[sim[c][j].item() for j in range(2 * f, 2 * f + 2)] for c in rows]
        cap, img = naive_ranks(sub, [int(c2i[c]) - 2 * f for c in rows])
        per_fold.append((naive_summary(cap), naive_summary(img)))
    for d, direction in enumerate(("caption_to_image", "image_to_caption")):
        expected = {k: sum(p[d][k] for p in per_fold) / 3 for k in per_fold[0][d]}
        assert report[direction] == pytest.approx(expected)
    # one fold holding every image is the full-set metric
    full = fold_retrieval_metrics(sim, c2i, fold_size=6)
    assert full["caption_to_image"] == pytest.approx(retrieval_metrics(sim, c2i)["caption_to_image"])


def test_bad_inputs():
    with pytest.raises(ConfigError, match="fold_size"):
        fold_retrieval_metrics(torch.rand(4, 4), torch.arange(4), fold_size=3)
    with pytest.raises(PhrasegroundError, match="no caption"):
        retrieval_metrics(torch.rand(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(PhrasegroundError, match="outside"):
        retrieval_metrics(torch.rand(3, 3), torch.tensor([0, 1, 3]))
    with pytest.raises(PhrasegroundError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan")]]), torch.tensor([0]))
    with pytest.raises(PhrasegroundError, match="caption_to_image"):
        retrieval_metrics(torch.rand(3, 3), torch.tensor([0.0, 1.0, 2.0]))
