"""Text encoders: the common interface and the trainable ones (learned word embeddings, BiLSTM).

Every encoder maps B whitespace-tokenised texts to
  * per-word features from K layers, ``words``: (B, K, T, E), and
  * J sentence vectors to be linearly combined by the model, ``sentence``: (B, J, S)
    (for a BiLSTM: the last forward state and the first backward state),
with a (B, T) boolean ``mask`` of real tokens.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD, UNK = "<pad>", "<unk>"


@dataclass
class TextFeatures:
    words: torch.Tensor  # (B, K, T, E)
    sentence: torch.Tensor  # (B, J, S)
    mask: torch.Tensor  # (B, T) bool


class Vocab:
    """Word list with ``<pad>`` = 0 and ``<unk>`` = 1; counts unknown words it meets."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unknown_seen = 0

    @classmethod
    def build(cls, texts: Iterable[list[str]], min_count: int = 1) -> "Vocab":
        """Vocabulary of every word seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for toks in texts for w in toks)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: list[list[str]], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return padded ids (B, T) and lengths (B,); unknown words map to ``<unk>`` and are counted."""
        lengths = torch.tensor([max(len(t), 1) for t in tokens], dtype=torch.long)
        ids = torch.zeros(len(tokens), int(lengths.max()) if tokens else 1, dtype=torch.long)
        for b, toks in enumerate(tokens):
            for t, w in enumerate(toks):
                i = self.stoi.get(w)
                if i is None:
                    self.unknown_seen += 1
                    i = 1
                ids[b, t] = i
        return ids.to(device) if device is not None else ids, lengths


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class TextEncoder(nn.Module):
    """Base class; subclasses set ``num_layers`` (K), ``word_dim`` (E), ``sentence_dim`` (S)."""

    num_layers: int
    word_dim: int
    sentence_dim: int
    num_sentence_vectors: int

    def forward(self, tokens: list[list[str]]) -> TextFeatures:  # pragma: no cover - interface
        raise NotImplementedError


class LearnedTextEncoder(TextEncoder):
    """Learned word embeddings followed by an optional trainable BiLSTM.

    Layers returned per word: layer 0 = the word's own embedding (context free); layer 1 =
    the BiLSTM output (concatenated directions projected back to E) when ``lstm`` is on.
    Sentence vectors: the last forward and the first backward BiLSTM state (J = 2); without
    the LSTM, the mean of the word embeddings (J = 1).
    """

    def __init__(self, vocab: Vocab, dim: int = 256, lstm: bool = True, lstm_hidden: int | None = None) -> None:
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(len(vocab), dim, padding_idx=0)
        hidden = lstm_hidden or dim
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True) if lstm else None
        self.lstm_proj = nn.Linear(2 * hidden, dim) if lstm else None
        self.num_layers = 2 if lstm else 1
        self.word_dim = dim
        self.sentence_dim = hidden if lstm else dim
        self.num_sentence_vectors = 2 if lstm else 1

    def forward(self, tokens: list[list[str]]) -> TextFeatures:
        device = self.embedding.weight.device
        ids, lengths = self.vocab.encode(tokens, device)
        mask = lengths_mask(lengths.to(device), ids.shape[1])
        emb = self.embedding(ids)  # (B, T, E)
        if self.lstm is None:
            m = mask.unsqueeze(-1).float()
            sent = (emb * m).sum(1) / m.sum(1).clamp(min=1)  # (B, E)
            return TextFeatures(emb.unsqueeze(1), sent.unsqueeze(1), mask)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, T, 2H)
        ctx = self.lstm_proj(out)  # (B, T, E)
        words = torch.stack([emb, ctx], dim=1)  # (B, 2, T, E)
        sent = h_n.transpose(0, 1)  # (B, 2, H): last forward state, last (=first word) backward state
        return TextFeatures(words, sent, mask)
