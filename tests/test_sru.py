"""The plain-PyTorch SRU against a hand-computed case and a step-by-step scalar reference."""
from __future__ import annotations

import math

import pytest
import torch

from phraseground.models.sru import SRU, SRULayer


def reference_layer(layer: SRULayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SRU recurrence one sample, one step and one unit at a time (float64, no vectorisation)."""
    w = layer.weight.detach().double()
    bias = layer.bias.detach().double()
    n, hs = layer.input_size, layer.hidden_size
    b_count, t_count, _ = x.shape
    h_out = torch.zeros(b_count, t_count, hs, dtype=torch.float64)
    c_out = torch.zeros(b_count, t_count, hs, dtype=torch.float64)
    for b in range(b_count):
        c = [0.0] * hs
        for t in range(t_count):
            xt = x[b, t].double()
            for j in range(hs):
                def proj(gate: int) -> float:  # column (j, gate) of the (n, H, k) weight layout
                    return float(sum(xt[i] * w[i, gate * hs + j] for i in range(n)))

                x_tilde = proj(0)
                f = 1 / (1 + math.exp(-(proj(1) + float(bias[j]))))
                r = 1 / (1 + math.exp(-(proj(2) + float(bias[hs + j]))))
                skip = float(xt[j]) if layer.k == 3 else proj(3)
                c[j] = f * c[j] + (1 - f) * x_tilde
                h_out[b, t, j] = r * math.tanh(c[j]) + (1 - r) * skip
                c_out[b, t, j] = c[j]
    return h_out, c_out


def test_hand_computed_single_unit():
    layer = SRULayer(1, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))  # x̃ = x, f = r = σ(0) = 0.5
    h, c = layer(torch.tensor([[[2.0], [4.0]]]))
    # c1 = 0.5 * 0 + 0.5 * 2 = 1, h1 = 0.5 tanh(1) + 0.5 * 2; c2 = 0.5 * 1 + 0.5 * 4 = 2.5
    assert c.flatten().tolist() == pytest.approx([1.0, 2.5])
    assert h.flatten().tolist() == pytest.approx([0.5 * math.tanh(1) + 1.0, 0.5 * math.tanh(2.5) + 2.0])


@pytest.mark.parametrize("n_in,hidden", [(3, 3), (4, 3)])  # k = 3 (identity skip) and k = 4 (projected skip)
def test_layer_matches_reference_recurrence(n_in, hidden):
    torch.manual_seed(0)
    layer = SRULayer(n_in, hidden, highway_bias=-0.5)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, n_in)
    h, c = layer(x)
    h_ref, c_ref = reference_layer(layer, x)
    torch.testing.assert_close(h.double(), h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.double(), c_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_in,hidden", [(3, 3), (4, 3)])
def test_layer_under_bf16_autocast_is_close_to_the_reference(n_in, hidden):
    torch.manual_seed(0)
    layer = SRULayer(n_in, hidden)
    x = torch.randn(2, 5, n_in)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, c = layer(x)
    assert h.dtype == c.dtype == torch.float32  # the gates' dtype: the projection alone is bf16
    h_ref, c_ref = reference_layer(layer, x)
    torch.testing.assert_close(h.double(), h_ref, atol=3e-2, rtol=3e-2)  # bf16 products: 8-bit mantissas
    torch.testing.assert_close(c.double(), c_ref, atol=3e-2, rtol=3e-2)


def test_stack_matches_reference_and_picks_each_sequence_last_step():
    torch.manual_seed(1)
    sru = SRU(4, 3, num_layers=3, dropout=0.3, rnn_dropout=0.3).eval()  # eval: no dropout
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 2, 4])
    out, last = sru(x, lengths)
    ref = x
    for layer in sru.layers:
        ref, _ = reference_layer(layer, ref.float())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, out[torch.arange(3), lengths - 1])
    assert torch.equal(sru(x)[1], out[:, -1])


def test_padding_never_changes_a_sequence():
    torch.manual_seed(2)
    sru = SRU(4, 5, num_layers=2).eval()
    short = torch.randn(1, 3, 4)
    padded = torch.cat([short, torch.randn(1, 4, 4) * 10], dim=1)  # garbage after the sequence
    _, last_alone = sru(short)
    out, last_padded = sru(padded, torch.tensor([3]))
    torch.testing.assert_close(last_padded, last_alone)
    torch.testing.assert_close(out[:, :3], sru(short)[0])


def test_dropout_masks_are_shared_over_time_and_off_in_eval():
    torch.manual_seed(3)
    layer = SRULayer(6, 6, rnn_dropout=0.5)
    with torch.no_grad():  # x̃ = x, gates fixed: h depends on the masked input only through x̃
        layer.weight.zero_()
        layer.weight[:, :6].copy_(torch.eye(6))
        layer.bias.fill_(-30.0)  # f ≈ 0 (c = x̃), r ≈ 0 (h = skip = unmasked x)
    x = torch.ones(4, 5, 6)
    layer.train()
    _, c = layer(x)
    dropped = c == 0  # (B, T, H): a dropped input channel is dropped at every step
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    torch.testing.assert_close(c[~dropped], torch.full_like(c[~dropped], 2.0))  # inverted dropout: 1 / (1 - p)
    layer.eval()
    torch.testing.assert_close(layer(x)[1], torch.ones_like(c))


def test_gradients_reach_every_parameter():
    torch.manual_seed(4)
    sru = SRU(5, 4, num_layers=2, dropout=0.2, rnn_dropout=0.2)
    _, last = sru(torch.randn(3, 7, 5), torch.tensor([7, 3, 1]))
    last.sum().backward()
    for name, p in sru.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    torch.manual_seed(5)
    sru = SRU(4, 3, num_layers=2).eval()
    x = torch.randn(2, 5, 4)
    lengths = torch.tensor([5, 2])
    out_cpu, last_cpu = sru(x, lengths)
    out_gpu, last_gpu = sru.cuda()(x.cuda(), lengths.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_gpu.cpu(), last_cpu, atol=1e-5, rtol=1e-5)
