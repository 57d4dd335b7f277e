"""Hugging Face transformer text encoders (BERT family, or any local model directory).

Words are the whitespace tokens the rest of the toolkit uses: the fast tokenizer splits each
into sub-tokens (``is_split_into_words=True``) and a word's vector is the mean of its
sub-tokens' states, for every hidden layer (K = embeddings + each transformer layer). A word
the tokenizer turns into nothing (e.g. a zero-width space) is replaced by the unknown token
and counted in ``unmatched_words``. One sentence vector (J = 1): the attention-masked mean of
the last layer's states (special tokens included, as sentence-transformers does) or the state
of the first ([CLS]) token.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from ..errors import ConfigError, PhrasegroundError, WeightsNotFoundError
from .text import TextEncoder, TextFeatures, lengths_mask

POOLINGS = ("mean", "cls")


class TransformerTextEncoder(TextEncoder):
    """A pretrained transformer as a TextEncoder; build with :meth:`from_pretrained`.

    Args:
        model: the transformer (e.g. ``BertModel``), returning hidden states.
        tokenizer: its fast tokenizer (``word_ids`` is needed to align words).
        pooling: sentence vector, ``"mean"`` or ``"cls"``.
        freeze: no gradients for the transformer, which then stays in eval mode (no dropout)
            whatever ``train()`` says.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, pooling: str = "mean", freeze: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown sentence pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs word_ids()")
        self.model, self.tokenizer, self.pooling, self.frozen = model, tokenizer, pooling, freeze
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers + 1
        self.word_dim = self.sentence_dim = cfg.hidden_size
        self.num_sentence_vectors = 1
        self.max_length = min(tokenizer.model_max_length, getattr(cfg, "max_position_embeddings", 10**9))
        self.unmatched_words = 0
        model.requires_grad_(not freeze)
        self.train(self.training)  # a frozen transformer goes to eval mode

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, pooling: str = "mean", freeze: bool = True,
                        local_files_only: bool = True) -> "TransformerTextEncoder":
        """Load model and fast tokenizer from a local directory or the Hugging Face cache.

        Offline by default (``local_files_only=True``); a missing model raises
        :class:`WeightsNotFoundError` saying what to put where.
        """
        try:
            # add_prefix_space: byte-level BPE tokenizers (RoBERTa, GPT-2) need it for pre-split words
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_files_only,
                                                      add_prefix_space=True)
            model = AutoModel.from_pretrained(str(name_or_path), local_files_only=local_files_only)
        except OSError as e:
            where = "locally" if local_files_only else "locally or on the Hugging Face hub"
            raise WeightsNotFoundError(
                f"Hugging Face model {str(name_or_path)!r} not found {where}: put a model directory "
                "(config.json, the weights, the tokenizer files) at that path, or use a hub id already "
                f"in the Hugging Face cache (HF_HOME). Details: {e}"
            ) from None
        return cls(model, tokenizer, pooling=pooling, freeze=freeze)

    def train(self, mode: bool = True) -> "TransformerTextEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _tokenize(self, tokens: list[list[str]]):
        """Tokenize pre-split words; words without sub-tokens become the unknown token (counted)."""
        enc = self.tokenizer(tokens, is_split_into_words=True, padding=True, return_tensors="pt")
        fixed = []
        for b, words in enumerate(tokens):
            present = set(enc.word_ids(b))
            fixed.append([w if i in present else self.tokenizer.unk_token for i, w in enumerate(words)])
        missing = sum(a != b for t, f in zip(tokens, fixed) for a, b in zip(t, f))
        if missing:
            self.unmatched_words += missing
            enc = self.tokenizer(fixed, is_split_into_words=True, padding=True, return_tensors="pt")
        if enc["input_ids"].shape[1] > self.max_length:
            raise PhrasegroundError(
                f"a text of {enc['input_ids'].shape[1]} sub-tokens exceeds the limit of {self.max_length} "
                f"of the text model; shorten it"
            )
        return enc

    def forward(self, tokens: list[list[str]], word_layers: list[int] | None = None) -> TextFeatures:
        device = next(self.model.parameters()).device
        enc = self._tokenize(tokens)
        T = max([len(t) for t in tokens] + [1])
        word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(b)] for b in range(len(tokens))])
        pool = (word_ids[:, None, :] == torch.arange(T)[None, :, None]).float()  # (B, T, L)
        pool = (pool / pool.sum(-1, keepdim=True).clamp(min=1)).to(device)
        out = self.model(**{k: v.to(device) for k, v in enc.items()}, output_hidden_states=True)
        states = out.hidden_states if word_layers is None else [out.hidden_states[k] for k in word_layers]
        hidden = torch.stack(states, dim=1)  # (B, K', L, H)
        words = pool[:, None] @ hidden  # (B, K', T, H)
        last = out.hidden_states[-1]  # (B, L, H)
        if self.pooling == "cls":
            sentence = last[:, 0]
        else:
            att = enc["attention_mask"].to(device)[..., None].to(last.dtype)  # (B, L, 1)
            sentence = (last * att).sum(1) / att.sum(1)
        mask = lengths_mask(torch.tensor([len(t) for t in tokens], device=device), T)
        return TextFeatures(words, sentence[:, None], mask)  # sentence: (B, 1, H)
