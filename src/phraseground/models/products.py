"""Products of row vectors with a weight matrix, run where the CPU is fastest.

On CPU, PyTorch's fp32 matrix product is MKL's, and its convolutions are oneDNN's. On the AMD
EPYC (Zen 5) these figures were measured on, MKL takes an AVX2 path: a 2048² product runs at
~160–185 GFLOP/s on 2 threads, where oneDNN's AVX-512 kernels reach ~350–410 (README "Training
speed"). A 1×1 convolution over channels-last maps is the same product, (rows, C) × (C, K),
so the products over many rows (regions, words of a batch) are written as such convolutions:
``mlmcs``'s mappings and attention, ``attnreg``'s fusion MLP, the SRU's input projection. The
same values (up to the summation order) and gradients, tested against the matrix products.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv(nn.Linear):
    """A 1×1 convolution holding its weights as a Linear layer's, (K, C) and (K,): applied to
    (B, C, H, W) maps it returns (B, K, H, W) in the input's memory format (channels-last in,
    channels-last out: the output's pixels are (B·H·W, K) rows in memory; off the CPU, the Linear
    layer over the pixels, whose output is channels-last); applied to (B, N, C)
    rows, :func:`linear_rows`; applied to (..., C) vectors, the Linear layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.device.type != "cpu":  # cuBLAS's fp32 product, not cuDNN's (TF32 by default)
            return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)  # channels-last out
        if x.dim() == 4:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)  # (K, C) -> (K, C, 1, 1) view
        if x.dim() == 3:
            return linear_rows(x, self.weight, self.bias)
        return super().forward(x)


@functools.lru_cache(maxsize=256)
def _row_split(rows: int, default: int) -> int:
    """How many "images" a 1×1 convolution over ``rows`` rows gets: the fewest that leave at
    most 256 rows each and divide ``rows``, with at least 32 rows each; else ``default``.
    oneDNN's 1×1 convolution runs fastest at about 200–256 rows per image: for the SRU's
    3328 × 256 → 768 projection, forward + backward took 15.0 ms as 128 images of 26 rows,
    11.3–11.6 ms as 16 of 208 or 13 of 256, and 13.1 ms as one image (measured, 2 threads)."""
    for g in range(max(1, -(-rows // 256)), rows // 32 + 1):
        if rows % g == 0:
            return g
    return default


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """(..., N, C) rows -> a (G, C, N', 1) channels-last view of the same (contiguous) memory,
    G·N' rows in all (G from :func:`_row_split`)."""
    c = x.shape[-1]
    rows = x.numel() // c
    g = _row_split(rows, rows // x.shape[-2])
    return x.view(g, rows // g, 1, c).permute(0, 3, 1, 2)  # (G, N', 1, C) -> (G, C, N', 1)


def _on_onednn(*tensors: torch.Tensor) -> bool:
    """Whether the product of these tensors runs as a convolution: on CPU, none of them empty."""
    return all(t.device.type == "cpu" and t.numel() > 0 for t in tensors)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for rows x (G, N, C), weight (K, C): (G, N, K), contiguous;
    on CPU a 1×1 convolution over a channels-last view of x's rows (autograd's convolution
    backward gives the gradients)."""
    if not _on_onednn(x, weight):
        return F.linear(x, weight, bias)
    y = F.conv2d(_as_maps(x.contiguous()), weight[:, :, None, None], bias)  # (G', K, N', 1), channels-last
    return y.permute(0, 2, 3, 1).view(*x.shape[:-1], weight.shape[0])  # (G', N', 1, K) -> (G, N, K): the same rows


def rows_summed(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ over rows of gᵀ x for g (G, N, K) and x (G, N, C): (K, C), the weight gradient of
    :func:`linear_rows`."""
    k, c = g.shape[-1], x.shape[-1]
    if not _on_onednn(g, x):
        return g.flatten(0, -2).t() @ x.flatten(0, -2)  # (K, G·N) × (G·N, C)
    w = x.new_empty((k, c, 1, 1))  # only its shape is read
    _, dw, _ = torch.ops.aten.convolution_backward(_as_maps(g.contiguous()), _as_maps(x.contiguous()), w, None,
                                                   [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])
    return dw.view(k, c)  # (K, C, 1, 1) -> (K, C)
