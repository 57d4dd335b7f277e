"""ELMo (Peters et al., 2018) without allennlp: the official ``options.json`` + HDF5 weights.

The biLM is a character CNN (char embedding, max-pooled convolutions, highway layers, linear
projection) followed by ``n_layers`` bidirectional LSTMs whose cells have a projected, clipped
state, with residual connections between LSTM layers. Parameters keep the TensorFlow layout of
the weight file (``x @ W``, LSTM gates in the order i, j, f, o, forget bias + 1 at run time,
highway gate on the transform branch), so every loaded tensor equals its dataset in the file,
except the char embedding (a zero row 0 is prepended for padding) and the convolutions
(``(1, width, char_dim, n)`` stored as Conv1d ``(n, char_dim, width)``).

Outputs per whitespace token (K = n_layers + 1): layer 0 is the char-CNN token vector
duplicated to ``2 * projection_dim`` (as ELMo does), layer k the [forward; backward] output of
LSTM layer k (residual included). Sentence vectors (J = 2 * n_layers, S = projection_dim): per
layer, the forward output at the last word and the backward output at the first word (the
words proper, not ``<S>``/``</S>``); zeros for an empty text.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataFormatError, WeightsNotFoundError
from .text import TextEncoder, TextFeatures, lengths_mask

# Character ids, ELMo's scheme: UTF-8 bytes 0..255 plus five special characters; every id is
# then shifted by one so that 0 marks a padding token.
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
NUM_CHAR_IDS = PAD_CHAR + 2  # 262 rows: padding row 0 + 261 characters

ELMO_URL = "https://allennlp.s3.amazonaws.com/models/elmo"
#: released English biLMs: name -> file stem (files ``elmo_<stem>_options.json`` / ``_weights.hdf5``)
ELMO_MODELS = {
    "original": "2x4096_512_2048cnn_2xhighway",
    "original-5.5b": "2x4096_512_2048cnn_2xhighway_5.5B",
    "medium": "2x2048_256_2048cnn_1xhighway",
    "small": "2x1024_128_2048cnn_1xhighway",
}


@dataclass(frozen=True)
class ElmoOptions:
    """The fields of an ELMo ``options.json`` that define the network."""

    lstm_dim: int
    projection_dim: int
    n_layers: int
    cell_clip: float | None
    proj_clip: float | None
    use_skip_connections: bool
    activation: str
    char_dim: int
    filters: tuple[tuple[int, int], ...]
    n_highway: int
    max_chars: int = 50

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @classmethod
    def from_json(cls, path: str | Path) -> "ElmoOptions":
        """Read an official options file; malformed content raises DataFormatError."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"invalid JSON: {e.msg}", e.lineno) from None
        try:
            lstm, cnn = raw["lstm"], raw["char_cnn"]
            opts = cls(
                lstm_dim=int(lstm["dim"]),
                projection_dim=int(lstm["projection_dim"]),
                n_layers=int(lstm["n_layers"]),
                cell_clip=lstm.get("cell_clip"),
                proj_clip=lstm.get("proj_clip"),
                use_skip_connections=bool(lstm.get("use_skip_connections", False)),
                activation=str(cnn["activation"]),
                char_dim=int(cnn["embedding"]["dim"]),
                filters=tuple((int(w), int(n)) for w, n in cnn["filters"]),
                n_highway=int(cnn["n_highway"]),
                max_chars=int(cnn.get("max_characters_per_token", 50)),
            )
        except KeyError as e:
            raise DataFormatError(path, f"missing option {e.args[0]!r} (not an ELMo options file?)") from None
        except (TypeError, ValueError) as e:
            raise DataFormatError(path, f"malformed option value: {e}") from None
        if opts.activation not in ("relu", "tanh"):
            raise DataFormatError(path, f"unknown char_cnn activation {opts.activation!r} (relu or tanh)")
        if max((w for w, _ in opts.filters), default=0) > opts.max_chars:
            raise DataFormatError(path, "a char_cnn filter is wider than max_characters_per_token")
        return opts


def word_char_ids(word: str, max_chars: int = 50) -> list[int]:
    """ELMo character ids of one word (already shifted by one): bow, UTF-8 bytes, eow, padding."""
    body = list(word.encode("utf-8", "ignore")[: max_chars - 2])
    ids = [BOW_CHAR, *body, EOW_CHAR] + [PAD_CHAR] * (max_chars - len(body) - 2)
    return [i + 1 for i in ids]


def _boundary_char_ids(char: int, max_chars: int) -> list[int]:
    ids = [BOW_CHAR, char, EOW_CHAR] + [PAD_CHAR] * (max_chars - 3)
    return [i + 1 for i in ids]


def batch_char_ids(tokens: list[list[str]], max_chars: int = 50) -> torch.Tensor:
    """Character ids of B texts with ``<S>``/``</S>`` added: (B, T + 2, max_chars), 0 = padding.

    ``T = max(1, longest text)``; text b holds ``<S>`` at 0, its words at 1..n, ``</S>`` at n + 1.
    """
    width = max([len(t) for t in tokens] + [1]) + 2
    ids = torch.zeros(len(tokens), width, max_chars, dtype=torch.long)
    for b, words in enumerate(tokens):
        rows = [_boundary_char_ids(BOS_CHAR, max_chars)]
        rows += [word_char_ids(w, max_chars) for w in words]
        rows.append(_boundary_char_ids(EOS_CHAR, max_chars))
        ids[b, : len(rows)] = torch.tensor(rows)
    return ids


class Highway(nn.Module):
    """One highway layer, TensorFlow layout: ``g = σ(x Wc + bc)``, ``y = g·relu(x Wt + bt) + (1−g)·x``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        k = dim**-0.5
        self.W_transform = nn.Parameter(torch.empty(dim, dim).uniform_(-k, k))
        self.b_transform = nn.Parameter(torch.zeros(dim))
        self.W_carry = nn.Parameter(torch.empty(dim, dim).uniform_(-k, k))
        self.b_carry = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(x @ self.W_carry + self.b_carry)
        return gate * F.relu(x @ self.W_transform + self.b_transform) + (1 - gate) * x


class CharCNN(nn.Module):
    """Context-free token vectors from character ids: (N, max_chars) -> (N, projection_dim)."""

    def __init__(self, opts: ElmoOptions) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(NUM_CHAR_IDS, opts.char_dim) * 0.1)
        self.convs = nn.ModuleList(nn.Conv1d(opts.char_dim, n, w) for w, n in opts.filters)
        self.highways = nn.ModuleList(Highway(opts.n_filters) for _ in range(opts.n_highway))
        self.projection = nn.Linear(opts.n_filters, opts.projection_dim)
        self.activation = torch.tanh if opts.activation == "tanh" else F.relu

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(char_ids, self.embedding).transpose(1, 2)  # (N, char_dim, max_chars)
        x = torch.cat([self.activation(conv(x).amax(dim=-1)) for conv in self.convs], dim=-1)  # (N, F)
        for highway in self.highways:
            x = highway(x)
        return self.projection(x)  # (N, P)


class ProjectedLSTM(nn.Module):
    """One direction of an LSTM layer with a projected state and cell/projection clipping.

    TensorFlow ``LSTMCell(num_proj, cell_clip, proj_clip, forget_bias=1)`` layout:
    ``[x, h] @ W + b`` split into gates i, j, f, o; ``c = σ(f + 1)·c + σ(i)·tanh(j)`` clipped to
    ±cell_clip; ``h = (σ(o)·tanh(c)) @ W_P`` clipped to ±proj_clip.
    """

    forget_bias = 1.0

    def __init__(self, input_size: int, cell_size: int, proj_size: int, cell_clip: float | None,
                 proj_clip: float | None, reverse: bool = False) -> None:
        super().__init__()
        k = cell_size**-0.5
        self.weight = nn.Parameter(torch.empty(input_size + proj_size, 4 * cell_size).uniform_(-k, k))  # W_0
        self.bias = nn.Parameter(torch.zeros(4 * cell_size))  # B
        self.proj_weight = nn.Parameter(torch.empty(cell_size, proj_size).uniform_(-k, k))  # W_P_0
        self.input_size, self.cell_size, self.proj_size = input_size, cell_size, proj_size
        self.cell_clip, self.proj_clip, self.reverse = cell_clip, proj_clip, reverse

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run over (B, T, I) inputs with a (B, T) mask of real steps (padding at the end).

        Each text starts from a zero state at its own first (forward) or last (reverse) real
        step; outputs at padded steps are 0. Returns (B, T, P).
        """
        B, T, _ = x.shape
        gates_x = x @ self.weight[: self.input_size] + self.bias  # (B, T, 4C)
        w_h = self.weight[self.input_size :]
        h = x.new_zeros(B, self.proj_size)
        c = x.new_zeros(B, self.cell_size)
        out = x.new_zeros(B, T, self.proj_size)
        for t in reversed(range(T)) if self.reverse else range(T):
            i, j, f, o = (gates_x[:, t] + h @ w_h).chunk(4, dim=-1)  # 4 × (B, C)
            c_new = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
            if self.cell_clip:
                c_new = c_new.clamp(-self.cell_clip, self.cell_clip)
            h_new = (torch.sigmoid(o) * torch.tanh(c_new)) @ self.proj_weight  # (B, P)
            if self.proj_clip:
                h_new = h_new.clamp(-self.proj_clip, self.proj_clip)
            step = mask[:, t, None]  # (B, 1)
            c = torch.where(step, c_new, c)
            h = torch.where(step, h_new, h)
            out[:, t] = h_new * step
        return out


class ElmoEncoder(TextEncoder):
    """Frozen (by default) ELMo biLM as a TextEncoder; build with :meth:`from_files`.

    The constructor makes a randomly initialised network of the given shape; the pretrained
    weights are loaded by :meth:`from_files` / :meth:`from_pretrained` / :func:`load_elmo_weights`.
    """

    def __init__(self, options: ElmoOptions, requires_grad: bool = False) -> None:
        super().__init__()
        o = options
        self.options = o
        self.char_cnn = CharCNN(o)
        sizes = [o.projection_dim] * o.n_layers
        self.forward_layers = nn.ModuleList(
            ProjectedLSTM(s, o.lstm_dim, o.projection_dim, o.cell_clip, o.proj_clip) for s in sizes
        )
        self.backward_layers = nn.ModuleList(
            ProjectedLSTM(s, o.lstm_dim, o.projection_dim, o.cell_clip, o.proj_clip, reverse=True) for s in sizes
        )
        self.num_layers = o.n_layers + 1
        self.word_dim = 2 * o.projection_dim
        self.sentence_dim = o.projection_dim
        self.num_sentence_vectors = 2 * o.n_layers
        self.requires_grad_(requires_grad)

    @classmethod
    def from_files(cls, options_file: str | Path, weight_file: str | Path, requires_grad: bool = False) -> "ElmoEncoder":
        """Build from an official options JSON and HDF5 weight file (frozen unless ``requires_grad``)."""
        for kind, path in (("options", options_file), ("weight", weight_file)):
            if not Path(path).is_file():
                url = _urls(ELMO_MODELS["original"])[0 if kind == "options" else 1]
                raise WeightsNotFoundError(
                    f"ELMo {kind} file not found: {path}. Put an official ELMo {kind} file there "
                    f"(the original model's is {url})."
                )
        encoder = cls(ElmoOptions.from_json(options_file), requires_grad=requires_grad)
        load_elmo_weights(encoder, weight_file)
        return encoder

    @classmethod
    def from_pretrained(cls, name: str = "original", cache_dir: str | Path | None = None,
                        download: bool = False, requires_grad: bool = False) -> "ElmoEncoder":
        """Build a released biLM from ``<cache_dir>/elmo/`` (default ``$PHRASEGROUND_HOME`` or
        ``~/.cache/phraseground``), downloading the two files first when ``download`` is set."""
        if name not in ELMO_MODELS:
            raise ConfigError(f"unknown ELMo model {name!r}; known: {', '.join(ELMO_MODELS)}")
        stem = ELMO_MODELS[name]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        paths = (root / "elmo" / f"elmo_{stem}_options.json", root / "elmo" / f"elmo_{stem}_weights.hdf5")
        for path, url in zip(paths, _urls(stem)):
            if path.is_file():
                continue
            if not download:
                raise WeightsNotFoundError(
                    f"ELMo '{name}' file not found: {path}. Download {url} and put it there, "
                    "or allow downloading (download=True)."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path))  # writes a temp file, then moves it
        return cls.from_files(*paths, requires_grad=requires_grad)

    def spec(self) -> dict:
        """The network's options: a checkpoint rebuilds the encoder without the ELMo files."""
        return {"options": dataclasses.asdict(self.options)}

    @classmethod
    def from_spec(cls, spec: dict, requires_grad: bool = False) -> "ElmoEncoder":
        """Randomly initialised encoder of ``spec``'s shape, to load a state dict into."""
        opts = dict(spec["options"])
        opts["filters"] = tuple((int(w), int(n)) for w, n in opts["filters"])
        return cls(ElmoOptions(**opts), requires_grad=requires_grad)

    def forward(self, tokens: list[list[str]], word_layers: list[int] | None = None) -> TextFeatures:
        device = self.char_cnn.embedding.device
        o = self.options
        ids = batch_char_ids(tokens, o.max_chars).to(device)  # (B, T + 2, C)
        B, L, C = ids.shape
        n_words = torch.tensor([len(t) for t in tokens], device=device)
        seq_mask = lengths_mask(n_words + 2, L)  # (B, T + 2) real steps incl. <S>, </S>
        tok = self.char_cnn(ids.view(B * L, C)).view(B, L, -1) * seq_mask[..., None]  # (B, T + 2, P)
        layers = [torch.cat([tok, tok], dim=-1)]
        x_f = x_b = tok
        for k, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            h_f, h_b = fwd(x_f, seq_mask), bwd(x_b, seq_mask)  # (B, T + 2, P) each
            if k > 0 and o.use_skip_connections:
                h_f, h_b = h_f + x_f, h_b + x_b
            layers.append(torch.cat([h_f, h_b], dim=-1))
            x_f, x_b = h_f, h_b
        mask = lengths_mask(n_words, L - 2)  # (B, T)
        chosen = layers if word_layers is None else [layers[k] for k in word_layers]
        words = torch.stack(chosen, dim=1)[:, :, 1:-1] * mask[:, None, :, None]  # (B, K', T, 2P)
        P = o.projection_dim
        last = n_words.clamp(min=1)  # position of the last word in the <S>-prefixed sequence
        has_words = (n_words > 0)[:, None]  # (B, 1)
        rows = torch.arange(B, device=device)
        sentence = []
        for layer in layers[1:]:
            sentence += [layer[rows, last, :P] * has_words, layer[:, 1, P:] * has_words]  # (B, P) each
        return TextFeatures(words, torch.stack(sentence, dim=1), mask)  # sentence: (B, J, P)


def default_cache_dir() -> Path:
    """``$PHRASEGROUND_HOME`` if set, else ``~/.cache/phraseground``."""
    return Path(os.environ.get("PHRASEGROUND_HOME", Path.home() / ".cache" / "phraseground"))


def _urls(stem: str) -> tuple[str, str]:
    base = f"{ELMO_URL}/{stem}/elmo_{stem}"
    return f"{base}_options.json", f"{base}_weights.hdf5"


def _dataset(fin: h5py.File, key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """Read one dataset, checking that it exists and has the shape the options imply."""
    if key not in fin:
        raise DataFormatError(path, f"missing dataset '{key}' (not an ELMo weight file in the official layout?)")
    arr = np.asarray(fin[key][...], dtype=np.float32)
    if arr.shape != shape:
        raise DataFormatError(path, f"dataset '{key}' has shape {arr.shape}, the options file implies {shape}")
    return torch.from_numpy(arr)


@torch.no_grad()
def load_elmo_weights(encoder: ElmoEncoder, weight_file: str | Path) -> None:
    """Copy an official HDF5 weight file into ``encoder`` (shapes checked against its options)."""
    path = Path(weight_file)
    o = encoder.options
    try:
        fin = h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(path, f"cannot read as HDF5: {e}") from None
    with fin:
        cnn = encoder.char_cnn
        cnn.embedding[0] = 0.0
        cnn.embedding[1:] = _dataset(fin, "char_embed", (NUM_CHAR_IDS - 1, o.char_dim), path)
        for i, (conv, (width, n)) in enumerate(zip(cnn.convs, o.filters)):
            w = _dataset(fin, f"CNN/W_cnn_{i}", (1, width, o.char_dim, n), path)
            conv.weight.copy_(w[0].permute(2, 1, 0))  # (n, char_dim, width)
            conv.bias.copy_(_dataset(fin, f"CNN/b_cnn_{i}", (n,), path))
        nf = o.n_filters
        for k, hw in enumerate(cnn.highways):
            for name, shape in (("W_transform", (nf, nf)), ("b_transform", (nf,)), ("W_carry", (nf, nf)), ("b_carry", (nf,))):
                getattr(hw, name).copy_(_dataset(fin, f"CNN_high_{k}/{name}", shape, path))
        cnn.projection.weight.copy_(_dataset(fin, "CNN_proj/W_proj", (nf, o.projection_dim), path).T)
        cnn.projection.bias.copy_(_dataset(fin, "CNN_proj/b_proj", (o.projection_dim,), path))
        for direction, layers in enumerate((encoder.forward_layers, encoder.backward_layers)):
            for k, lstm in enumerate(layers):
                key = f"RNN_{direction}/RNN/MultiRNNCell/Cell{k}/LSTMCell"
                lstm.weight.copy_(_dataset(fin, f"{key}/W_0", tuple(lstm.weight.shape), path))
                lstm.bias.copy_(_dataset(fin, f"{key}/B", tuple(lstm.bias.shape), path))
                lstm.proj_weight.copy_(_dataset(fin, f"{key}/W_P_0", tuple(lstm.proj_weight.shape), path))
