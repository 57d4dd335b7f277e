"""Training-step speed of each model against the machine's matrix-product speed, in one run.

    OMP_NUM_THREADS=2 python benchmarks/train_step.py [--models mlmcs dsve attnreg] [--repeats 20]
        [--set mlmcs:model_args.attention=softmax ...] [--json out.json]

For each model at its synthetic default config (``configs/<model>_synthetic.yaml``): batches
drawn exactly as the training loop draws them (a small synthetic benchmark, the real frozen
backbone's features, the default batch size), then

* the step's arithmetic, forward + backward, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products and convolutions — what it counts; element-wise work is not counted) of the
  formulation the model ships, plus the products inside oneDNN's fused RNN layer (the CPU LSTM
  of padded batches), which the counter does not know: 2·B·T·(4H·E + 4H·H) forward, twice that
  backward, padded positions included because they are computed;
* the step time (forward, backward, optimizer step): warm, median over ``--repeats`` batches;
* the achieved GFLOP/s and the ratio ``step time / (FLOPs / matrix-product GFLOP/s)``: how many
  times slower the step runs than the same FLOPs would take as one large matrix product in the
  same dtype (``--mm-size``², fp32 or bf16) by the faster of the GEMM libraries PyTorch carries
  (``torch.mm``, which is MKL on x86, and oneDNN; on AMD CPUs MKL runs at about half of oneDNN's
  speed, and the ratio to each is printed too), timed after every fourth step of the same run, so
  that both see the same machine load (the median of each is used; after every step, the
  product's 50 MB would evict the step's working set from the cache before each step, and
  the step would be timed cold, as training never runs it); the same figures in process
  CPU time ("ratio (CPU time)"), which on a loaded machine is the steadier one (with one thread
  it is close to the wall time on a free core; with several it adds up the threads);
* "products alone": every product the FLOP counter counts in the step (forward and backward),
  recorded with its operands' shapes, strides and dtypes and replayed one by one on fresh
  operands, each warm and in cache, summed, and its ratio to the FLOP limit: what the step's
  products cost at the step's own shapes with nothing else in between. It bounds the ratio any
  rewrite of the non-product work (element-wise passes, Python, autograd) could reach without
  changing the products themselves.

Threads, torch version, CPU and the machine load (``os.getloadavg``) are printed with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from phraseground.encoders.text import Vocab  # noqa: E402
from phraseground.models.registry import create_model  # noqa: E402
from phraseground.train.config import load_config  # noqa: E402
from phraseground.encoders.text import tokenize  # noqa: E402
from phraseground.train.data import build_feature_set, ensure_synthetic, load_split, make_batch  # noqa: E402
from phraseground.train.loop import _epoch_items, make_optimizer  # noqa: E402


def _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """Forward products of one direction of a fused RNN layer: the input and recurrent
    projections at every (padded) position."""
    positions = input_shape[0] * input_shape[1]
    return 2 * positions * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


def _rnn_layer_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """Backward of one direction: the input and hidden gradients and both weight gradients."""
    return 2 * _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape)


RNN_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops,
             torch.ops.aten.mkldnn_rnn_layer_backward: _rnn_layer_backward_flops}


PROBE_EVERY = 4  # steps between two timings of the reference product


class ProductRecorder(TorchDispatchMode):
    """Records every product the FLOP counter counts (matrix products, convolutions and their
    backward, the fused RNN layers) with the shapes, strides and dtypes of its tensor arguments,
    so that :func:`products_alone_ms` can replay each one alone."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, list] = {}  # (op, argument specs) -> [args, kwargs, count]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in flop_registry or func.overloadpacket in RNN_FLOPS:
            spec = tuple(("T", tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else ("V", repr(a))
                         for a in (*args, *(kwargs or {}).values()))
            entry = self.calls.setdefault((func, spec), [args, kwargs or {}, 0])
            entry[2] += 1
        return func(*args, **(kwargs or {}))


def _fresh(a):
    """A tensor of ``a``'s shape, strides and dtype with values in [-1, 1) (no denormals), or ``a``."""
    if not isinstance(a, torch.Tensor):
        return a
    t = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype)
    return t.uniform_(-1, 1) if t.is_floating_point() else t.zero_()


def products_alone_ms(calls: dict[tuple, list], repeats: int = 5) -> float:
    """The time, in ms, of the recorded products run one by one on fresh operands of the same
    layouts, each warm (median of ``repeats`` after two untimed runs): what the step's products
    cost at the step's shapes with nothing else in between and their operands in cache."""
    total = 0.0
    for (func, _), (args, kwargs, count) in calls.items():
        fresh = [_fresh(a) for a in args]
        fresh_kw = {k: _fresh(a) for k, a in kwargs.items()}
        for _ in range(2):
            func(*fresh, **fresh_kw)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            func(*fresh, **fresh_kw)
            times.append(time.perf_counter() - t)
        total += count * statistics.median(times)
    return 1e3 * total


class MatmulProbe:
    """An n×n by n×n matrix product in one dtype, by each fp32/bf16 GEMM library PyTorch carries on
    this machine: ``torch.mm`` (MKL on x86 CPUs) and oneDNN's inner product (the kernel behind
    PyTorch's CPU convolutions and ``torch.ops.mkldnn._linear_pointwise``). On an AMD EPYC, MKL
    runs an AVX2 path at about half of what oneDNN's AVX-512 kernels reach, so the machine's
    limit is the faster of the two; both are reported."""

    def __init__(self, n: int, dtype: torch.dtype) -> None:
        self.n, self.dtype = n, dtype
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        self.products = {"torch.mm": lambda: a @ b}
        onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
        if onednn is not None and torch.backends.mkldnn.is_available():
            self.products["oneDNN"] = lambda: onednn(a, b, None, "none", [], "")  # a bᵀ: the same FLOPs
        for f in self.products.values():
            for _ in range(2):
                f()

    def time(self) -> dict[str, tuple[float, float]]:
        """{library: (wall, CPU) seconds of one product}."""
        out = {}
        for name, f in self.products.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            out[name] = (time.perf_counter() - t, time.process_time() - c)
        return out

    def gflops(self, seconds: float) -> float:
        return 2 * self.n**3 / seconds / 1e9


def load_label() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _step(model, optimizer, batch, autocast: str) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    return out["loss"]


def bench_model(name: str, overrides: list[str], data_root: Path, repeats: int, autocast: str, probe: MatmulProbe) -> dict:
    cfg = load_config(ROOT / "src" / "phraseground" / "configs" / f"{name}_synthetic.yaml", overrides)
    cfg.data.root = str(data_root)
    tc = cfg.train
    samples = load_split(cfg.data, "train")
    vocab = Vocab.build((tokenize(c.text) for s in samples for c in s.captions), tc.vocab_min_count).itos
    torch.manual_seed(tc.seed)
    model = create_model(cfg.model, vocab=vocab, config=cfg.model_args)
    fs = build_feature_set(model, samples, tc.feature_batch, "cpu", False)
    model.on_epoch_start(0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc)  # the training loop's
    items = _epoch_items(samples, model.supervision, tc, 0)
    bs = tc.batch_size
    n_batches = len(items) // bs
    if n_batches < 1:
        raise SystemExit(f"{name}: fewer than {bs} training items; raise --images")
    # the timed steps cycle over these batches, whose FLOPs are counted one by one
    batches = [make_batch(fs, items[k * bs:(k + 1) * bs]) for k in range(min(n_batches, 4))]
    n_batches = len(batches)

    flops, alone = [], []  # forward + backward (the optimizer step is not counted)
    for batch in batches:
        with FlopCounterMode(display=False, custom_mapping=RNN_FLOPS) as fc, ProductRecorder() as rec:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
                out = model(batch)
            out["loss"].backward()
        flops.append(fc.get_total_flops())
        optimizer.zero_grad(set_to_none=True)
        alone.append(products_alone_ms(rec.calls))
    for k in range(3):  # warm-up
        _step(model, optimizer, batches[k % n_batches], autocast)
    times, cpu_times = [], []
    mm_times = {lib: [] for lib in probe.products}
    mm_cpu = {lib: [] for lib in probe.products}
    for k in range(repeats):  # steps and reference products interleaved: the same machine load for both
        t, c = time.perf_counter(), time.process_time()
        _step(model, optimizer, batches[k % n_batches], autocast)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        if k % PROBE_EVERY == PROBE_EVERY - 1:  # not after every step: the product evicts the step's data from cache
            for lib, (w, c) in probe.time().items():
                mm_times[lib].append(w)
                mm_cpu[lib].append(c)
    t_med = statistics.median(times)
    f_mean = sum(flops[k % n_batches] for k in range(repeats)) / repeats
    tokens = [len(t) for t in batches[0].tokens]
    return {"model": name, "batch_size": bs, "max_tokens": max(tokens), "mean_tokens": statistics.mean(tokens),
            "gflop_per_step": f_mean / 1e9, "step_ms": 1e3 * t_med, "step_ms_min": 1e3 * min(times),
            "gflops": f_mean / t_med / 1e9,
            "products_alone_ms": sum(alone[k % n_batches] for k in range(repeats)) / repeats,
            "matmul_gflops_by_library": {k: probe.gflops(statistics.median(x)) for k, x in mm_times.items()},
            "matmul_cpu_gflops_by_library": {k: probe.gflops(statistics.median(x)) for k, x in mm_cpu.items()},
            "step_cpu_ms": 1e3 * statistics.median(cpu_times),
            "overrides": overrides, "autocast": autocast, "load": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlmcs", "dsve", "attnreg"])
    ap.add_argument("--repeats", type=int, default=40, help="timed steps per model (median)")
    ap.add_argument("--images", type=int, default=700, help="synthetic benchmark size (its train split feeds the batches)")
    ap.add_argument("--data", default=None, help="a synthetic benchmark folder to reuse (default: a temporary one)")
    ap.add_argument("--mm-size", type=int, default=2048)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="bf16: the forward under CPU bf16 autocast, reference matrix product in bf16")
    ap.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                    help="a config override for one model, e.g. mlmcs:model_args.attention=softmax")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    mm_dtype = torch.bfloat16 if args.autocast == "bf16" else torch.float32
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="pg-bench-")
        data_root = Path(tmp.name) / "synthetic"
    else:
        data_root = Path(args.data)
    cfg0 = load_config(ROOT / "src" / "phraseground" / "configs" / "mlmcs_synthetic.yaml",
                       [f"data.synthetic_images={args.images}"])
    ensure_synthetic(cfg0.data, data_root)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
          f"CPU {platform.processor() or platform.machine()}, load (1/5/15 min) {load_label()}")
    probe = MatmulProbe(args.mm_size, mm_dtype)
    rows = []
    for name in args.models:
        overrides = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == name]
        rows.append(bench_model(name, overrides, data_root, args.repeats, args.autocast, probe))
        r = rows[-1]
        libs = r["matmul_gflops_by_library"]
        r["matmul_library"] = max(libs, key=libs.get)  # the machine's limit: the faster library
        r["matmul_gflops"] = libs[r["matmul_library"]]
        r["matmul_cpu_gflops"] = r["matmul_cpu_gflops_by_library"][r["matmul_library"]]
        print(f"  {name}: {r['gflop_per_step']:.2f} GFLOP/step, {r['step_ms']:.1f} ms/step, {r['gflops']:.1f} GFLOP/s; "
              f"matrix product " + ", ".join(f"{k} {x:.1f}" for k, x in libs.items()) + f" GFLOP/s; load {load_label()}",
              flush=True)
    dt = str(mm_dtype).replace("torch.", "")
    names = list(probe.products)
    print(f"\nreference: a {args.mm_size}² {dt} matrix product by each library ({', '.join(names)}), timed after every "
          f"{PROBE_EVERY}th step (median); the FLOP limit and the ratio use the faster one, 'ratio (<library>)' each\n")
    print("| model | batch | GFLOP/step (fwd+bwd) | step ms (median) | GFLOP/s | "
          + " | ".join(f"{k} GFLOP/s ({dt})" for k in names)
          + " | FLOP-limit ms | **ratio** | " + " | ".join(f"ratio ({k})" for k in names)
          + " | products alone ms | ratio (products alone) | step CPU ms | ratio (CPU time) |")
    print("|---" * (11 + 2 * len(names)) + "|")
    for r in rows:
        limit_ms = r["gflop_per_step"] / r["matmul_gflops"] * 1e3
        r["limit_ms"] = limit_ms
        r["ratio"] = r["step_ms"] / limit_ms
        r["ratio_by_library"] = {k: r["step_ms"] * x / (r["gflop_per_step"] * 1e3) for k, x in r["matmul_gflops_by_library"].items()}
        r["ratio_cpu"] = r["step_cpu_ms"] / (r["gflop_per_step"] / r["matmul_cpu_gflops"] * 1e3)
        r["ratio_products_alone"] = r["products_alone_ms"] / limit_ms
        print(f"| {r['model']} | {r['batch_size']} | {r['gflop_per_step']:.2f} | {r['step_ms']:.1f} | {r['gflops']:.1f} | "
              + " | ".join(f"{r['matmul_gflops_by_library'][k]:.1f}" for k in names)
              + f" | {limit_ms:.1f} | **{r['ratio']:.2f}** | " + " | ".join(f"{r['ratio_by_library'][k]:.2f}" for k in names)
              + f" | {r['products_alone_ms']:.1f} | {r['ratio_products_alone']:.2f}"
              + f" | {r['step_cpu_ms']:.1f} | {r['ratio_cpu']:.2f} |")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load": os.getloadavg(),
                "matmul": {"dtype": dt, "size": args.mm_size}, "autocast": args.autocast}
        Path(args.json).write_text(json.dumps({"meta": meta, "models": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
