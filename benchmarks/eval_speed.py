"""Time `evaluate` on a split phase by phase (wall and CPU seconds): reading the split, the
checkpoint, the features from the store, grounding (the model) and scoring (the runner).

    python benchmarks/eval_speed.py --checkpoint CKPT --data DIR [--split test] [--store DIR] [--protocol akbari2019]

CPU seconds (``time.process_time``, all threads of the process) are what the same run takes on
free cores; on a loaded machine the wall time is larger by the load.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--store", default="")
    ap.add_argument("--protocol", default="akbari2019")
    args = ap.parse_args()
    phases = {}
    t_wall, t_cpu = time.perf_counter(), time.process_time()

    def mark(name: str) -> None:
        nonlocal t_wall, t_cpu
        phases[name] = {"wall_s": round(time.perf_counter() - t_wall, 2), "cpu_s": round(time.process_time() - t_cpu, 2)}
        t_wall, t_cpu = time.perf_counter(), time.process_time()

    import phraseground.eval.runner as runner
    from phraseground.models.checkpoint import model_from_checkpoint
    from phraseground.train.config import DataConfig
    from phraseground.train.data import box_frame_of, features_for, load_split
    mark("imports")
    data = DataConfig(root=args.data, feature_store=args.store)
    samples = load_split(data, args.split)
    mark("read split")
    model, _ = model_from_checkpoint(Path(args.checkpoint))
    mark("checkpoint")
    fs = features_for(model, samples, data, args.split, quiet=True)
    mark("features (store)")
    ground = runner.ground_captions
    spent = {"wall": 0.0, "cpu": 0.0}

    def timed(*a, **k):
        w, c = time.perf_counter(), time.process_time()
        out = ground(*a, **k)
        spent["wall"] += time.perf_counter() - w
        spent["cpu"] += time.process_time() - c
        return out

    runner.ground_captions = timed
    rep = runner.run_grounding(model, fs, args.protocol, box_frame=box_frame_of(data))
    mark("grounding + scoring")
    phases["of which model.ground"] = {"wall_s": round(spent["wall"], 2), "cpu_s": round(spent["cpu"], 2)}
    total = {k: round(sum(p[k] for n, p in phases.items() if not n.startswith("of which")), 2) for k in ("wall_s", "cpu_s")}
    print(json.dumps({"phases": phases, "total": total, "phrases": rep["pointing"]["n_evaluated"],
                      "pointing": rep["pointing"]["accuracy"], "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
