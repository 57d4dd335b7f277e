"""mlmcs: the fast attention (one matrix-product layout, padded positions left out, repeated
word vectors scored once, the Gram form of |a| when N < D) against the reference einsum
formulation, values and gradients, on random inputs of several shapes, both attention modes
and the ablation switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phraseground.models.base import TrainBatch
from phraseground.models.mlmcs import EPS, all_pairs_scores, attend, identical_rows, row_hash_weights, stacked_unit
from phraseground.models.registry import create_model

VOCAB = ["a", "red", "star", "blue", "square", "left", "of", "the", "small", "large"]


def einsum_attend(q, v, softmax=False, all_pairs=False):
    """The reference formulation: the einsums of the paper's equations, every pair and position."""
    pre = "si" if all_pairs else "b"
    qs, vs = ("s", "i") if all_pairs else ("b", "b")
    dots = torch.einsum(f"{qs}td,{vs}lnd->{pre}ltn", q, v)  # (..., L, T, N)
    heat = torch.softmax(dots, dim=-1) if softmax else torch.relu(dots)
    attended = torch.einsum(f"{pre}ltn,{vs}lnd->{pre}ltd", heat, v)  # (..., L, T, D)
    score = (heat * dots).sum(-1) / attended.norm(dim=-1).clamp_min(EPS)
    return heat, score


def einsum_pair_scores(model, words, sent, mask, v):
    """The reference of MLMCS.pair_scores."""
    softmax = model.cfg.attention == "softmax"
    _, r = einsum_attend(words, v, softmax, all_pairs=True)
    r_t = r.amax(dim=2).masked_fill(~mask[:, None, :], float("-inf"))
    r_w = torch.logsumexp(model.cfg.gamma1 * r_t, dim=-1) / model.cfg.gamma1
    _, r_s = einsum_attend(sent[:, None, :], v, softmax, all_pairs=True)
    return r_w, r_s.amax(dim=2).squeeze(-1)


def _inputs(bq, t, bv, L, n, d, seed, vocab=None):
    """Unit queries (from a word table when ``vocab`` is given: repeated words, bit-identical
    rows) and unit regions, with the leaves their gradients are taken against."""
    g = torch.Generator().manual_seed(seed)
    if vocab:
        table = torch.randn(vocab, d, generator=g).requires_grad_()
        ids = torch.randint(vocab, (bq, t), generator=g)
        q = F.normalize(table[ids], dim=-1)
        q_leaf = table
    else:
        q_leaf = torch.randn(bq, t, d, generator=g).requires_grad_()
        q = F.normalize(q_leaf, dim=-1)
    v_leaf = torch.randn(bv, L, n, d, generator=g).requires_grad_()
    return q, F.normalize(v_leaf, dim=-1), q_leaf, v_leaf


SHAPES = [  # (Bq, T, Bv, L, N, D): N > D (a from a batched product) and N < D (the Gram form)
    (3, 4, 2, 2, 6, 5),
    (2, 5, 3, 3, 4, 9),
    (4, 7, 4, 1, 16, 8),
    (1, 1, 5, 2, 9, 3),
]


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("all_pairs", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_attend_values_and_gradients_match_einsum(shape, all_pairs, softmax):
    bq, t, bv, L, n, d = shape
    if not all_pairs:
        bv = bq
    q, v, ql, vl = _inputs(bq, t, bv, L, n, d, seed=sum(shape))
    heat, r = attend(q, v, softmax, all_pairs)
    heat_ref, r_ref = einsum_attend(q, v, softmax, all_pairs)
    assert heat.shape == heat_ref.shape and r.shape == r_ref.shape
    torch.testing.assert_close(heat, heat_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(r, r_ref, atol=1e-6, rtol=1e-5)
    w = torch.randn(r.shape, generator=torch.Generator().manual_seed(1))
    wh = torch.randn(heat.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((w * r).sum() + (wh * heat).sum(), (ql, vl), retain_graph=True)
    grads_ref = torch.autograd.grad((w * r_ref).sum() + (wh * heat_ref).sum(), (ql, vl))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("repeated_words", [False, True])
def test_all_pairs_scores_with_mask_and_repeated_words_match_einsum(shape, softmax, repeated_words):
    bq, t, bv, L, n, d = shape
    q, v, ql, vl = _inputs(bq, t, bv, L, n, d, seed=7 + sum(shape), vocab=4 if repeated_words else None)
    lengths = torch.randint(1, t + 1, (bq,), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(t)[None] < lengths[:, None]
    sent = F.normalize(torch.randn(bq, 1, d, generator=torch.Generator().manual_seed(5)), dim=-1)
    r, r_s = all_pairs_scores([(q, mask), (sent, None)], v, softmax)  # words and sentences in one pass
    _, r_ref = einsum_attend(q, v, softmax, all_pairs=True)
    _, r_s_ref = einsum_attend(sent, v, softmax, all_pairs=True)
    torch.testing.assert_close(r_s, r_s_ref, atol=1e-6, rtol=1e-5)
    keep = mask[:, None, None, :].expand_as(r_ref)
    torch.testing.assert_close(r[keep], r_ref[keep], atol=1e-6, rtol=1e-5)
    assert float(r[~keep].detach().abs().sum()) == 0.0  # padded positions: 0
    w = torch.randn(r.shape, generator=torch.Generator().manual_seed(4)) * keep
    grads = torch.autograd.grad((w * r).sum(), (ql, vl), retain_graph=True)
    grads_ref = torch.autograd.grad((w * r_ref).sum(), (ql, vl))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n, d", [(2, 2), (2, 4)])  # a from a product, and the Gram form
def test_all_negative_dots_give_zero_score_and_finite_gradients(n, d):
    q = torch.zeros(1, 1, d)
    q[..., 0] = 1.0
    v = -torch.eye(n, d)[None, None].clone().requires_grad_()  # every region points away
    heat, r = attend(q, v)
    assert float(heat.detach().abs().sum()) == 0.0 and float(r.detach()) == 0.0
    (r_all,) = all_pairs_scores([(q, None)], v)
    (g,) = torch.autograd.grad(r_all.sum(), v)
    assert float(r_all.detach()) == 0.0 and torch.isfinite(g).all()


def _features(b, seed=0, grid=4):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(b, c, grid, grid, generator=g) for t, c in (("c2", 64), ("c3", 96), ("c4", 128))}


ABLATIONS = [
    {},
    {"attention": "softmax"},
    {"level_ablation": "middle"},
    {"level_ablation": "last"},
    {"mapping": "linear"},
    {"word_layers": [1]},  # contextual (BiLSTM) word features: no repeated rows to share
    {"word_layers": [0, 1]},
    {"dim": 32, "grid": 4},  # N = 16 < D = 32: the Gram form inside a model
    {"loss_terms": "words"},
    {"loss_terms": "sentence"},
]


@pytest.mark.parametrize("kw", ABLATIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_model_loss_and_parameter_gradients_match_einsum_reference(kw, monkeypatch):
    args = dict(dim=8, grid=4, word_dim=8)
    args.update(kw)
    torch.manual_seed(0)
    model = create_model("mlmcs", vocab=VOCAB, **args)
    tokens = [["a", "red", "star", "left", "of", "a", "blue", "square"], ["a", "small", "star"],
              ["the", "large", "red", "square"], ["a", "red", "star"]]
    batch = TrainBatch(_features(4, grid=args["grid"]), tokens, image_index=torch.tensor([0, 1, 2, 3]))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model.training_loss(batch)
        out["loss"].backward()
        return out["loss"].detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    monkeypatch.setattr(type(model), "pair_scores", einsum_pair_scores)
    loss_ref, grads_ref = loss_and_grads()
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("kw", [{}, {"attention": "softmax", "word_heatmap_norm": "sum"}, {"word_layers": [1]}])
@torch.no_grad()
def test_ground_matches_per_phrase_reference(kw):
    torch.manual_seed(0)
    model = create_model("mlmcs", vocab=VOCAB, dim=8, grid=4, word_dim=8, **kw).eval()
    tokens = [["a", "red", "star", "left", "of", "the", "blue", "square"], ["a", "large", "star"]]
    spans = [[(0, 3), (5, 8), (4, 4)], [(1, 3)]]
    results = model.ground(_features(2, seed=3), tokens, spans)
    v = model.encode_image(_features(2, seed=3))
    words, _, _ = model.encode_text(tokens)
    heat, r = einsum_attend(words, v, model.cfg.attention == "softmax")
    for b, res in enumerate(results):
        for k, (s, e) in enumerate(spans[b]):
            num, den, best, level = torch.zeros(16), 0.0, -1.0, -1
            for t in range(s, e):
                lv = int(r[b, :, t].argmax())
                w = max(float(r[b, lv, t]), 0.0)
                m = heat[b, lv, t]
                if model.cfg.word_heatmap_norm == "sum":
                    m = m / float(m.sum())
                num, den = num + w * m, den + w
                if w > best:
                    best, level = w, lv
            ref = num / den if den > 0 else num
            torch.testing.assert_close(res.heatmaps[k].flatten(), ref, atol=1e-5, rtol=1e-4)
            assert float(res.scores[k]) == pytest.approx(den / max(e - s, 1), abs=1e-5)
            assert int(res.levels[k]) == level


def test_stacked_unit_is_stack_of_normalize():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 6, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3)]
    xs[1].data[2] = 0.0
    xs[2].data[4] *= 1e-14  # |x| below eps: clamped
    w = torch.randn(3, 5, 6, dtype=torch.float64, generator=g)
    ref = torch.stack([F.normalize(x, dim=-1) for x in xs])
    out = stacked_unit(xs)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad((w * out).sum(), xs), torch.autograd.grad((w * ref).sum(), xs)):
        torch.testing.assert_close(a, b)


def test_repeated_context_free_words_are_scored_once(monkeypatch):
    import phraseground.models.mlmcs as mlmcs

    seen = []
    inner = mlmcs._region_attention
    monkeypatch.setattr(mlmcs, "_region_attention", lambda q, *a: seen.append(q.shape[-2]) or inner(q, *a))
    torch.manual_seed(0)
    tokens = [["a", "red", "star"], ["a", "red", "square"], ["the", "star"]]
    for word_layers, rows in (([0], 5 + 3), ([1], 8 + 3)):  # distinct words + sentences; every word + sentences
        model = create_model("mlmcs", vocab=VOCAB, dim=8, grid=4, word_dim=8, word_layers=word_layers)
        model.training_loss(TrainBatch(_features(3), tokens, image_index=torch.tensor([0, 1, 2])))
        assert seen.pop() == rows


def test_bf16_autocast_training_loss_is_close_to_fp32():
    tokens = [["a", "red", "star", "left", "of", "a", "blue", "square"], ["a", "small", "star"], ["the", "large", "square"]]
    batch = TrainBatch(_features(3), tokens, image_index=torch.tensor([0, 1, 2]))
    losses = []
    for autocast in ("off", "bf16"):
        torch.manual_seed(0)
        model = create_model("mlmcs", vocab=VOCAB, dim=16, grid=4, word_dim=16, autocast=autocast)
        out = model.training_loss(batch)
        out["loss"].backward()
        assert out["loss"].dtype == torch.float32
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses.append(float(out["loss"].detach()))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


def _same_groups(first, inverse, rows):
    """Rows i, j share a group iff they are bit-identical, and ``first`` is each group's smallest index."""
    bits = rows.view(torch.int32)
    same = (bits[:, None, :] == bits[None, :, :]).all(-1)  # (R, R), the naive reference
    assert torch.equal(inverse[:, None] == inverse[None, :], same)
    for k, i in enumerate(first.tolist()):
        assert inverse[i] == k and (inverse[:i] != k).all()


def test_identical_rows_groups_bit_identical_rows():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(6, 5, generator=g)
    rows = torch.cat([table[torch.randint(6, (20,), generator=g)], torch.randn(4, 5, generator=g)])
    first, inverse = identical_rows(rows)
    _same_groups(first, inverse, rows)
    assert len(first) == len(torch.unique(rows, dim=0))


def test_identical_rows_detects_a_hash_collision():
    w = row_hash_weights(2, torch.device("cpu"))
    # bits (0, 0) and (w1, -w0) hash to 0·w0 + 0·w1 = w1·w0 − w0·w1 = 0 (mod 2^64): different rows, one hash
    bits = torch.tensor([[0, 0], [int(w[1]), -int(w[0])], [0, 0]], dtype=torch.int32)
    rows = bits.view(torch.float32)
    first, inverse = identical_rows(rows)
    _same_groups(first, inverse, rows)
    assert len(first) == 2
