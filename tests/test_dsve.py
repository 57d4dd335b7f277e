"""dsve: WELDON pooling, the hard-negative loss on a hand-computed batch, localization (Eq. 9)
against a naive loop, the staged schedule, word tables in each format, retrieval runs."""
from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from phraseground.data.types import Caption, ImageSample
from phraseground.errors import ConfigError, WeightsNotFoundError
from phraseground.eval.retrieval import retrieval_metrics
from phraseground.eval.retrieval_run import chance_recall, evaluate_retrieval, similarity_matrix
from phraseground.models.base import GroundingModel, SupportsRetrieval, TrainBatch
from phraseground.models.dsve import above_mean, triplet_ranking_loss, weldon_pool
from phraseground.models.registry import build_config, create_model
from phraseground.train.data import FeatureSet

VOCAB = ["<pad>", "<unk>", "a", "red", "star", "blue", "square", "left", "of", "the", "small"]
SMALL = dict(maps=6, dim=8, word_dim=5, localize_k=3, sru_layers=2)
CONFIGS = Path(__file__).resolve().parent.parent / "src" / "phraseground" / "configs"


def small_model(**overrides) -> GroundingModel:
    torch.manual_seed(0)
    return create_model("dsve", vocab=VOCAB, **{**SMALL, **overrides})


def c4(b: int, h: int, w: int, seed: int = 1) -> dict[str, torch.Tensor]:
    return {"c4": torch.randn(b, 128, h, w, generator=torch.Generator().manual_seed(seed))}


# ---------------------------------------------------------------- pooling
def test_weldon_pool_hand_computed():
    maps = torch.tensor([[[[1.0, -2.0], [5.0, 0.0]]]])  # (1, 1, 2, 2)
    assert weldon_pool(maps, 1).item() == pytest.approx(5.0 + -2.0)
    assert weldon_pool(maps, 2).item() == pytest.approx((5.0 + 1.0) / 2 + (-2.0 + 0.0) / 2)
    assert weldon_pool(maps, 10).item() == pytest.approx(2 * maps.mean().item())  # k clipped to h*w


def test_weldon_pool_matches_naive_loop():
    maps = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = weldon_pool(maps, 3)
    for b in range(2):
        for c in range(3):
            values = sorted(maps[b, c].flatten().tolist())
            assert out[b, c].item() == pytest.approx(sum(values[-3:]) / 3 + sum(values[:3]) / 3, abs=1e-6)


# ---------------------------------------------------------------- loss
SIM = torch.tensor([[0.9, 0.5, 0.1],
                    [0.6, 0.4, 0.3],
                    [0.2, 0.7, 0.8]])


def test_triplet_loss_hand_computed():
    # margin 0.2, positives 0.9 / 0.4 / 0.8. Caption queries (rows): row 1 hinges 0.4 (image 0)
    # and 0.1 (image 2), row 2 hinge 0.1 (image 1). Image queries (columns): column 1 hinges
    # 0.3 (text 0) and 0.5 (text 2). Every other hinge is 0.
    assert triplet_ranking_loss(SIM, 0.2).item() == pytest.approx((0 + (0.4 + 0.5) + 0.1) / 3)
    assert triplet_ranking_loss(SIM, 0.2, hardest=False).item() == pytest.approx((0 + (0.5 + 0.8) + 0.1) / 3)
    # pairs 1 and 2 show the same image: they are no longer negatives of each other
    same = torch.tensor([0, 7, 7])
    assert triplet_ranking_loss(SIM, 0.2, same).item() == pytest.approx((0 + (0.4 + 0.3) + 0) / 3)


def test_hardest_negative_gradient_reaches_only_the_hardest_pairs():
    sim = SIM.clone().requires_grad_(True)
    triplet_ranking_loss(sim, 0.2).backward()
    expected = torch.zeros(3, 3)
    expected[1, 0], expected[1, 1] = 1 / 3, -1 / 3  # caption 1 vs its hardest image 0
    expected[2, 1], expected[2, 2] = 1 / 3, -1 / 3  # caption 2 vs image 1
    expected[2, 1] += 1 / 3  # image 1 vs its hardest caption 2
    expected[1, 1] -= 1 / 3
    torch.testing.assert_close(sim.grad, expected)


# ---------------------------------------------------------------- embeddings and localization
@pytest.mark.parametrize("h,w", [(5, 7), (9, 4), (1, 1)])
def test_any_input_size_gives_unit_embeddings(h, w):
    model = small_model().eval()
    x = model.embed_images(c4(2, h, w))
    v = model.embed_texts([["a", "red", "star"], ["the", "square"]])
    assert x.shape == v.shape == (2, 8)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.retrieval_similarity(c4(2, h, w), [["a"], ["the", "square"], ["star"]]),
                               model.embed_texts([["a"], ["the", "square"], ["star"]]) @ x.t())


def test_image_embedding_is_the_paper_formula():
    model = small_model().eval()
    feats = c4(1, 3, 4)
    g = torch.einsum("oc,bchw->bohw", model.adapt.weight[:, :, 0, 0], feats["c4"]) + model.adapt.bias[None, :, None, None]
    h = g.amax(dim=(2, 3)) + g.amin(dim=(2, 3))  # Eq. 2
    x = model.project.weight @ h[0] + model.project.bias  # Eq. 3
    torch.testing.assert_close(model.embed_images(feats)[0], x / x.norm(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w", [(5, 7), (3, 3)])
def test_localize_matches_naive_eq9(h, w):
    model = small_model().eval()
    feats = c4(2, h, w)
    vectors = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = model.localize(feats, vectors)
        g = model.visual_maps(feats)  # (2, D', h, w)
    assert maps.shape == (2, 3, h, w)
    a = model.project.weight.detach()  # (d, D')
    for b in range(2):
        g_prime = [sum(a[u, c] * g[b, c] for c in range(6)) for u in range(8)]  # G' = A·G, no bias
        for p in range(3):
            v = vectors[b, p].tolist()
            top = sorted(range(8), key=lambda u: -v[u])[:3]  # K(v): the 3 largest entries
            expected = sum(abs(v[u]) * g_prime[u] for u in top)
            torch.testing.assert_close(maps[b, p], expected, atol=1e-5, rtol=1e-5)


def test_above_mean_hand_computed():
    maps = torch.tensor([[[1.0, 4.0], [2.0, 6.0]], [[5.0, 5.0], [5.0, 5.0]]])  # means 3.25 and 5
    expected = torch.tensor([[[0.0, 0.75 / 2.75], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(above_mean(maps), expected)
    torch.testing.assert_close(above_mean(maps - 7.0), expected)  # offsets do not matter


def test_ground_uses_the_phrase_alone():
    model = small_model().eval()
    feats = c4(2, 4, 6)
    tokens = [["a", "red", "star", "left", "of", "the", "square"], ["the", "small", "red", "star"]]
    spans = [[(0, 3), (5, 7), (2, 2)], [(1, 4)]]
    with torch.no_grad():
        results = model.ground(feats, tokens, spans)
        x = model.embed_images(feats)
        v = model.embed_texts([["a", "red", "star"], ["the", "square"]])
        raw = model.localize(feats, v[None].expand(2, 2, 8))  # (2, 2, h, w): both phrases in both images
    assert [r.heatmaps.shape for r in results] == [(3, 4, 6), (1, 4, 6)]
    for res in results:
        assert ((res.heatmaps >= 0) & (res.heatmaps <= 1)).all()
    for p in range(2):  # heatmap = Eq. 9 of the phrase's own embedding, above its mean, scaled to max 1
        above = (raw[0, p] - raw[0, p].mean()).clamp_min(0)
        torch.testing.assert_close(results[0].heatmaps[p], above / above.max())
        assert results[0].heatmaps[p].flatten().argmax() == raw[0, p].flatten().argmax()
        assert results[0].scores[p].item() == pytest.approx(float(v[p] @ x[0]), abs=1e-6)
    assert results[0].heatmaps[2].abs().sum() == 0 and results[0].scores[2] == 0  # empty span
    # "small red star" in image 1 is grounded from those words only, whatever the caption says
    with torch.no_grad():
        alone = model.ground({"c4": feats["c4"][1:]}, [["small", "red", "star"]], [[(0, 3)]])[0]
    torch.testing.assert_close(results[1].heatmaps[0], alone.heatmaps[0])


# ---------------------------------------------------------------- staged schedule
def test_warmup_and_frozen_adaptation_stages():
    model = small_model(warmup_epochs=2, frozen_adapt_epochs=1)
    params = [p for p in model.parameters() if p.requires_grad]  # as the training loop builds its optimizer
    assert len(params) == len(list(model.parameters()))
    opt = torch.optim.Adam(params, lr=0.1)
    batch = TrainBatch(c4(3, 4, 4), [["a", "red", "star"], ["blue", "square"], ["the", "small", "star"]],
                       image_index=torch.tensor([0, 1, 2]))

    def loss_with(hardest: bool) -> float:
        model.eval()
        with torch.no_grad():
            sim = model.retrieval_similarity(batch.features, batch.tokens)
            out = float(model.training_loss(batch)["loss"])
        assert out == pytest.approx(float(triplet_ranking_loss(sim, 0.2, batch.image_index, hardest)), abs=1e-6)
        return out

    model.on_epoch_start(0)
    assert not model.hardest_negatives and not model.adapt.weight.requires_grad
    loss_with(hardest=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    opt.zero_grad()
    model(batch)["loss"].backward()
    opt.step()
    after = model.state_dict()
    assert torch.equal(after["adapt.weight"], before["adapt.weight"]) and torch.equal(after["adapt.bias"], before["adapt.bias"])
    assert not torch.equal(after["project.weight"], before["project.weight"])
    assert not torch.equal(after["sru.layers.0.weight"], before["sru.layers.0.weight"])
    model.on_epoch_start(1)
    assert not model.hardest_negatives and model.adapt.weight.requires_grad
    model.on_epoch_start(2)
    assert model.hardest_negatives
    loss_with(hardest=True)


def test_config_validation():
    with pytest.raises(ConfigError, match="text_encoder"):
        create_model("dsve", vocab=VOCAB, text_encoder="elmo")
    with pytest.raises(ConfigError, match="localize_k"):
        create_model("dsve", vocab=VOCAB, dim=8, localize_k=9)
    with pytest.raises(ConfigError, match=r"no tap\(s\) \['conv5'\]"):
        create_model("dsve", vocab=VOCAB, taps=["conv5"])
    with pytest.raises(ConfigError, match="exactly 1 tap"):
        create_model("dsve", vocab=VOCAB, taps=["c3", "c4"])
    with pytest.raises(ConfigError, match="model_args.hidden: unknown option"):
        create_model("dsve", vocab=VOCAB, hidden=3)


# ---------------------------------------------------------------- word tables
TABLE = {"red": [0.5, -1.25, 2.0], "star": [1.0, 0.0, -0.5], "square": [3.0, 0.25, 1.5], "zebra": [9.0, 9.0, 9.0]}


def _write_table(tmp_path: Path, fmt: str) -> dict:
    if fmt == "word2vec_bin":
        path = tmp_path / "v.bin"
        with open(path, "wb") as f:
            f.write(f"{len(TABLE)} 3\n".encode())
            for word, vec in TABLE.items():
                f.write(word.encode() + b" " + struct.pack("<3f", *vec) + b"\n")
        return {"path": str(path)}
    if fmt in ("word2vec_text", "glove"):
        lines = [f"{w} " + " ".join(repr(x) for x in v) for w, v in TABLE.items()]
        path = tmp_path / "v.txt"
        path.write_text(("" if fmt == "glove" else f"{len(TABLE)} 3\n") + "\n".join(lines) + "\n")
        return {"path": str(path)}
    np.save(tmp_path / "v.npy", np.array(list(TABLE.values()), np.float32))
    (tmp_path / "words.txt").write_text("\n".join(TABLE) + "\n")
    return {"path": str(tmp_path / "v.npy"), "vocab_file": str(tmp_path / "words.txt")}


@pytest.mark.parametrize("fmt", ["word2vec_bin", "word2vec_text", "glove", "npy"])
def test_word_table_in_each_format(tmp_path, fmt):
    model = small_model(text_encoder="word_table", text_encoder_args=_write_table(tmp_path, fmt)).eval()
    words = model.text
    assert words.word_dim == 3 and not words.embedding.weight.requires_grad  # the table stays frozen
    assert "zebra" not in words.vocab  # restricted to the training vocabulary
    for w in ("red", "star", "square"):
        torch.testing.assert_close(words.embedding.weight[words.vocab.stoi[w]], torch.tensor(TABLE[w]))
    assert words.embedding.weight[words.vocab.stoi["<unk>"]].abs().sum() == 0  # UNK: zeros
    feats = words([["red", "blue", "star"]])  # "blue" is not in the table
    torch.testing.assert_close(feats.words[0, 0], torch.tensor([TABLE["red"], [0.0] * 3, TABLE["star"]]))
    assert model.embed_texts([["red", "square"]]).shape == (1, 8)


def test_missing_word_table_names_the_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.bin"):
        small_model(text_encoder="word_table", text_encoder_args={"path": str(tmp_path / "nowhere.bin")})


# ---------------------------------------------------------------- retrieval runs
class _Embeddings(GroundingModel, SupportsRetrieval):
    """Images carry their embedding as a 1×1 feature map; text "i" embeds as row i of a table."""

    model_name = "fake"

    def __init__(self, text_table: torch.Tensor) -> None:
        super().__init__(None)
        self.table = nn.Parameter(text_table)

    def embed_images(self, features):
        return features["f"][:, :, 0, 0]

    def embed_texts(self, tokens):
        return self.table[[int(t[0]) for t in tokens]]


class _SimilarityOnly(GroundingModel, SupportsRetrieval):
    model_name = "fake_sim"
    separable = False

    def __init__(self, inner: _Embeddings) -> None:
        super().__init__(None)
        self.inner = inner

    def retrieval_similarity(self, features, tokens):
        return self.inner.embed_texts(tokens) @ self.inner.embed_images(features).t()


def _retrieval_fixture(n_images=4, per_image=(2, 3, 1, 2), dim=5, noise=0.5):
    g = torch.Generator().manual_seed(3)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=1)  # unit: own image ranks first
    owner = torch.tensor([i for i, m in enumerate(per_image) for _ in range(m)])
    texts = images[owner] + noise * torch.randn(len(owner), dim, generator=g)
    samples, k = [], 0
    for i, m in enumerate(per_image):
        caps = tuple(Caption(str(k + j)) for j in range(m))
        k += m
        samples.append(ImageSample(str(i), Path(f"{i}.png"), 10, 10, caps))
    return FeatureSet(samples, {"f": images[:, :, None, None]}), texts, owner


def test_similarity_matrix_both_interfaces_agree_with_naive_product():
    fs, texts, owner = _retrieval_fixture()
    model = _Embeddings(texts)
    tokens = [[str(c)] for c in range(len(owner))]
    naive = texts @ fs.features["f"][:, :, 0, 0].t()
    torch.testing.assert_close(similarity_matrix(model, fs, tokens, image_batch=3, text_batch=2), naive)
    torch.testing.assert_close(similarity_matrix(_SimilarityOnly(model), fs, tokens, image_batch=3, text_batch=2), naive)

    class Nothing(GroundingModel):
        model_name = "nothing"

        def __init__(self):
            super().__init__(None)
            self.p = nn.Parameter(torch.zeros(1))

    with pytest.raises(ConfigError, match="cannot rank"):
        similarity_matrix(Nothing(), fs, tokens)


def test_evaluate_retrieval_full_folds_and_chance():
    fs, texts, owner = _retrieval_fixture()
    report = evaluate_retrieval(_Embeddings(texts), fs, fold_size=2)
    assert report["full"] == retrieval_metrics(texts @ fs.features["f"][:, :, 0, 0].t(), owner)
    assert report["folds"]["n_folds"] == 2
    assert report["chance"]["caption_to_image"]["R@1"] == pytest.approx(1 / 4)
    assert report["chance_folds"]["caption_to_image"]["R@1"] == pytest.approx(1 / 2)
    # fold 0: images with 2 and 3 of 5 captions; fold 1: 1 and 2 of 3 captions
    fold0 = (1 - math.comb(3, 1) / 5 + 1 - math.comb(2, 1) / 5) / 2
    fold1 = (1 - math.comb(2, 1) / 3 + 1 - math.comb(1, 1) / 3) / 2
    assert report["chance_folds"]["image_to_caption"]["R@1"] == pytest.approx((fold0 + fold1) / 2)
    perfect = evaluate_retrieval(_Embeddings(fs.features["f"][owner, :, 0, 0]), fs)
    assert perfect["full"]["caption_to_image"]["R@1"] == 1.0 and perfect["full"]["image_to_caption"]["R@1"] == 1.0
    assert "folds" not in perfect


def test_chance_recall_matches_enumerating_every_ranking():
    owner = torch.tensor([0, 0, 1, 1, 1, 2])  # 3 images with 2, 3, 1 captions
    chance = chance_recall(owner, ks=(1, 2, 4))
    for k in (1, 2, 4):
        hits = []
        for image in range(3):
            for order in itertools.permutations(range(6)):
                hits.append(any(int(owner[c]) == image for c in order[:k]))
        assert chance["image_to_caption"][f"R@{k}"] == pytest.approx(sum(hits) / len(hits))
        assert chance["caption_to_image"][f"R@{k}"] == pytest.approx(min(k, 3) / 3)


# ---------------------------------------------------------------- end to end
def test_train_two_epochs_with_the_shared_loop(tiny_bench, tmp_path):
    from phraseground.models.checkpoint import model_from_checkpoint
    from phraseground.train.config import load_config
    from phraseground.train.data import load_split, training_items
    from phraseground.train.loop import train

    cfg = load_config(CONFIGS / "dsve_synthetic.yaml", [
        f"data.root={tiny_bench}", "model_args.maps=16", "model_args.dim=16", "model_args.word_dim=8",
        "model_args.localize_k=4", "model_args.warmup_epochs=1", "train.batch_size=8", "train.epochs=2",
        "train.lr_milestones=[1]", "train.val_max_images=1", "train.checkpoint_every=0",
    ])
    summary = train(cfg, tmp_path / "run", progress=False)
    n_items = len(training_items(load_split(cfg.data, "train"), "weak"))  # one per caption
    assert summary["epochs"] == 2 and summary["steps"] == 2 * (n_items // 8)
    model = summary["model"]
    assert model.hardest_negatives  # epoch 1 switched to hardest negatives
    assert summary["last_val"]["pointing"]["n_evaluated"] > 0
    rebuilt, _ = model_from_checkpoint(tmp_path / "run" / "last.pt", "dsve")
    tokens = [["a", "red", "star"]]
    torch.testing.assert_close(rebuilt.embed_texts(tokens), model.eval().embed_texts(tokens))


def test_configs_build():
    from phraseground.train.config import load_config

    for name in ("dsve_synthetic.yaml", "dsve_paper_coco.yaml"):
        cfg = load_config(CONFIGS / name)
        assert cfg.model == "dsve"
        build_config("dsve", cfg.model_args)
