"""Simple Recurrent Unit (Lei & Zhang, 2017) in plain PyTorch (CPU and GPU, no compiled kernel).

One layer, for input x_t (size n) and hidden size H, with the heavy matrix product done for
all time steps at once and only element-wise work in the recurrence::

    x̃_t = W x_t
    f_t = σ(W_f x_t + b_f)                      forget gate
    r_t = σ(W_r x_t + b_r)                      reset (highway) gate
    c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ x̃_t        c_0 = 0
    h_t = r_t ⊙ tanh(c_t) + (1 - r_t) ⊙ s_t       s_t = x_t if n == H else W_s x_t

This is the formulation of the ``sru`` package's ``v1`` cell (``use_tanh=True``, skip term on,
no rescaling) that DSVE-Loc used. Dropout as in the paper: a variational mask (one per
sequence, shared over time) on the layer input before the linear transformation
(``rnn_dropout``), and on the output of every layer but the last (``dropout``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .products import linear_rows


def _variational_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, T, C) -> (B, 1, C) inverted-dropout mask shared over time."""
    keep = 1.0 - p
    return x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep) / keep


class SRULayer(nn.Module):
    """One SRU layer (see the module docstring for the recurrence).

    Args:
        input_size: n, size of x_t.
        hidden_size: H, size of c_t and h_t.
        rnn_dropout: variational dropout on the input before the linear transformation.
        highway_bias: initial value of b_r (negative values favour the skip term at first).
    """

    def __init__(self, input_size: int, hidden_size: int, rnn_dropout: float = 0.0, highway_bias: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.rnn_dropout = input_size, hidden_size, rnn_dropout
        self.k = 3 if input_size == hidden_size else 4  # x̃, f, r (+ projected skip term)
        self.weight = nn.Parameter(torch.empty(input_size, self.k * hidden_size))
        self.bias = nn.Parameter(torch.zeros(2 * hidden_size))  # b_f, b_r
        bound = math.sqrt(3.0 / input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        with torch.no_grad():
            self.bias[hidden_size:].fill_(highway_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layer over a batch of sequences, from c_0 = 0.

        Args:
            x: (B, T, n) inputs.

        Returns:
            h (B, T, H) outputs at every step and c (B, T, H) cell states at every step.
        """
        b, t, _ = x.shape
        hs = self.hidden_size
        if self.training and self.rnn_dropout > 0:
            x_in = x * _variational_mask(x, self.rnn_dropout)
        else:
            x_in = x
        u = linear_rows(x_in, self.weight.t()).view(b, t, self.k, hs)  # (B, T, k·H) -> (B, T, k, H); oneDNN on CPU
        parts = u.unbind(2)  # k × (B, T, H); one backward (a stack), not k zero-filled (B, T, k, H) gradients
        f = torch.sigmoid(parts[1] + self.bias[:hs])
        r = torch.sigmoid(parts[2] + self.bias[hs:])
        # lerp takes one dtype: under autocast the projection is bf16/fp16 and the gates (fp32 bias) fp32
        x_tilde = parts[0].to(f.dtype)
        skip = (x if self.k == 3 else parts[3]).to(r.dtype)
        c = f.new_zeros(b, hs)
        cells = []
        for f_t, x_t in zip(f.unbind(1), x_tilde.unbind(1)):  # unbind: one backward op, not T zero-filled slices
            c = torch.lerp(x_t, c, f_t)  # f_t c + (1 − f_t) x_t as one operation (forward + backward 2.4× faster)
            cells.append(c)
        cs = torch.stack(cells, dim=1)  # (B, T, H)
        h = torch.lerp(skip, torch.tanh(cs), r)  # r tanh(c) + (1 − r) skip
        return h, cs


class SRU(nn.Module):
    """A stack of SRU layers over padded batches of sequences.

    Args:
        input_size: size of the input vectors.
        hidden_size: size of every layer's output.
        num_layers: stacked layers.
        dropout: variational dropout on the output of every layer but the last.
        rnn_dropout: variational dropout on each layer's input before its linear transformation.
        highway_bias: initial reset-gate bias.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 rnn_dropout: float = 0.0, highway_bias: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an SRU needs at least one layer, got {num_layers}")
        self.dropout = dropout
        self.layers = nn.ModuleList(
            SRULayer(input_size if i == 0 else hidden_size, hidden_size, rnn_dropout, highway_bias)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode right-padded sequences.

        The recurrence only looks back, so padding after a sequence never changes its outputs.

        Args:
            x: (B, T, n) inputs, sequence b occupying steps [0, lengths[b]).
            lengths: (B,) sequence lengths (all T when None).

        Returns:
            outputs (B, T, H) of the last layer, and (B, H) its output at each sequence's last step.
        """
        h = x
        for i, layer in enumerate(self.layers):
            h, _ = layer(h)
            if self.training and self.dropout > 0 and i + 1 < len(self.layers):
                h = h * _variational_mask(h, self.dropout)
        if lengths is None:
            return h, h[:, -1]
        last = (lengths.to(h.device).long() - 1).clamp_min(0)  # (B,)
        return h, h[torch.arange(h.shape[0], device=h.device), last]
