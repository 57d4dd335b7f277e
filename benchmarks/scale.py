"""Scale benchmarks of the data pipeline (issue 9), each printing one JSON line per figure.

    python benchmarks/scale.py memory  [--images 600 2400]   # anonymous-memory peak of `train`, 1 epoch
    python benchmarks/scale.py extract [--images 32]         # store path vs raw backbone forward (VGG16, random)
    python benchmarks/scale.py online  [--images 600]        # cached epoch vs online epoch of the same model
    python benchmarks/scale.py sizes                         # store size of every paper config on its data
    python benchmarks/scale.py vg      [--gb 1.0]            # peak RSS of the streaming Visual Genome reader

Every figure names its conditions (threads, device, torch version, load average). Run with
``OMP_NUM_THREADS`` set; the README's figures were measured as stated there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def conditions(device: str = "cpu") -> dict:
    import torch

    return {"threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads(), "device": device,
            "torch": torch.__version__, "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _status(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmRSS of a process in kB (Linux /proc)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def run_sampled(cmd: list[str], env: dict | None = None, every: float = 0.1) -> tuple[int, dict, float, str]:
    """Run ``cmd``; return its exit code, the peaks of RssAnon/RssFile/VmRSS (MB) sampled every
    ``every`` seconds, the wall time and the stderr tail."""
    t = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None:
        for k, v in _status(proc.pid).items():
            if k in peaks:
                peaks[k] = max(peaks[k], v)
        time.sleep(every)
    reader.join(timeout=5)
    return proc.returncode, {f"peak_{k}_mb": round(v / 1024, 1) for k, v in peaks.items()}, time.time() - t, "".join(err)[-1500:]


# ----------------------------------------------------------------------------- memory
def bench_memory(args: argparse.Namespace) -> None:
    """`train` (mlmcs synthetic default config, 1 epoch) at several dataset sizes, with the
    store (default) and with every feature in RAM (`data.features: memory`, the old way)."""
    from phraseground.data.synthetic import generate_benchmark

    work = Path(args.work or tempfile.mkdtemp(prefix="pg-scale-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for n in args.images:
        data = work / f"synth{n}" / "synthetic"
        if not (data / "test.txt").is_file():
            generate_benchmark(data, n, seed=0)
        for mode in args.modes:
            sets = ["data.root=" + str(data), "train.epochs=1", f"data.features={mode}",
                    "data.feature_store=" + str(work / f"store{n}")]
            cmd = [sys.executable, "-m", "phraseground.app.cli", "train", "--out", str(work / f"run{n}-{mode}"), "--quiet"]
            for s in sets:
                cmd += ["--set", s]
            if mode == "store":  # extract first (not measured: the figure is training's memory)
                subprocess.run([sys.executable, "-m", "phraseground.app.cli", "features", "--quiet",
                                *[a for s in sets for a in ("--set", s)]], env=env, check=True)
            rc, peaks, wall, err = run_sampled(cmd, env)
            emit({"figure": "train_anon_memory", "model": "mlmcs", "config": "mlmcs_synthetic (1 epoch)",
                  "images": n, "train_images": int(n * 0.8), "features": mode, "rc": rc, **peaks,
                  "wall_s": round(wall, 1), **conditions(), **({"stderr": err} if rc else {})})


# ----------------------------------------------------------------------------- extraction
def _write_images(folder: Path, n: int, size: tuple[int, int] = (500, 375)) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i:06d}.jpg"
        if not p.is_file():
            base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            Image.fromarray(base).resize(size, Image.BILINEAR).save(p, quality=90)
        paths.append(p)
    return paths


def bench_extract(args: argparse.Namespace) -> None:
    """images/s of the store path (image files -> decode -> backbone -> fp16 shards on disk) and
    of the raw backbone forward on the same preprocessed batches, in one run."""
    import shutil

    import torch

    from phraseground.data.images import load_image
    from phraseground.device import resolve_device
    from phraseground.feature_store import open_store
    from phraseground.features import FeatureExtractor, FeatureSpec

    device = resolve_device(args.device)
    work = Path(args.work or tempfile.mkdtemp(prefix="pg-extract-"))
    paths = _write_images(work / "images", args.images)
    spec = FeatureSpec("vgg16", "random", ("conv4_1", "conv4_3", "conv5_1", "conv5_3"), 18)  # mlmcs VGG16 paper taps
    extractor = FeatureExtractor(spec, device).eval()
    batch = args.batch_size
    x_batches = [torch.stack([extractor.preprocess(load_image(p)) for p in paths[i : i + batch]])
                 for i in range(0, len(paths), batch)]
    with torch.no_grad():  # warm-up
        extractor(x_batches[0][:1])
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        results = {}
        for rep in range(args.repeats):
            sync()
            t = time.time()
            for x in x_batches:
                extractor.backbone(x.to(device))
            sync()
            raw = time.time() - t
            store_root = work / f"store{rep}"
            shutil.rmtree(store_root, ignore_errors=True)
            t = time.time()
            open_store(store_root, spec, paths, batch_size=batch, workers=args.workers, quiet=True, extractor=extractor,
                       shard_mb=256)
            sync()
            store = time.time() - t
            results.setdefault("raw", []).append(raw)
            results.setdefault("store", []).append(store)
    raw, store = min(results["raw"]), min(results["store"])
    emit({"figure": "extraction_throughput", "backbone": "vgg16 (random weights)", "input_size": 299,
          "taps": list(spec.taps), "grid": 18, "images": len(paths), "image_size": "500x375 JPEG",
          "batch_size": batch, "workers": args.workers,
          "raw_forward_images_per_s": round(len(paths) / raw, 2), "store_images_per_s": round(len(paths) / store, 2),
          "store_over_raw": round(raw / store, 3), "repeats_best_of": args.repeats, **conditions(str(device))})


# ----------------------------------------------------------------------------- online vs cached
def bench_online(args: argparse.Namespace) -> None:
    """Training time of 1 epoch of the same model with cached features (store) and online
    features (frozen backbone in the step), same data, same process."""
    from phraseground.data.synthetic import generate_benchmark
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    work = Path(args.work or tempfile.mkdtemp(prefix="pg-online-"))
    n = args.images
    data = work / f"synth{n}" / "synthetic"
    if not (data / "test.txt").is_file():
        generate_benchmark(data, n, seed=0)
    seconds = {}
    for mode in ("store", "online"):
        cfg = load_config(None, ["model=mlmcs", f"data.root={data}", f"data.features={mode}", "train.epochs=1",
                                 f"data.feature_store={work / 'store'}", "data.val_split=''", "train.checkpoint_every=0"])
        summary = train(cfg, work / f"run-{mode}", progress=False)  # the store is extracted before the epoch's clock
        seconds[mode] = summary["train_seconds"]
    emit({"figure": "online_vs_cached_epoch", "model": "mlmcs (synthetic default)", "train_images": int(n * 0.8),
          "cached_epoch_s": round(seconds["store"], 2), "online_epoch_s": round(seconds["online"], 2),
          "online_over_cached": round(seconds["online"] / seconds["store"], 2), **conditions()})


# ----------------------------------------------------------------------------- store sizes
DATASETS = {  # images of the training set each paper config reads, and of its evaluation sets
    "coco": ("COCO 2014 train (Karpathy train + restval)", 113287),
    "coco_train2014": ("COCO 2014 train", 82783),
    "vg": ("Visual Genome train (Akbari et al. split)", 90599),
    "referit": ("ReferIt train+val (Hu et al.)", 10000),
}
EVAL = {"flickr30k_test": ("Flickr30k Entities test", 1000), "referit_test": ("ReferIt test", 10000),
        "vg_test": ("Visual Genome test (Akbari et al.)", 17478), "coco_test": ("COCO Karpathy test", 5000)}


def bench_sizes(args: argparse.Namespace) -> None:
    """bytes/image of every paper config's store (one forward of a blank image, random weights)
    times the images of its training and evaluation sets."""
    import glob

    from dataclasses import replace

    from phraseground.features import FeatureExtractor
    from phraseground.train.config import load_config

    per_backbone: dict = {}
    for path in sorted(glob.glob(str(ROOT / "src/phraseground/configs/*_paper_*.yaml"))):
        if "_base" in path:
            continue
        name = Path(path).stem
        cfg = load_config(path)
        spec = replace(cfg.model_args.feature_spec(), weights="random")
        key = (spec.backbone, spec.taps, spec.grid)
        if key not in per_backbone:
            shapes = FeatureExtractor(spec).output_shapes()
            per_backbone[key] = (shapes, sum(math.prod(s) for s in shapes.values()) * 2)  # float16
        shapes, bpi = per_backbone[key]
        train_set = "coco" if name.startswith("dsve") else "coco_train2014" if name.endswith("_coco") else \
            "vg" if name.endswith("_vg") else "referit"
        evals = {"dsve": ["coco_test", "vg_test"], "attnreg": ["referit_test"]}.get(cfg.model) or \
            (["flickr30k_test"] if name.endswith("_coco") else ["referit_test", "vg_test"])
        emit({"figure": "store_size", "config": name, "backbone": spec.backbone, "taps": list(spec.taps), "grid": spec.grid,
              "shapes": {t: list(s) for t, s in shapes.items()}, "bytes_per_image": bpi,
              "train_set": DATASETS[train_set][0], "train_images": DATASETS[train_set][1],
              "train_store_gb": round(bpi * DATASETS[train_set][1] / 1e9, 1),
              "eval_stores_gb": {EVAL[e][0]: round(bpi * EVAL[e][1] / 1e9, 2) for e in evals}})


# ----------------------------------------------------------------------------- Visual Genome
def _write_vg(root: Path, gb: float) -> tuple[int, int]:
    """region_descriptions.json in the real release's layout (one line, VG 1.2 keys), ~``gb`` GB,
    ~50 regions per image; plus image_data.json. Returns (images, bytes)."""
    import random

    rng = random.Random(0)
    words = "a the man woman red blue white black car tree sign window shirt dog cat sky wall on of in left".split()
    target = int(gb * 1e9)
    images = 0
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "region_descriptions.json", "w") as f:
        f.write("[")
        written = 1
        while written < target:
            images += 1
            regions = []
            for j in range(50):
                regions.append({"region_id": images * 100 + j, "width": rng.randint(1, 300), "height": rng.randint(1, 300),
                                "image_id": images, "phrase": " ".join(rng.choices(words, k=rng.randint(1, 8))),
                                "y": rng.randint(0, 400), "x": rng.randint(0, 500)})
            chunk = ("" if images == 1 else ", ") + json.dumps({"regions": regions, "id": images})
            f.write(chunk)
            written += len(chunk)
        f.write("]")
    meta = [{"width": 800, "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg", "height": 600,
             "image_id": i, "coco_id": None, "flickr_id": None} for i in range(1, images + 1)]
    (root / "image_data.json").write_text(json.dumps(meta))
    return images, (root / "region_descriptions.json").stat().st_size


_VG_CHILD = """
import resource, sys, time

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(value.split()[0])
    return out

from phraseground.data.visual_genome import iter_visual_genome  # imports the package (and torch)
base = status()
t = time.time()
n = regions = 0
peak_anon = base["RssAnon"]
for s in iter_visual_genome(sys.argv[1], require_images=False):
    n += 1
    regions += sum(len(p.boxes) for c in s.captions for p in c.phrases)
    if n % 2000 == 0:
        peak_anon = max(peak_anon, status()["RssAnon"])
end = status()
print(n, regions, time.time() - t, base["VmRSS"], base["RssAnon"], end["VmHWM"], max(peak_anon, end["RssAnon"]))
"""


def bench_vg(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="pg-vg-"))
    root = work / "visual_genome"
    if not (root / "image_data.json").is_file():
        images, size = _write_vg(root, args.gb)
    else:
        size = (root / "region_descriptions.json").stat().st_size
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _VG_CHILD, str(root)], capture_output=True, text=True, env=env, check=True)
    n, regions, seconds, rss0, anon0, peak_rss, peak_anon = out.stdout.split()
    mb = lambda kb: round(int(kb) / 1024, 1)  # noqa: E731
    emit({"figure": "vg_streaming_peak_rss", "file_gb": round(size / 1e9, 3), "images": int(n), "boxes": int(regions),
          "seconds": round(float(seconds), 1), "mb_per_s": round(size / 1e6 / float(seconds), 1),
          "rss_after_imports_mb": mb(rss0), "peak_rss_mb": mb(peak_rss), "rss_added_by_reading_mb": mb(int(peak_rss) - int(rss0)),
          "anon_after_imports_mb": mb(anon0), "peak_anon_mb": mb(peak_anon),
          "consumer": "iterate and count (samples not kept)", **conditions()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("memory")
    s.add_argument("--images", type=int, nargs="+", default=[600, 2400])
    s.add_argument("--modes", nargs="+", default=["store", "memory"])
    s = sub.add_parser("extract")
    s.add_argument("--images", type=int, default=32)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--workers", type=int, default=0)
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--device", default="auto")
    s = sub.add_parser("online")
    s.add_argument("--images", type=int, default=600)
    sub.add_parser("sizes")
    s = sub.add_parser("vg")
    s.add_argument("--gb", type=float, default=1.0)
    for s in sub.choices.values():
        s.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    args = p.parse_args()
    {"memory": bench_memory, "extract": bench_extract, "online": bench_online, "sizes": bench_sizes, "vg": bench_vg}[args.what](args)


if __name__ == "__main__":
    main()
