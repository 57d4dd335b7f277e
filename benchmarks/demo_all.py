"""Run `phraseground demo` for every model and print the README's results table.

    python benchmarks/demo_all.py [--out runs/bench] [--models mlmcs dsve attnreg]

Each demo runs in its own process (so its peak memory is its own); the figures come from
each run's report.json (accuracy, training and total time, peak resident memory).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--models", nargs="+", default=["mlmcs", "dsve", "attnreg"])
    args = ap.parse_args()
    rows = ["| model | pointing (akbari2019) | box acc. (IoU≥0.5) | centre | random | phrases | train s | total s | peak MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        out = Path(args.out) / model
        subprocess.run([sys.executable, "-m", "phraseground.app.cli", "demo", "--model", model, "--out", str(out), "--quiet"],
                       check=True)
        r = json.loads((out / "report.json").read_text())
        rows.append(f"| {model} | {r['pointing_accuracy']:.3f} | {r['box_accuracy']:.3f} | {r['baselines']['center']:.3f} "
                    f"| {r['baselines']['random']:.3f} | {r['n_phrases']} | {r['train_seconds']:.0f} | {r['total_seconds']:.0f} "
                    f"| {r['peak_memory_mb']:.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
