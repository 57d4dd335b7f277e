"""Load (slow tier): 8 concurrent `ground` processes on one checkpoint all answer, and alike.
(50 concurrent `serve` requests: tests/test_serve.py.)"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_eight_concurrent_ground_processes(model_checkpoints, tiny_bench, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("load_ground", ROOT / "benchmarks" / "load_ground.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    report = bench.run(8, model_checkpoints["mlmcs"], tiny_bench / "images" / "000025.jpg", tmp_path)
    assert report["ok"] == 8 and report["same_answer"], report["per_process"]
    assert all(r["peak_mb"] < 4096 for r in report["per_process"])

