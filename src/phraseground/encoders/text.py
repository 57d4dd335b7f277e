"""The tokenizer, text encoders' common interface and the trainable encoders (learned word
embeddings, BiLSTM).

:func:`tokenize` is the one tokenizer: whitespace words with punctuation split off
("star." -> "star", "."), case kept, so case-sensitive encoders (ELMo, word2vec) see it; a
lower-case vocabulary folds case when it looks a word up (:class:`Vocab`). Dataset phrase
spans count whitespace words; :func:`tokenize_spans` maps them onto the tokens.

Every encoder maps B tokenised texts to
  * per-word features from K layers, ``words``: (B, K, T, E), and
  * J sentence vectors to be linearly combined by the model, ``sentence``: (B, J, S)
    (for a BiLSTM: the last forward state and the first backward state),
with a (B, T) boolean ``mask`` of real tokens.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

PAD, UNK = "<pad>", "<unk>"

_EDGES = re.compile(r"^(\W*?)(\w.*\w|\w)(\W*)$", re.S)


def _runs(text: str) -> list[str]:
    return [r.group(0) for r in re.finditer(r"(.)\1*", text, re.S)]


def _split_word(word: str) -> tuple[list[str], int, int]:
    """One whitespace word -> its tokens and the (start, end) of its core among them.

    Leading and trailing punctuation become tokens of their own (a run of one character, like
    "...", stays one token); inner punctuation stays ("t-shirt", "man's"), and so does the
    final dot of an abbreviation with inner dots ("U.S."). A word of punctuation only is one
    token and its own core."""
    m = _EDGES.match(word)
    if m is None:  # punctuation only
        return [word], 0, 1
    lead, core, trail = m.groups()
    if trail == "." and "." in core:
        core, trail = core + trail, ""
    head = _runs(lead)
    return [*head, core, *_runs(trail)], len(head), len(head) + 1


def tokenize_words(words: list[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace words -> tokens and, per word, the (start, end) token range of its core (the
    word without the punctuation split off it)."""
    tokens: list[str] = []
    cores = []
    for w in words:
        parts, a, b = _split_word(w)
        cores.append((len(tokens) + a, len(tokens) + b))
        tokens.extend(parts)
    return tokens, cores


def tokenize(text: str) -> list[str]:
    """The project's tokenizer: whitespace words, punctuation split off, case kept."""
    return tokenize_words(text.split())[0]


def tokenize_spans(text: str, spans: Iterable[tuple[int, int]]) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens of ``text`` and its half-open whitespace-word ``spans`` mapped onto them: a span
    runs from its first word's core to its last word's core, so punctuation split off its
    edges ("[a red star]." ) stays outside the phrase. An empty span stays empty.

    Raises:
        ValueError: a span that does not fit the text's words.
    """
    words = text.split()
    tokens, cores = tokenize_words(words)
    out = []
    for s, e in spans:
        if not 0 <= s <= e <= len(words):
            raise ValueError(f"span {s}:{e} does not fit the {len(words)}-word text")
        start = cores[s][0] if s < len(words) else len(tokens)
        out.append((start, cores[e - 1][1]) if e > s else (start, start))
    return tokens, out


@dataclass
class TextFeatures:
    words: torch.Tensor  # (B, K, T, E)
    sentence: torch.Tensor  # (B, J, S)
    mask: torch.Tensor  # (B, T) bool


class Vocab:
    """Word list with ``<pad>`` = 0 and ``<unk>`` = 1; counts unknown words it meets.

    A word is looked up as given, then lower-cased: a lower-case vocabulary (the learned
    ones, GloVe) folds case, a cased one (word2vec) finds cased words first.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unknown_seen = 0

    @classmethod
    def build(cls, texts: Iterable[list[str]], min_count: int = 1) -> "Vocab":
        """Lower-case vocabulary of every word seen at least ``min_count`` times (case folded),
        most frequent first."""
        counts = Counter(w.lower() for toks in texts for w in toks)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def index(self, word: str) -> int | None:
        """Row of ``word`` (as given, else lower-cased), None when unknown."""
        i = self.stoi.get(word)
        return self.stoi.get(word.lower()) if i is None else i

    def __contains__(self, word: str) -> bool:
        return self.index(word) is not None

    def encode(self, tokens: list[list[str]], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return padded ids (B, T) and lengths (B,); unknown words map to ``<unk>`` and are counted."""
        lengths = [max(len(t), 1) for t in tokens]
        width = max(lengths, default=1)
        rows = []
        for toks in tokens:
            row = [self.index(w) for w in toks]
            self.unknown_seen += row.count(None)
            rows.append([1 if i is None else i for i in row] + [0] * (width - len(row)))
        ids = torch.tensor(rows, dtype=torch.long).view(len(tokens), width)  # one tensor built from lists
        return ids.to(device) if device is not None else ids, torch.tensor(lengths, dtype=torch.long)


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class TextEncoder(nn.Module):
    """Base class; subclasses set ``num_layers`` (K), ``word_dim`` (E), ``sentence_dim`` (S)."""

    num_layers: int
    word_dim: int
    sentence_dim: int
    num_sentence_vectors: int

    def forward(self, tokens: list[list[str]], word_layers: list[int] | None = None) -> TextFeatures:  # pragma: no cover
        """Features of B texts; ``words`` holds the layers ``word_layers`` in that order (default:
        all K), so an encoder may skip computing layers nobody asked for."""
        raise NotImplementedError

    def unknown_words(self, words: list[str]) -> list[str]:
        """Words the encoder has no entry for (default: none, an open vocabulary)."""
        return []

    def vocabulary(self) -> list[str] | None:
        """The encoder's word list, or None for an open vocabulary."""
        return None

    def spec(self) -> dict[str, Any]:
        """Plain data from which ``create_text_encoder(..., spec=...)`` rebuilds this encoder with
        placeholder weights (then loaded from a state dict) without reading any file."""
        return {}


class LearnedTextEncoder(TextEncoder):
    """Learned word embeddings followed by an optional trainable BiLSTM.

    Layers returned per word: layer 0 = the word's own embedding (context free); layer 1 =
    the BiLSTM output (concatenated directions projected back to E) when ``lstm`` is on.
    Sentence vectors: the last forward and the first backward BiLSTM state (J = 2); without
    the LSTM, the mean of the word embeddings (J = 1). With ``context_words`` off (a model that
    uses only layer 0) the output projection is not built and layer 1 cannot be asked for.
    """

    def __init__(self, vocab: Vocab, dim: int = 256, lstm: bool = True, lstm_hidden: int | None = None,
                 context_words: bool = True) -> None:
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(len(vocab), dim, padding_idx=0)
        hidden = lstm_hidden or dim
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True) if lstm else None
        self.lstm_proj = nn.Linear(2 * hidden, dim) if lstm and context_words else None
        self.num_layers = 2 if lstm else 1
        self.word_dim = dim
        self.sentence_dim = hidden if lstm else dim
        self.num_sentence_vectors = 2 if lstm else 1

    def unknown_words(self, words: list[str]) -> list[str]:
        return [w for w in words if w not in self.vocab]

    def vocabulary(self) -> list[str] | None:
        return list(self.vocab.itos)

    def forward(self, tokens: list[list[str]], word_layers: list[int] | None = None) -> TextFeatures:
        device = self.embedding.weight.device
        ids, lengths = self.vocab.encode(tokens, device)
        mask = lengths_mask(lengths.to(device), ids.shape[1])
        emb = self.embedding(ids)  # (B, T, E)
        if self.lstm is None:
            m = mask.unsqueeze(-1).float()
            sent = (emb * m).sum(1) / m.sum(1).clamp(min=1)  # (B, E)
            return TextFeatures(emb.unsqueeze(1), sent.unsqueeze(1), mask)  # one layer: the embedding
        layers = list(range(self.num_layers)) if word_layers is None else list(word_layers)
        context = 1 in layers  # the BiLSTM outputs are formed only when asked for
        if context and self.lstm_proj is None:
            raise ValueError("word layer 1 (the BiLSTM outputs) asked of an encoder built without context_words")
        out, h_n = bidirectional_lstm(self.lstm, emb, lengths, outputs=context)  # (B, T, 2H) or None, (2, B, H)
        per_layer = {0: emb, 1: self.lstm_proj(out) if context else None}
        words = torch.stack([per_layer[k] for k in layers], dim=1)  # (B, K', T, E)
        sent = h_n.transpose(0, 1)  # (B, 2, H): last forward state, last (=first word) backward state
        return TextFeatures(words, sent, mask)


def bidirectional_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, outputs: bool = True
                       ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A one-layer bidirectional, batch-first ``lstm`` over padded sequences, with the values
    (and gradients) of running it on the packed batch.

    Args:
        x: (B, T, E) sequences, padded after their ``lengths`` (B,).
        outputs: also return the per-position outputs.

    Returns:
        the outputs (B, T, 2H), zero at padded positions as ``pad_packed_sequence`` leaves them
        (None unless ``outputs``), and the final states (2, B, H): the forward direction's at
        each sequence's last word, the backward direction's at its first.

    Each direction runs once over the whole padded batch, the backward one over every
    sequence reversed within its length, so each recurrence step is one full-batch product
    instead of a packed step of shrinking batch (about 2x faster forward + backward on CPU,
    README "Training speed"); what the padded positions compute is never used.
    """
    if lstm.num_layers != 1 or not lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
        raise ValueError("bidirectional_lstm: a one-layer, bidirectional, batch-first nn.LSTM without projection")
    b, t, _ = x.shape
    lengths = lengths.to(x.device)
    pos = torch.arange(t, device=x.device)[None]  # (1, T)
    real = pos < lengths[:, None]  # (B, T)
    rev = torch.where(real, lengths[:, None] - 1 - pos, pos)  # (B, T): each sequence reversed within its length
    rev_x = rev[..., None].expand(b, t, x.shape[2])
    h0 = x.new_zeros(1, b, lstm.hidden_size)
    rows, last = torch.arange(b, device=x.device), lengths - 1
    outs, finals = [], []
    for weights, seq in zip(lstm.all_weights, (x, x.gather(1, rev_x))):
        out = torch.lstm(seq, (h0, h0), weights, lstm.bias, 1, 0.0, lstm.training, False, True)[0]  # (B, T, H)
        finals.append(out[rows, last])  # (B, H): the state after each sequence's last (reversed: first) word
        outs.append(out)
    h_n = torch.stack(finals)  # (2, B, H)
    if not outputs:
        return None, h_n
    backward = outs[1].gather(1, rev[..., None].expand_as(outs[1]))  # back to the original positions
    out = torch.cat([outs[0], backward], dim=-1).masked_fill(~real[..., None], 0.0)  # (B, T, 2H)
    return out, h_n
