"""Build a text encoder from a model config (learned, ELMo, transformer or word-table based)."""
from __future__ import annotations

from typing import Any

from ..encoders.text import LearnedTextEncoder, TextEncoder, Vocab
from ..errors import ConfigError

TEXT_ENCODERS = ("learned", "elmo", "transformer", "word_table")


def create_text_encoder(kind: str, vocab: list[str] | None, dim: int, args: dict[str, Any]) -> TextEncoder:
    """Text encoder ``kind``; ``vocab`` is needed by the learned kind (words of the training captions)."""
    if kind == "learned":
        if vocab is None:
            raise ConfigError("the learned text encoder needs a vocabulary (built from the training captions)")
        return LearnedTextEncoder(Vocab(vocab[2:] if vocab[:2] == ["<pad>", "<unk>"] else vocab), dim=dim, **args)
    if kind == "elmo":
        from ..encoders.elmo import ElmoTextEncoder

        return ElmoTextEncoder(**args)
    if kind == "transformer":
        from ..encoders.transformer_text import TransformerTextEncoder

        return TransformerTextEncoder(**args)
    if kind == "word_table":
        from ..encoders.word_vectors import WordTableTextEncoder

        return WordTableTextEncoder(**args)
    raise ConfigError(f"unknown text encoder {kind!r}; known: {', '.join(TEXT_ENCODERS)}")
