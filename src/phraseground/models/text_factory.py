"""Build a text encoder from a model config (learned, ELMo, transformer or word-table based)."""
from __future__ import annotations

from typing import Any

from ..encoders.text import LearnedTextEncoder, TextEncoder, Vocab
from ..errors import ConfigError
from ..extras import require

TEXT_ENCODERS = ("learned", "elmo", "transformer", "word_table")


def create_text_encoder(kind: str, vocab: list[str] | None, dim: int, args: dict[str, Any],
                        spec: dict[str, Any] | None = None, word_layers: list[int] | None = None) -> TextEncoder:
    """Text encoder ``kind``; ``vocab`` is needed by the learned kind (words of the training captions).

    ``word_layers``: the word layers the model will ask for (None: any); the BiLSTM encoders
    (learned, word table) build their output projection only when layer 1 is among them.

    With ``spec`` (what ``encoder.spec()`` returned, kept in a checkpoint) the ELMo and
    word-table encoders are rebuilt with placeholder weights of the right shapes, without
    reading their files; the checkpoint's state dict then fills them in.
    """
    if kind == "elmo":
        require("h5py", "paper", "the ELMo text encoder")
    elif kind == "transformer":
        require("transformers", "hf", "the transformer text encoder")
    if spec and kind == "elmo":
        from ..encoders.elmo import ElmoEncoder

        return ElmoEncoder.from_spec(spec, requires_grad=bool(args.get("requires_grad", False)))
    if kind in ("learned", "word_table") and word_layers is not None:
        args = {**args, "context_words": 1 in word_layers}
    if spec and kind == "word_table":
        from ..encoders.word_vectors import WordVectorEncoder

        return WordVectorEncoder.from_spec(spec, **{k: args[k] for k in _TABLE_ENCODER_ARGS if k in args})
    if kind == "learned":
        if vocab is None:
            raise ConfigError("the learned text encoder needs a vocabulary (built from the training captions)")
        return LearnedTextEncoder(Vocab(vocab[2:] if vocab[:2] == ["<pad>", "<unk>"] else vocab), dim=dim, **args)
    if kind == "elmo":  # args: options_file + weight_file, or name (+ cache_dir, download)
        from ..encoders.elmo import ElmoEncoder

        args = dict(args)
        if "options_file" in args or "weight_file" in args:
            return ElmoEncoder.from_files(args.pop("options_file", ""), args.pop("weight_file", ""), **args)
        return ElmoEncoder.from_pretrained(**args)
    if kind == "transformer":  # args: name_or_path (a local model directory or a cached hub name), pooling, freeze
        from ..encoders.transformer_text import TransformerTextEncoder

        return TransformerTextEncoder.from_pretrained(**args)
    if kind == "word_table":
        return _word_table_encoder(vocab, args)
    raise ConfigError(f"unknown text encoder {kind!r}; known: {', '.join(TEXT_ENCODERS)}")


_TABLE_READER_ARGS = ("vocab_file", "unk_token", "limit")
_TABLE_ENCODER_ARGS = ("lstm", "lstm_hidden", "freeze", "context_words")


def _word_table_encoder(vocab: list[str] | None, args: dict[str, Any]) -> TextEncoder:
    """``WordVectorEncoder`` over the table at ``args["path"]``, restricted to ``vocab`` when given.

    Args keys: ``path`` (required), reader options ``vocab_file``, ``unk_token``, ``limit``,
    encoder options ``lstm``, ``lstm_hidden``, ``freeze``.
    """
    from ..encoders.word_vectors import WordVectorEncoder, load_word_vectors

    unknown = sorted(set(args) - {"path", *_TABLE_READER_ARGS, *_TABLE_ENCODER_ARGS})
    if "path" not in args or unknown:
        raise ConfigError(f"word_table text encoder: needs 'path' (a word2vec/GloVe/.npy table); "
                          f"unknown option(s) {unknown}; known: {['path', *_TABLE_READER_ARGS, *_TABLE_ENCODER_ARGS]}")
    words = [w for w in vocab if w not in ("<pad>", "<unk>")] if vocab is not None else None
    if words is not None and args.get("unk_token"):
        words.append(args["unk_token"])  # keep the table's unknown-word row when restricting it
    table = load_word_vectors(args["path"], restrict_to=words, **{k: args[k] for k in _TABLE_READER_ARGS if k in args})
    return WordVectorEncoder(table, **{k: args[k] for k in _TABLE_ENCODER_ARGS if k in args})
