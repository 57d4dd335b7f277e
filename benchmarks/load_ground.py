"""Load: N concurrent `phraseground ground` processes on one checkpoint.

    python benchmarks/load_ground.py [--procs 8] [--checkpoint CKPT] [--image IMG] [--out runs/load]

Without ``--checkpoint`` it builds one: the default ``mlmcs`` config (full size) after one
training step on a small synthetic benchmark (the weights do not matter for load, the
model's size does). Every process grounds the same phrases in the same image into its own
folder; the script checks that all of them succeed with the same answer and prints, per
process, the wall time and the peak resident memory, then the totals as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# A child: run the CLI, then print its own peak resident memory (ru_maxrss is in kB on Linux,
# bytes on macOS) on stderr's last line.
_CHILD = """
import resource, sys, time
t = time.time()
from phraseground.app.cli import main
rc = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
print(f"LOAD {rc} {time.time() - t:.3f} {peak_mb:.1f}", file=sys.stderr)
sys.exit(rc)
"""

PHRASES = ["a red star", "a small blue square", "the green circle"]


def build_checkpoint(out: Path) -> Path:
    """The default mlmcs config after one step on a 40-image synthetic benchmark."""
    ckpt = out / "run" / "last.pt"
    if ckpt.is_file():
        return ckpt
    subprocess.run([sys.executable, "-m", "phraseground.app.cli", "synth", str(out / "data"), "--images", "40",
                    "--quiet"], check=True)
    subprocess.run([sys.executable, "-m", "phraseground.app.cli", "train", "--model", "mlmcs",
                    "--set", f"data.root={out / 'data'}", "--set", "train.max_steps=1", "--set", "train.epochs=1",
                    "--set", "train.val_max_images=1", "--out", str(out / "run"), "--quiet"], check=True)
    return ckpt


def run(procs: int, checkpoint: Path, image: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [sys.executable, "-c", _CHILD, "ground", str(image), *[a for p in PHRASES for a in ("--phrase", p)],
            "--checkpoint", str(checkpoint)]
    t0 = time.time()
    children = [subprocess.Popen([*argv, "--out", str(out / f"p{k}")], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for k in range(procs)]
    results = []
    for k, c in enumerate(children):
        _, err = c.communicate()
        line = [x for x in err.splitlines() if x.startswith("LOAD ")]
        rc, wall, peak = line[-1].split()[1:] if line else (str(c.returncode), "nan", "nan")
        results.append({"proc": k, "rc": int(rc), "wall_s": float(wall), "peak_mb": float(peak),
                        "error": None if c.returncode == 0 else err.strip().splitlines()[-2:]})
    total = time.time() - t0
    answers = []
    for k in range(procs):
        f = out / f"p{k}" / "grounding.json"
        answers.append(json.loads(f.read_text())["predictions"] if f.is_file() else None)
    same = all(a is not None and [(p["point"], p["box"]) for p in a] == [(p["point"], p["box"]) for p in answers[0]]
               for a in answers)
    return {"procs": procs, "ok": sum(r["rc"] == 0 for r in results), "same_answer": same,
            "total_wall_s": round(total, 2), "max_proc_wall_s": max(r["wall_s"] for r in results),
            "mean_proc_wall_s": round(sum(r["wall_s"] for r in results) / procs, 2),
            "max_peak_mb": max(r["peak_mb"] for r in results), "omp_threads": env["OMP_NUM_THREADS"],
            "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "per_process": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/load"))
    args = ap.parse_args()
    ckpt = args.checkpoint or build_checkpoint(args.out)
    image = args.image
    if image is None:
        data = args.out / "data"
        if not (data / "images").is_dir():
            subprocess.run([sys.executable, "-m", "phraseground.app.cli", "synth", str(data), "--images", "3",
                            "--quiet"], check=True)
        image = sorted((data / "images").iterdir())[0]
    single = run(1, ckpt, image, args.out / "single")
    report = run(args.procs, ckpt, image, args.out / "concurrent")
    report["single_proc_wall_s"] = single["max_proc_wall_s"]
    report["single_peak_mb"] = single["max_peak_mb"]
    for r in report["per_process"]:
        print(f"process {r['proc']}: exit {r['rc']}, {r['wall_s']:.2f} s, peak {r['peak_mb']:.0f} MB"
              + (f", {r['error']}" if r["error"] else ""))
    print(json.dumps({k: v for k, v in report.items() if k != "per_process"}))
    if report["ok"] != args.procs or not report["same_answer"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
