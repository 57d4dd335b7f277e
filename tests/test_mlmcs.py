"""mlmcs: attention and scores against naive loops, the loss on a hand-computed case,
grounding, ablation switches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from phraseground.errors import ConfigError
from phraseground.models.base import TrainBatch
from phraseground.models.mlmcs import attend, batch_softmax_loss
from phraseground.models.registry import create_model

VOCAB = ["a", "red", "star", "blue", "square", "left", "of", "the"]


def _naive_attend(q, v, softmax=False):
    """Loops over levels, words and regions: H[l,t,n], R[l,t] for one text-image pair."""
    L, N, D = v.shape
    T = q.shape[0]
    H = torch.zeros(L, T, N)
    R = torch.zeros(L, T)
    for l in range(L):
        for t in range(T):
            dots = torch.tensor([float(q[t] @ v[l, n]) for n in range(N)])
            h = torch.softmax(dots, 0) if softmax else dots.clamp_min(0)
            a = sum(h[n] * v[l, n] for n in range(N))
            H[l, t] = h
            R[l, t] = 0.0 if float(a.norm()) == 0 else float(a @ q[t]) / (float(a.norm()) * float(q[t].norm()))
    return H, R


@pytest.mark.parametrize("softmax", [False, True])
def test_attend_matches_naive_loop_paired_and_all_pairs(softmax):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 4, 5, generator=g), dim=-1)  # 3 texts, T=4, D=5
    v = F.normalize(torch.randn(2, 2, 6, 5, generator=g), dim=-1)  # 2 images, L=2, N=6
    H, R = attend(q, v, softmax, all_pairs=True)
    assert H.shape == (3, 2, 2, 4, 6) and R.shape == (3, 2, 2, 4)
    for s in range(3):
        for i in range(2):
            h_ref, r_ref = _naive_attend(q[s], v[i], softmax)
            assert torch.allclose(H[s, i], h_ref, atol=1e-5) and torch.allclose(R[s, i], r_ref, atol=1e-5)
    Hp, Rp = attend(q[:2], v, softmax)
    assert torch.allclose(Rp[1], R[1, 1], atol=1e-6)


def test_attend_all_negative_dots_give_zero_score():
    q = torch.tensor([[[1.0, 0.0]]])
    v = torch.tensor([[[[-1.0, 0.0], [0.0, -1.0]]]])  # every region points away
    H, R = attend(q, v)
    assert float(H.abs().sum()) == 0.0 and float(R) == 0.0


def test_batch_softmax_loss_hand_computed():
    scores = torch.tensor([[0.5, 0.1], [0.2, 0.4]])
    g = 10.0
    rows = -math.log(math.exp(5) / (math.exp(5) + math.exp(1))) - math.log(math.exp(4) / (math.exp(2) + math.exp(4)))
    cols = -math.log(math.exp(5) / (math.exp(5) + math.exp(2))) - math.log(math.exp(4) / (math.exp(1) + math.exp(4)))
    expected = rows / 2 + cols / 2
    assert batch_softmax_loss(scores, g).item() == pytest.approx(expected, rel=1e-6)
    # a second caption of the same image is not a negative: both items show image 7
    same = batch_softmax_loss(scores, g, torch.tensor([7, 7]))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def _model(**kw):
    torch.manual_seed(0)
    args = dict(dim=8, grid=4, word_dim=8)
    args.update(kw)
    return create_model("mlmcs", vocab=VOCAB, **args)


def _features(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(b, c, 4, 4, generator=g) for t, c in (("c2", 64), ("c3", 96), ("c4", 128))}


def test_pair_scores_word_pooling_is_logsumexp_of_level_max():
    m = _model()
    tokens = [["a", "red", "star"], ["the", "blue", "square", "left", "of", "a", "star"]]
    v = m.encode_image(_features())
    words, sent, mask = m.encode_text(tokens)
    r_w, r_s = m.pair_scores(words, sent, mask, v)
    for s in range(2):
        for i in range(2):
            n = len(tokens[s])
            _, r = attend(words[s:s + 1, :n], v[i:i + 1])  # (1, L, n)
            r_t = r[0].amax(0)
            assert r_w[s, i].item() == pytest.approx((torch.logsumexp(5 * r_t, 0) / 5).item(), abs=1e-5)
            _, rs = attend(sent[s:s + 1, None], v[i:i + 1])
            assert r_s[s, i].item() == pytest.approx(rs.max().item(), abs=1e-5)


def test_training_loss_is_sum_of_word_and_sentence_losses():
    m = _model()
    batch = TrainBatch(_features(), [["a", "red", "star"], ["a", "blue", "square"]], image_index=torch.tensor([0, 1]))
    out = m.training_loss(batch)
    assert out["loss"].item() == pytest.approx((out["loss_words"] + out["loss_sentence"]).item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("norm", ["none", "sum"])
@torch.no_grad()
def test_ground_phrase_heatmap_is_score_weighted_word_average(norm):
    m = _model(word_heatmap_norm=norm).eval()
    feats = _features(1)
    tokens = [["a", "red", "star", "left", "of", "the", "blue", "square"]]
    (res,) = m.ground(feats, tokens, [[(0, 3), (5, 8)]])
    assert res.heatmaps.shape == (2, 4, 4) and res.levels.shape == (2,)
    v = m.encode_image(feats)
    words, _, _ = m.encode_text(tokens)
    H, R = attend(words, v)  # (1, L, T, N), (1, L, T)
    for k, (s, e) in enumerate([(0, 3), (5, 8)]):
        num, den = torch.zeros(16), 0.0
        for t in range(s, e):
            lv = int(R[0, :, t].argmax())
            w = max(float(R[0, lv, t]), 0.0)
            word_map = H[0, lv, t] / float(H[0, lv, t].sum()) if norm == "sum" else H[0, lv, t]
            num += w * word_map
            den += w
        ref = num / den if den > 0 else num
        assert torch.allclose(res.heatmaps[k].flatten(), ref, atol=1e-5)


def test_sentence_grounding_mode_uses_the_sentence_heatmap():
    m = _model(grounding="sentence").eval()
    feats = _features(1)
    (res,) = m.ground(feats, [["a", "red", "star"]], [[(0, 3)]])
    v = m.encode_image(feats)
    _, sent, _ = m.encode_text([["a", "red", "star"]])
    H, R = attend(sent[:, None], v)
    lv = int(R[0, :, 0].argmax())
    assert int(res.levels[0]) == lv
    assert torch.allclose(res.heatmaps[0].flatten(), H[0, lv, 0], atol=1e-6)


def test_ablation_switches():
    assert _model(level_ablation="middle").levels == ["c3"]
    assert _model(level_ablation="last").levels == ["c4"]
    assert _model().levels == ["c2", "c3", "c4"]
    lin = _model(mapping="linear")
    assert isinstance(lin.visual["c2"], torch.nn.Linear) and isinstance(lin.word_fc, torch.nn.Linear)
    nonlin = _model()
    assert sum(isinstance(x, torch.nn.Linear) for x in nonlin.visual["c2"]) == 3
    assert sum(isinstance(x, torch.nn.LeakyReLU) for x in nonlin.visual["c2"]) == 3
    soft = _model(attention="softmax").eval()
    v = soft.encode_image(_features(1))
    words, _, _ = soft.encode_text([["a", "red"]])
    H, _ = attend(words, v, softmax=True)
    assert torch.allclose(H.sum(-1), torch.ones_like(H.sum(-1)))
    ctx = _model(word_layers=[1])  # the paper's trained-BiLSTM word features
    w0, _, _ = _model().encode_text([["a", "red"], ["red", "a"]])
    w1, _, _ = ctx.encode_text([["a", "red"], ["red", "a"]])
    assert torch.allclose(w0[0, 1], w0[1, 0], atol=1e-6)  # per-word features ignore context
    assert not torch.allclose(w1[0, 1], w1[1, 0], atol=1e-4)  # BiLSTM features do not
    with pytest.raises(ConfigError):
        _model(attention="sparse")
    with pytest.raises(ConfigError):
        _model(word_layers=[2])
