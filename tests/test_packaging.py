"""The wheel: it carries every file the package reads, installs non-editable, and runs there.

The wheel is installed into a temporary virtual environment that reuses this environment's
installed dependencies (a ``.pth`` line naming this site-packages; its ``.pth`` files, the
editable install among them, are not processed), with ``--no-deps --no-index``: nothing is
downloaded, and the package imported there is the wheel's, not the source tree.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "phraseground"


def _package_files() -> list[str]:
    """The package's files (git's list when there is one), relative to src/phraseground."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "src/phraseground"], cwd=ROOT, capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        files = [str(Path(f).relative_to("src/phraseground")) for f in out]
    except (OSError, subprocess.SubprocessError):
        files = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(f for f in files if (PACKAGE / f).is_file())


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the build leaves nothing in the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for rel in _package_files():
        (src / "src" / "phraseground" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE / rel, src / "src" / "phraseground" / rel)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-w", str(work / "dist"), str(src)], capture_output=True, text=True, timeout=600,
                         env=_clean_env())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (found,) = (work / "dist").glob("phraseground-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed (non-editable) and this one's dependencies visible."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=_clean_env()).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_phraseground_test_reuse_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=600, env=_clean_env())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return env_dir


def _bin(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def test_wheel_carries_every_file_the_package_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _package_files() if f"phraseground/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    for needed in ("configs/mlmcs_synthetic.yaml", "weights/synthcnn.sha256", "weights/synthcnn.safetensors",
                   "splits/akbari2019_vg_splits.json"):
        assert f"phraseground/{needed}" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text
    assert "Provides-Extra: hf" in text and "Provides-Extra: paper" in text and "Provides-Extra: web" in text
    core = [line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(heavy in line for line in core for heavy in ("transformers", "timm", "h5py", "fastapi"))


def test_installed_wheel_is_the_one_imported_and_finds_its_files(venv, tmp_path):
    code = ("import phraseground, pathlib; from phraseground.train.config import package_config; "
            "from phraseground.encoders.vision import get_backbone_spec, create_backbone; "
            "print(pathlib.Path(phraseground.__file__).resolve()); print(package_config('mlmcs_synthetic')); "
            "spec = get_backbone_spec('synthcnn'); assert spec.sha256, 'weights hash not shipped'; "
            "create_backbone('synthcnn'); print('ok')")
    run = subprocess.run([_bin(venv, "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=_clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    where, config, ok = run.stdout.split()
    assert Path(where).is_relative_to(venv.resolve()) and Path(config).is_relative_to(venv.resolve()) and ok == "ok"
    run = subprocess.run([_bin(venv, "phraseground"), "--version"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=_clean_env())
    assert run.returncode == 0 and run.stdout.startswith("phraseground "), run.stderr[-2000:]


@pytest.mark.slow
def test_installed_wheel_runs_the_demo(venv, tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([_bin(venv, "phraseground"), "demo", "--images", "60", "--epochs", "1", "--out", str(out),
                          "-q", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                         env=_clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "report.json").is_file() and (out / "run" / "best.pt").is_file()


def test_a_missing_extra_is_named(monkeypatch):
    from phraseground.errors import PhrasegroundError
    from phraseground.extras import require

    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now fails as if it were not installed
    with pytest.raises(PhrasegroundError, match=r"the ELMo text encoder needs the package 'h5py'.*phraseground\[paper\]"):
        require("h5py", "paper", "the ELMo text encoder")
