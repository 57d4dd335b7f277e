"""benchmarks/train_step.py's "products alone" figure: the recorder captures exactly the
products the FLOP counter counts, and the replay runs each of them on operands of the
recorded layouts."""
from __future__ import annotations

import importlib.util
import itertools
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_step():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    lin = nn.Linear(4, 5)
    lstm = nn.LSTM(5, 6, batch_first=True)
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)

    def step():
        h = conv(x).flatten(2).transpose(1, 2)  # (2, 16, 4)
        y = lin(h)  # (2, 16, 5)
        out, _ = lstm(y)
        (torch.bmm(out, out.transpose(1, 2)).sum() + y.relu().sum()).backward()
    return step


def test_recorder_captures_what_the_flop_counter_counts():
    bench = _bench()
    step = _tiny_step()
    with FlopCounterMode(display=False, custom_mapping=bench.RNN_FLOPS) as fc, bench.ProductRecorder() as rec:
        step()
    counted = 0
    for (func, _), (args, kwargs, count) in rec.calls.items():
        with FlopCounterMode(display=False, custom_mapping=bench.RNN_FLOPS) as one:
            func(*args, **kwargs)
        assert one.get_total_flops() > 0, func  # only products are recorded
        counted += count * one.get_total_flops()
    assert counted == fc.get_total_flops() > 0
    names = {str(func.overloadpacket) for func, _ in rec.calls}
    assert {"aten.convolution", "aten.convolution_backward", "aten.bmm", "aten.mkldnn_rnn_layer",
            "aten.mkldnn_rnn_layer_backward"} <= names, names
    assert not {"aten.relu", "aten.sum"} & names


def test_replay_counts_each_call_and_uses_the_recorded_layouts(monkeypatch):
    bench = _bench()
    a = torch.randn(64, 32)
    b = torch.randn(48, 32).t()  # a transposed (non-contiguous) operand
    with bench.ProductRecorder() as rec:
        for _ in range(3):
            torch.mm(a, b)
    calls = rec.calls
    assert len(calls) == 1 and next(iter(calls.values()))[2] == 3  # one layout, three calls
    seen = []
    (func, spec), (args, kwargs, count) = next(iter(calls.items()))

    def spy(*fresh, **kw):
        seen.append([(t.shape, t.stride()) for t in fresh])
        return func(*fresh, **kw)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=itertools.count().__next__))  # 1 s a run
    assert bench.products_alone_ms({(spy, spec): [args, kwargs, 1]}, repeats=3) == 1e3
    assert bench.products_alone_ms({(spy, spec): [args, kwargs, 3]}, repeats=3) == 3e3  # × the call count
    assert seen[0] == [(a.shape, a.stride()), (b.shape, b.stride())]
    assert len(seen) == 2 * (2 + 3)  # two untimed and three timed runs per replay
    fresh = bench._fresh(b)
    assert fresh.stride() == b.stride() and fresh.abs().max() <= 1 and not torch.equal(fresh, b)
