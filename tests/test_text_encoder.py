"""The learned text encoder: the padded two-direction BiLSTM against nn.LSTM on the packed batch
(values and gradients), and word layers returned on request."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from phraseground.encoders.text import LearnedTextEncoder, Vocab, bidirectional_lstm


def _packed_reference(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h_n


@pytest.mark.parametrize("lengths", [[5, 1, 3, 5], [1], [2, 2], [7, 4, 1, 6, 2]])
def test_bidirectional_lstm_matches_packed_lstm_values_and_gradients(lengths):
    torch.manual_seed(len(lengths))
    lstm = nn.LSTM(6, 4, batch_first=True, bidirectional=True)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), 6, requires_grad=True)
    w_out = torch.randn(len(lengths), int(lengths.max()), 8)
    w_h = torch.randn(2, len(lengths), 4)

    def grads(out, h_n):
        loss = (out * w_out).sum() + (h_n * w_h).sum()
        return torch.autograd.grad(loss, [x, *lstm.parameters()])

    ref_out, ref_h = _packed_reference(lstm, x, lengths)
    out, h_n = bidirectional_lstm(lstm, x, lengths)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_n, ref_h, rtol=1e-5, atol=1e-6)
    assert (out[torch.arange(int(lengths.max()))[None] >= lengths[:, None]] == 0).all()  # padded positions: 0
    for g, g_ref in zip(grads(out, h_n), grads(ref_out, ref_h)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    none, h_only = bidirectional_lstm(lstm, x, lengths, outputs=False)
    assert none is None
    torch.testing.assert_close(h_only, ref_h, rtol=1e-5, atol=1e-6)


def test_bidirectional_lstm_refuses_other_lstm_kinds():
    with pytest.raises(ValueError, match="one-layer"):
        bidirectional_lstm(nn.LSTM(3, 2, num_layers=2, batch_first=True, bidirectional=True), torch.zeros(1, 2, 3),
                           torch.tensor([2]))


def test_learned_encoder_returns_the_word_layers_asked_for():
    torch.manual_seed(0)
    enc = LearnedTextEncoder(Vocab(["a", "red", "star", "left"]), dim=8)
    tokens = [["a", "red", "star"], ["left"], ["a", "blue", "star", "left"]]
    full = enc(tokens)
    assert full.words.shape == (3, 2, 4, 8)
    only_words = enc(tokens, [0])
    swapped = enc(tokens, [1, 0])
    torch.testing.assert_close(only_words.words[:, 0], full.words[:, 0])
    torch.testing.assert_close(swapped.words, full.words[:, [1, 0]])
    torch.testing.assert_close(only_words.sentence, full.sentence)
    # the sentence states are the BiLSTM's on the packed batch
    ids, lengths = enc.vocab.encode(tokens)
    _, h_n = _packed_reference(enc.lstm, enc.embedding(ids), lengths)
    torch.testing.assert_close(full.sentence, h_n.transpose(0, 1))


def test_encoder_without_context_words_has_no_output_projection():
    torch.manual_seed(0)
    full = LearnedTextEncoder(Vocab(["a", "red", "star"]), dim=8)
    lean = LearnedTextEncoder(Vocab(["a", "red", "star"]), dim=8, context_words=False)
    assert lean.lstm_proj is None and not any(k.startswith("lstm_proj") for k in lean.state_dict())
    lean.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("lstm_proj")})
    tokens = [["a", "red", "star"], ["star"]]
    torch.testing.assert_close(lean(tokens, [0]).sentence, full(tokens).sentence)
    with pytest.raises(ValueError, match="context_words"):
        lean(tokens, [0, 1])
