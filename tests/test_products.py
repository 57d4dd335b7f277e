"""The row products of models/products.py (1×1 convolutions on CPU) against plain matrix
products: values, gradients and output layouts, on random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phraseground.models.products import PointwiseConv, linear_rows, rows_summed


@pytest.mark.parametrize("g,n,c,k", [(3, 7, 5, 4), (2, 16, 9, 13), (1, 1, 3, 2), (128, 26, 8, 6), (7, 37, 4, 3), (2, 0, 3, 2), (2, 3, 4, 0)])
def test_linear_rows_and_rows_summed_equal_matrix_products(g, n, c, k):
    gen = torch.Generator().manual_seed(g * n + k)
    x = torch.randn(g, n, c, generator=gen)
    w = torch.randn(k, c, generator=gen)
    dy = torch.randn(g, n, k, generator=gen)
    y = linear_rows(x, w)
    assert y.shape == (g, n, k) and y.is_contiguous()
    torch.testing.assert_close(y, torch.einsum("gnc,kc->gnk", x, w), atol=1e-5, rtol=1e-5)
    # a sum of G·N products in fp32, any order: within the rounding bound γ ≤ G·N·eps of Σ|terms| of the float64 sum
    bound = g * n * torch.finfo(torch.float32).eps * torch.einsum("gnk,gnc->kc", dy.abs().double(), x.abs().double())
    error = (rows_summed(dy, x).double() - torch.einsum("gnk,gnc->kc", dy.double(), x.double())).abs()
    assert rows_summed(dy, x).shape == (k, c) and bool((error <= bound).all())


def test_linear_rows_accepts_a_non_contiguous_input():
    x = torch.randn(4, 5, 6).transpose(0, 1)  # (5, 4, 6), not contiguous
    w = torch.randn(3, 6)
    torch.testing.assert_close(linear_rows(x, w), x @ w.t(), atol=1e-5, rtol=1e-5)


def test_pointwise_conv_equals_linear_on_maps_and_vectors_with_gradients():
    torch.manual_seed(0)
    conv = PointwiseConv(6, 4)
    x = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    assert y.shape == (2, 4, 3, 5) and y.is_contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().clone().requires_grad_()
    w_ref, b_ref = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref.permute(0, 2, 3, 1), w_ref, b_ref).permute(0, 3, 1, 2)  # per pixel: W x + b
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    for got, want in [(x.grad, x_ref.grad), (conv.weight.grad, w_ref.grad), (conv.bias.grad, b_ref.grad)]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    vec = torch.randn(7, 6)
    torch.testing.assert_close(conv(vec), F.linear(vec, conv.weight, conv.bias))
    rows = torch.randn(2, 7, 6)
    torch.testing.assert_close(conv(rows), F.linear(rows, conv.weight, conv.bias), atol=1e-5, rtol=1e-5)


def test_row_split_divides_the_rows_into_images_of_at_most_256():
    from phraseground.models.products import _row_split

    assert _row_split(3328, 128) == 13  # 13 × 256
    assert _row_split(24576, 96) == 96  # 96 × 256
    assert _row_split(200, 8) == 1  # one image of 200 rows
    assert _row_split(3331, 1) == 1  # a prime: no split leaves 32–256 rows, the default
    assert _row_split(6662, 2) == 2  # 2 × 3331 — the default when no divisor fits
