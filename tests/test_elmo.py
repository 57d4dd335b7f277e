"""ELMo loader/forward against a tiny random-weight file in the official layout and a numpy reference."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from phraseground.encoders import elmo as elmo_mod
from phraseground.encoders.elmo import ElmoEncoder, ElmoOptions, ProjectedLSTM, batch_char_ids, word_char_ids
from phraseground.errors import ConfigError, DataFormatError, WeightsNotFoundError

OPTIONS = {
    "lstm": {"dim": 7, "projection_dim": 5, "n_layers": 2, "cell_clip": 0.6, "proj_clip": 0.4,
             "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "embedding": {"dim": 3}, "filters": [[1, 4], [2, 3], [3, 5]],
                 "max_characters_per_token": 50, "n_characters": 262, "n_highway": 2},
}


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with the official dataset names and shapes for OPTIONS."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)  # noqa: E731
    lstm, cnn = OPTIONS["lstm"], OPTIONS["char_cnn"]
    d, nf, P, C = cnn["embedding"]["dim"], sum(n for _, n in cnn["filters"]), lstm["projection_dim"], lstm["dim"]
    arrays = {"char_embed": r(261, d), "CNN_proj/W_proj": r(nf, P), "CNN_proj/b_proj": r(P)}
    for i, (w, n) in enumerate(cnn["filters"]):
        arrays[f"CNN/W_cnn_{i}"], arrays[f"CNN/b_cnn_{i}"] = r(1, w, d, n), r(n)
    for k in range(cnn["n_highway"]):
        for name, shape in (("W_transform", (nf, nf)), ("b_transform", (nf,)), ("W_carry", (nf, nf)), ("b_carry", (nf,))):
            arrays[f"CNN_high_{k}/{name}"] = r(*shape)
    for direction in range(2):
        for layer in range(lstm["n_layers"]):
            key = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            arrays[f"{key}/W_0"], arrays[f"{key}/B"], arrays[f"{key}/W_P_0"] = r(2 * P, 4 * C), r(4 * C), r(C, P)
    return arrays


def write_elmo(tmp: Path, arrays: dict[str, np.ndarray], options: dict = OPTIONS) -> tuple[Path, Path]:
    opt_path, w_path = tmp / "options.json", tmp / "weights.hdf5"
    opt_path.write_text(json.dumps(options))
    with h5py.File(w_path, "w") as f:
        for key, arr in arrays.items():
            f[key] = arr
    return opt_path, w_path


@pytest.fixture(scope="module")
def elmo_files(tmp_path_factory):
    arrays = make_weights()
    return arrays, *write_elmo(tmp_path_factory.mktemp("elmo"), arrays)


@pytest.fixture(scope="module")
def encoder(elmo_files):
    _, opt_path, w_path = elmo_files
    return ElmoEncoder.from_files(opt_path, w_path)


# ---------------------------------------------------------------- naive numpy reference (TF semantics)
sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731


def ref_char_ids(word: str) -> list[int]:
    """Hand-written ELMo char ids: bow=258, eow=259, pad=260, all + 1; <S>=256, </S>=257 as chars."""
    if word in ("<S>", "</S>"):
        body = [256 if word == "<S>" else 257]
    else:
        body = list(word.encode("utf-8"))[:48]
    return [259] + [c + 1 for c in body] + [260] + [261] * (48 - len(body))


def ref_lstm(x: np.ndarray, W: np.ndarray, B: np.ndarray, W_P: np.ndarray, reverse: bool,
             cell_clip: float, proj_clip: float, clipped: list[int] | None = None) -> np.ndarray:
    """Step-by-step LSTM with projection over one unpadded sequence x (T, I)."""
    C, P = W_P.shape
    h, c = np.zeros(P), np.zeros(C)
    out = np.zeros((len(x), P))
    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):
        z = np.concatenate([x[t], h]) @ W + B
        i, j, f, o = z[:C], z[C:2 * C], z[2 * C:3 * C], z[3 * C:]
        c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)
        if clipped is not None:
            clipped[0] += int((np.abs(c) > cell_clip).sum())
            clipped[1] += int((np.abs(c) < cell_clip).sum())
        c = np.clip(c, -cell_clip, cell_clip)
        h = (sigmoid(o) * np.tanh(c)) @ W_P
        if clipped is not None:
            clipped[2] += int((np.abs(h) > proj_clip).sum())
        h = np.clip(h, -proj_clip, proj_clip)
        out[t] = h
    return out


def ref_elmo(words: list[str], a: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Layer outputs (without <S>/</S>) and the 4 sentence vectors for one text."""
    lstm, cnn = OPTIONS["lstm"], OPTIONS["char_cnn"]
    ids = np.array([ref_char_ids(w) for w in ["<S>", *words, "</S>"]])  # (L, 50)
    table = np.vstack([np.zeros((1, a["char_embed"].shape[1])), a["char_embed"]])
    emb = table[ids]  # (L, 50, d)
    feats = []
    for i, (width, n) in enumerate(cnn["filters"]):
        W, b = a[f"CNN/W_cnn_{i}"][0], a[f"CNN/b_cnn_{i}"]
        conv = np.zeros((len(ids), 50 - width + 1, n))
        for p in range(50 - width + 1):
            for k in range(width):
                conv[:, p] += emb[:, p + k] @ W[k]
        feats.append(np.maximum(conv.max(axis=1) + b, 0.0))
    x = np.concatenate(feats, axis=1)
    for k in range(cnn["n_highway"]):
        g = sigmoid(x @ a[f"CNN_high_{k}/W_carry"] + a[f"CNN_high_{k}/b_carry"])
        x = g * np.maximum(x @ a[f"CNN_high_{k}/W_transform"] + a[f"CNN_high_{k}/b_transform"], 0) + (1 - g) * x
    tok = x @ a["CNN_proj/W_proj"] + a["CNN_proj/b_proj"]
    layers, sent = [np.concatenate([tok, tok], 1)], []
    xf = xb = tok
    for layer in range(lstm["n_layers"]):
        hs = []
        for direction, inp in ((0, xf), (1, xb)):
            key = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            h = ref_lstm(inp, a[f"{key}/W_0"], a[f"{key}/B"], a[f"{key}/W_P_0"], direction == 1,
                         lstm["cell_clip"], lstm["proj_clip"])
            hs.append(h + inp if layer > 0 else h)
        xf, xb = hs
        layers.append(np.concatenate(hs, 1))
        sent += [xf[len(words)], xb[1]]
    return [lay[1:-1] for lay in layers], np.stack(sent)


# ---------------------------------------------------------------- tests
def test_char_ids_hand_computed():
    assert word_char_ids("hello")[:8] == [259, 105, 102, 109, 109, 112, 260, 261]
    assert word_char_ids("hello")[8:] == [261] * 42
    assert word_char_ids("é")[:4] == [259, 196, 170, 260]  # UTF-8 bytes 195, 169
    long = word_char_ids("x" * 60)
    assert len(long) == 50 and long[:49] == [259] + [121] * 48 and long[49] == 260
    ids = batch_char_ids([["a", "b"], []])
    assert ids.shape == (2, 4, 50)
    assert ids[0, 0, :4].tolist() == [259, 257, 260, 261]  # <S>
    assert ids[0, 3, :4].tolist() == [259, 258, 260, 261]  # </S>
    assert ids[1, 1, :4].tolist() == [259, 258, 260, 261]  # </S> right after <S> for an empty text
    assert ids[1, 2:].abs().sum() == 0  # padding tokens are all zeros
    for word in ["hello", "é", "x" * 60]:
        assert word_char_ids(word) == ref_char_ids(word)


def test_loaded_tensors_match_file(encoder, elmo_files):
    a = elmo_files[0]
    cnn = encoder.char_cnn
    assert torch.equal(cnn.embedding[0], torch.zeros(3))
    np.testing.assert_array_equal(cnn.embedding[1:].numpy(), a["char_embed"])
    for i, conv in enumerate(cnn.convs):
        W = a[f"CNN/W_cnn_{i}"]
        n, d, width = conv.weight.shape
        for o, c, k in [(0, 0, 0), (n - 1, d - 1, width - 1), (n // 2, 1, width // 2)]:
            assert conv.weight[o, c, k].item() == W[0, k, c, o]
        np.testing.assert_array_equal(conv.bias.numpy(), a[f"CNN/b_cnn_{i}"])
    for k, hw in enumerate(cnn.highways):
        for name in ("W_transform", "b_transform", "W_carry", "b_carry"):
            np.testing.assert_array_equal(getattr(hw, name).detach().numpy(), a[f"CNN_high_{k}/{name}"])
    np.testing.assert_array_equal(cnn.projection.weight.detach().numpy(), a["CNN_proj/W_proj"].T)
    np.testing.assert_array_equal(cnn.projection.bias.detach().numpy(), a["CNN_proj/b_proj"])
    for direction, layers in enumerate((encoder.forward_layers, encoder.backward_layers)):
        for k, lstm in enumerate(layers):
            key = f"RNN_{direction}/RNN/MultiRNNCell/Cell{k}/LSTMCell"
            np.testing.assert_array_equal(lstm.weight.detach().numpy(), a[f"{key}/W_0"])
            np.testing.assert_array_equal(lstm.bias.detach().numpy(), a[f"{key}/B"])
            np.testing.assert_array_equal(lstm.proj_weight.detach().numpy(), a[f"{key}/W_P_0"])
            assert lstm.reverse == (direction == 1)


@pytest.mark.parametrize("reverse", [False, True])
def test_projected_lstm_matches_naive_recurrence(elmo_files, reverse):
    a = elmo_files[0]
    key = f"RNN_{int(reverse)}/RNN/MultiRNNCell/Cell0/LSTMCell"
    W, B, W_P = a[f"{key}/W_0"], a[f"{key}/B"], a[f"{key}/W_P_0"]
    lstm = ProjectedLSTM(5, 7, 5, cell_clip=0.6, proj_clip=0.4, reverse=reverse)
    with torch.no_grad():
        lstm.weight.copy_(torch.from_numpy(W))
        lstm.bias.copy_(torch.from_numpy(B))
        lstm.proj_weight.copy_(torch.from_numpy(W_P))
    x = np.random.default_rng(1).normal(0, 1.5, (3, 6, 5)).astype(np.float32)
    lengths = [6, 4, 1]
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    out = lstm(torch.from_numpy(x), mask).detach().numpy()
    clipped = [0, 0, 0]
    for b, n in enumerate(lengths):
        ref = ref_lstm(x[b, :n].astype(np.float64), W, B, W_P, reverse, 0.6, 0.4, clipped)
        np.testing.assert_allclose(out[b, :n], ref, atol=1e-5)
        assert np.all(out[b, n:] == 0)
    assert clipped[0] > 0 and clipped[1] > 0 and clipped[2] > 0  # both clips were exercised


def test_forward_matches_reference_with_padding(encoder, elmo_files):
    texts = [["a", "dog", "on", "grass"], ["two", "cats"], []]
    feats = encoder(texts)
    assert feats.words.shape == (3, 3, 4, 10)
    assert feats.sentence.shape == (3, 4, 5)
    assert feats.mask.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    assert (encoder.num_layers, encoder.word_dim, encoder.sentence_dim, encoder.num_sentence_vectors) == (3, 10, 5, 4)
    for b, words in enumerate(texts[:2]):
        ref_layers, ref_sent = ref_elmo(words, elmo_files[0])
        n = len(words)
        for k in range(3):
            np.testing.assert_allclose(feats.words[b, k, :n].numpy(), ref_layers[k], atol=1e-4)
        np.testing.assert_allclose(feats.sentence[b].numpy(), ref_sent, atol=1e-4)
        assert torch.all(feats.words[b, :, n:] == 0)
    assert torch.all(feats.words[2] == 0) and torch.all(feats.sentence[2] == 0)
    # layer 0 is context free: the same word gets the same vector in any context
    alone = encoder([["cats"]])
    torch.testing.assert_close(alone.words[0, 0, 0], feats.words[1, 0, 1])
    assert not torch.allclose(alone.words[0, 1, 0], feats.words[1, 1, 1])


def test_frozen_by_default_and_fine_tunable(elmo_files):
    _, opt_path, w_path = elmo_files
    frozen = ElmoEncoder.from_files(opt_path, w_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen([["a", "b"]]).words.requires_grad
    tuned = ElmoEncoder.from_files(opt_path, w_path, requires_grad=True)
    tuned([["a", "b"]]).words.sum().backward()
    assert tuned.char_cnn.projection.weight.grad.abs().sum() > 0
    assert tuned.backward_layers[1].weight.grad.abs().sum() > 0


def test_missing_files_say_what_to_put_where(tmp_path, elmo_files):
    _, opt_path, _ = elmo_files
    missing = tmp_path / "nope" / "weights.hdf5"
    with pytest.raises(WeightsNotFoundError, match=r"weight file not found: .*nope/weights\.hdf5.*Put"):
        ElmoEncoder.from_files(opt_path, missing)
    with pytest.raises(WeightsNotFoundError) as err:
        ElmoEncoder.from_pretrained("small", cache_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "elmo" / "elmo_2x1024_128_2048cnn_1xhighway_options.json") in msg
    assert "https://allennlp.s3.amazonaws.com/models/elmo/2x1024_128_2048cnn_1xhighway/" in msg
    with pytest.raises(ConfigError, match="unknown ELMo model"):
        ElmoEncoder.from_pretrained("huge", cache_dir=tmp_path)


def test_from_pretrained_downloads_into_cache(tmp_path, elmo_files, monkeypatch):
    _, opt_path, w_path = elmo_files
    fetched = []

    def fake_download(url: str, dst: str) -> None:
        fetched.append((url, dst))
        Path(dst).write_bytes((opt_path if url.endswith(".json") else w_path).read_bytes())

    monkeypatch.setattr(elmo_mod.torch.hub, "download_url_to_file", fake_download)
    enc = ElmoEncoder.from_pretrained("original", cache_dir=tmp_path, download=True)
    stem = "2x4096_512_2048cnn_2xhighway"
    assert [u for u, _ in fetched] == [
        f"https://allennlp.s3.amazonaws.com/models/elmo/{stem}/elmo_{stem}_options.json",
        f"https://allennlp.s3.amazonaws.com/models/elmo/{stem}/elmo_{stem}_weights.hdf5",
    ]
    assert Path(fetched[1][1]) == tmp_path / "elmo" / f"elmo_{stem}_weights.hdf5"
    assert enc([["x"]]).words.shape == (1, 3, 1, 10)
    ElmoEncoder.from_pretrained("original", cache_dir=tmp_path)  # now offline from the cache
    assert len(fetched) == 2


def test_malformed_files_raise_data_format_error(tmp_path, elmo_files):
    arrays = elmo_files[0]
    bad_opts = json.loads(json.dumps(OPTIONS))
    del bad_opts["lstm"]["projection_dim"]
    opt_path, w_path = write_elmo(tmp_path, arrays, bad_opts)
    with pytest.raises(DataFormatError, match=r"options\.json: missing option 'projection_dim'"):
        ElmoEncoder.from_files(opt_path, w_path)
    opt_path.write_text('{"lstm": {\n  "dim": 7,,\n}}')
    with pytest.raises(DataFormatError, match=r"options\.json:2: invalid JSON"):
        ElmoOptions.from_json(opt_path)

    partial = {k: v for k, v in arrays.items() if k != "CNN_high_1/W_carry"}
    opt_path, w_path = write_elmo(tmp_path, partial)
    with pytest.raises(DataFormatError, match=r"weights\.hdf5: missing dataset 'CNN_high_1/W_carry'"):
        ElmoEncoder.from_files(opt_path, w_path)
    wrong = dict(arrays, **{"CNN_proj/b_proj": np.zeros(6, np.float32)})
    opt_path, w_path = write_elmo(tmp_path, wrong)
    with pytest.raises(DataFormatError, match=r"'CNN_proj/b_proj' has shape \(6,\), the options file implies \(5,\)"):
        ElmoEncoder.from_files(opt_path, w_path)
    w_path.write_text("not hdf5")
    with pytest.raises(DataFormatError, match="cannot read as HDF5"):
        ElmoEncoder.from_files(opt_path, w_path)
