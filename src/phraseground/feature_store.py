"""The disk feature store: frozen-backbone features written once, read by memory mapping.

Layout of one store (a folder under the store root, named ``<backbone>-<label>-<hash>``)::

    manifest.json        the fingerprint (everything that changes the features), the layout
                         (taps, shapes, offsets), the shard size and the extraction batch size
    images.txt           the image list, one ``<key>\\t<bytes>`` line per image, in store order
    shard-00000.npy      float16 array (n_images_in_shard, values_per_image): every tap of an
                         image flattened and concatenated (one file, one memory map per shard)
    shard-00000.json     written last, atomically: the shard's image count, byte size, sha256

A shard counts as finished only when its ``.json`` exists and the ``.npy`` has that size (and,
when verified, that checksum); anything else is redone. Every file is written to a temporary
file in the same folder and renamed, so a ``kill -9`` leaves finished shards and garbage that
the next run removes. Shards are extracted in batches aligned to the shard start with the batch
size recorded in the manifest, so a resumed store is identical to an uninterrupted one.

Training reads batches through ``np.load(mmap_mode="r")``: pages come from the page cache (file
memory, not anonymous memory), so a process's anonymous memory holds one batch, whatever the
number of images.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import PhrasegroundError
from .io import atomic_write, write_bytes
from .data.images import load_image
from .encoders.vision import BackboneSpec, sha256_file
from .features import PREPROCESS, RANDOM_WEIGHTS_SEED, FeatureExtractor, FeatureSpec, image_to_tensor

STORE_VERSION = 1
DTYPE = np.float16
_MANIFEST = "manifest.json"
_IMAGES = "images.txt"


class FeatureStoreError(PhrasegroundError):
    """A store that cannot be used: corrupted or truncated shard, no disk space, bad manifest."""


# ----------------------------------------------------------------------------- small helpers
def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def image_key(path: Path) -> str:
    """An image's name in the image list: its last two path parts (folder/file), so that a moved
    dataset keeps its store."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def weights_identity(spec: FeatureSpec, cache_dir: Path | None = None) -> dict[str, Any]:
    """What names the backbone weights: the sha256 of the weights file (cached by path, size and
    mtime in ``cache_dir``), or the seed and torch version of random weights."""
    if spec.weights == "random":
        return {"random_seed": RANDOM_WEIGHTS_SEED, "torch": torch.__version__.split("+")[0]}
    if spec.weights.startswith("state:"):  # a checkpoint's fine-tuned backbone
        return {"state_sha256": spec.weights.split(":", 1)[1]}
    from .encoders.vision import resolve_weights

    path = resolve_weights(spec.backbone_spec, spec.weights).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache = Path(cache_dir) / "weights-sha256.json" if cache_dir else None
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if key not in known:
        known[key] = sha256_file(path)
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(cache, json.dumps(known, indent=1).encode())
            except OSError:
                pass  # a read-only store root: the hash is recomputed next time
    return {"sha256": known[key]}


def fingerprint(spec: FeatureSpec, image_paths: Sequence[Path], cache_dir: Path | None = None) -> tuple[dict, list[str]]:
    """The fingerprint of a store (a dict of everything that changes its content) and its image list."""
    bspec = spec.backbone_spec
    lines = []
    for p in image_paths:
        try:
            size = os.stat(p).st_size
        except OSError:
            raise PhrasegroundError(f"{p}: image not found") from None
        lines.append(f"{image_key(p)}\t{size}")
    fp = {
        "store_version": STORE_VERSION,
        "backbone": spec.backbone,
        "weights": weights_identity(spec, cache_dir),
        "taps": list(spec.taps),
        "grid": spec.grid,
        "input_size": bspec.input_size,
        "mean": list(bspec.mean),
        "std": list(bspec.std),
        "preprocess": PREPROCESS,
        "dtype": "float16",
        "images": {"count": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()},
    }
    return fp, lines


def _fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def explain_mismatch(old: dict, new: dict, old_images: list[str] | None = None, new_images: list[str] | None = None) -> str:
    """Why two fingerprints differ, in one line."""
    reasons = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "images" and old_images is not None and new_images is not None:
            if len(old_images) != len(new_images):
                reasons.append(f"image list: {len(old_images)} -> {len(new_images)} images")
            else:
                first = next(i for i, (a, b) in enumerate(zip(old_images, new_images)) if a != b)
                reasons.append(f"image list: image {first} was {old_images[first]!r}, now {new_images[first]!r}")
        else:
            reasons.append(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}")
    return "; ".join(reasons)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"features: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the store
@dataclass
class _Layout:
    taps: dict[str, tuple[int, ...]]  # tap -> (C, h, w)
    offsets: dict[str, int]
    values_per_image: int

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "_Layout":
        offsets, n = {}, 0
        for t, shape in shapes.items():
            offsets[t] = n
            n += int(np.prod(shape))
        return cls(dict(shapes), offsets, n)

    @property
    def bytes_per_image(self) -> int:
        return self.values_per_image * np.dtype(DTYPE).itemsize


class FeatureStore:
    """A finished store opened for reading: ``len()``, ``samples``, ``select(indices, device)``.

    Use ``open_store`` (reuse, resume or extract) rather than the constructor.
    """

    def __init__(self, path: Path, manifest: dict, samples: list | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.samples = samples if samples is not None else []
        self.layout = _Layout.from_shapes({t: tuple(s) for t, s in manifest["layout"].items()})
        self.shard_images = int(manifest["shard_images"])
        self.n_images = int(manifest["n_images"])
        self._shards = [np.load(self.path / _shard_name(k), mmap_mode="r") for k in range(_n_shards(self.n_images, self.shard_images))]

    def __len__(self) -> int:
        return self.n_images

    @property
    def taps(self) -> list[str]:
        return list(self.layout.taps)

    def rows(self, image_indices: Sequence[int] | torch.Tensor) -> np.ndarray:
        """(B, values_per_image) float16 rows of the given images (a copy: one batch in memory)."""
        idx = np.asarray(torch.as_tensor(image_indices, dtype=torch.long).cpu().numpy(), dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_images):
            raise IndexError(f"image index out of range 0..{self.n_images - 1}")
        out = np.empty((len(idx), self.layout.values_per_image), dtype=DTYPE)
        shard, row = np.divmod(idx, self.shard_images)
        for k in np.unique(shard):
            where = np.nonzero(shard == k)[0]
            out[where] = self._shards[int(k)][row[where]]
        return out

    def select(self, image_indices: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """tap -> (B, C, h, w) float32 features of the given images, on ``device``."""
        device = torch.device(device)
        rows = torch.from_numpy(self.rows(image_indices))
        if device.type == "cuda":
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        b = rows.shape[0]
        return {t: rows[:, off : off + int(np.prod(shape))].reshape(b, *shape).to(torch.float32, memory_format=torch.channels_last)
                for (t, shape), off in zip(self.layout.taps.items(), self.layout.offsets.values())}

    @property
    def nbytes(self) -> int:
        return self.n_images * self.layout.bytes_per_image


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.npy"


def _marker_name(k: int) -> str:
    return f"shard-{k:05d}.json"


def _n_shards(n: int, per: int) -> int:
    return (n + per - 1) // per


def _npy_header(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(DTYPE).str, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _shard_state(path: Path, k: int, n_rows: int, row_bytes: int, verify: str) -> str | None:
    """None when shard k is finished and sound; else why not ("missing", "truncated", ...)."""
    marker, data = path / _marker_name(k), path / _shard_name(k)
    if not marker.is_file():
        return "missing"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "unreadable marker"
    expected = len(_npy_header((n_rows, row_bytes // np.dtype(DTYPE).itemsize))) + n_rows * row_bytes
    if not data.is_file():
        return "missing data file"
    size = data.stat().st_size
    if size != info.get("bytes") or size != expected or info.get("images") != n_rows:
        return f"truncated or wrong size ({size} bytes, expected {expected})"
    if verify == "checksum" and sha256_file(data) != info.get("sha256"):
        return "corrupted (sha256 mismatch)"
    return None


class ImageDataset(torch.utils.data.Dataset):
    """Preprocessed images for a DataLoader: item i is the (3, S, S) input of image i."""

    def __init__(self, paths: Sequence[Path], spec: BackboneSpec, sizes: Sequence[tuple[int, int]] | None = None) -> None:
        self.paths = list(paths)
        self.spec = spec
        self.sizes = list(sizes) if sizes is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i], expect_size=None if self.sizes is None else self.sizes[i])
        return image_to_tensor(image, self.spec)


def _default_workers(device: torch.device) -> int:
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def _check_disk(path: Path, needed: int, quiet: bool) -> None:
    free = shutil.disk_usage(path).free
    if needed > free:
        raise FeatureStoreError(
            f"not enough disk space for the feature store {path}: it needs {human_bytes(needed)} more, "
            f"{human_bytes(free)} free; free space or set data.feature_store (--out) to another disk")


def open_store(
    root: Path,
    spec: FeatureSpec,
    image_paths: Sequence[Path],
    *,
    samples: list | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    label: str = "",
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    workers: int | None = None,
    shard_mb: float = 1024,
    shard_images: int | None = None,
    verify: str = "checksum",
    rebuild: bool = False,
    quiet: bool = False,
    progress: bool = False,
    extractor: FeatureExtractor | None = None,
) -> FeatureStore:
    """The store of ``spec`` over ``image_paths`` under ``root``: reused when its fingerprint
    matches, else extracted (what is missing only: finished shards of an interrupted run are kept).

    Args:
        root: the store root (``data.feature_store``); one folder per fingerprint inside.
        samples: the samples of the images (``FeatureStore.samples``).
        sizes: per image the annotated ``(width, height)`` (EXIF handling of ``load_image``).
        label: a readable part of the folder name (the split).
        batch_size, workers, shard_mb, shard_images: extraction settings of a new store (a store
            being resumed keeps its own); ``workers`` None: 0 on CPU, up to 8 on CUDA.
        verify: "checksum" (sha256 of every shard at open) or "size" (sizes only; faster).
        rebuild: re-extract shards that fail the check instead of stopping with an error.

    Raises:
        FeatureStoreError: a corrupted or truncated shard (without ``rebuild``), not enough disk.
    """
    if verify not in ("checksum", "size"):
        raise PhrasegroundError(f"data.feature_verify must be 'checksum' or 'size', got {verify!r}")
    root = Path(root)
    fp, lines = fingerprint(spec, image_paths, root)
    name = "-".join(x for x in (spec.backbone, label, _fingerprint_hash(fp)) if x)
    path = root / name
    manifest_path = path / _MANIFEST
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest is not None and manifest.get("fingerprint") != fp:
            _log(f"{path}: manifest does not match its name ({explain_mismatch(manifest.get('fingerprint', {}), fp)}); re-extracting", quiet)
            manifest = None
    if manifest is None:
        _explain_new_store(root, path, label, spec.backbone, fp, lines, quiet)
    device = torch.device(device)
    if manifest is None:
        extractor = extractor or FeatureExtractor(spec, device)
        layout = _Layout.from_shapes(extractor.output_shapes())
        per_shard = shard_images or min(4096, max(1, int(shard_mb * 1e6) // layout.bytes_per_image))
        manifest = {
            "fingerprint": fp, "n_images": len(lines), "shard_images": per_shard, "batch_size": batch_size,
            "layout": {t: list(s) for t, s in layout.taps.items()}, "bytes_per_image": layout.bytes_per_image,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    layout = _Layout.from_shapes({t: tuple(s) for t, s in manifest["layout"].items()})
    per_shard, n = int(manifest["shard_images"]), len(lines)
    n_shards = _n_shards(n, per_shard)
    row_bytes = layout.bytes_per_image
    todo, bad = [], []
    if path.is_dir():
        for k in range(n_shards):
            rows = min(per_shard, n - k * per_shard)
            state = _shard_state(path, k, rows, row_bytes, verify)
            if state is None:
                continue
            todo.append(k)
            if state != "missing":  # a marker without a sound data file: damaged after it was written
                bad.append((k, state))
    else:
        todo = list(range(n_shards))
    if bad and not rebuild:
        k, state = bad[0]
        more = f" (and {len(bad) - 1} more shards)" if len(bad) > 1 else ""
        raise FeatureStoreError(f"feature store {path}: {_shard_name(k)} is {state}{more}; "
                                f"re-extract with `phraseground features --rebuild` (or data.feature_rebuild: true)")
    if not todo:
        _log(f"reusing {path} ({n} images, {human_bytes(n * row_bytes)})", quiet)
        return FeatureStore(path, manifest, samples)
    missing_images = sum(min(per_shard, n - k * per_shard) for k in todo)
    total = n * row_bytes
    _log(f"store {path}: {n} images x {human_bytes(row_bytes)}/image = {human_bytes(total)} "
         f"({n_shards} shards of {per_shard} images); to extract: {missing_images} images, {human_bytes(missing_images * row_bytes)}"
         + (f"; re-extracting {len(bad)} bad shard(s)" if bad else ""), quiet)
    path.mkdir(parents=True, exist_ok=True)
    _check_disk(path, missing_images * row_bytes, quiet)
    _remove_garbage(path, n_shards)
    if not manifest_path.is_file():
        write_bytes(path / _IMAGES, ("\n".join(lines) + "\n").encode())
        write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    extractor = extractor or FeatureExtractor(spec, device)
    _extract_shards(path, extractor, ImageDataset(image_paths, extractor.backbone_spec, sizes), todo, per_shard, int(manifest["batch_size"]), layout,
                    _default_workers(device) if workers is None else workers, progress and not quiet)
    return FeatureStore(path, manifest, samples)


def _explain_new_store(root: Path, path: Path, label: str, backbone: str, fp: dict, lines: list[str], quiet: bool) -> None:
    """Say why a new store is needed: the nearest existing store of the same backbone and label differs in ..."""
    if not root.is_dir():
        return
    prefix = "-".join(x for x in (backbone, label) if x) + "-"
    others = [p for p in root.glob(prefix + "*") if p != path and (p / _MANIFEST).is_file() and len(p.name) == len(path.name)]
    if not others:
        return
    latest = max(others, key=lambda p: (p / _MANIFEST).stat().st_mtime)
    try:
        old = json.loads((latest / _MANIFEST).read_text())["fingerprint"]
        old_lines = (latest / _IMAGES).read_text().splitlines() if (latest / _IMAGES).is_file() else None
    except (OSError, ValueError, KeyError):
        return
    _log(f"the store {latest.name} does not match ({explain_mismatch(old, fp, old_lines, lines)}); "
         f"extracting a new one (delete {latest} to free its space)", quiet)


def _remove_garbage(path: Path, n_shards: int) -> None:
    """Remove what an interrupted run left: temporary files and data files without a marker."""
    known = {_MANIFEST, _IMAGES} | {_shard_name(k) for k in range(n_shards)} | {_marker_name(k) for k in range(n_shards)}
    for p in path.iterdir():
        if p.is_file() and p.name not in known:
            p.unlink()


def _extract_shards(path: Path, extractor: FeatureExtractor, dataset: ImageDataset, shards: list[int], per_shard: int,
                    batch_size: int, layout: _Layout, workers: int, progress: bool) -> None:
    n = len(dataset)
    batches = []  # (shard, [image indices]) in order, aligned to shard starts
    for k in shards:
        start, end = k * per_shard, min((k + 1) * per_shard, n)
        batches.extend((k, list(range(i, min(i + batch_size, end)))) for i in range(start, end, batch_size))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[b for _, b in batches], num_workers=workers,
        pin_memory=extractor.device.type == "cuda", persistent_workers=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b) for _, b in batches), desc="features", unit="img", dynamic_ncols=True)
    extractor.eval()
    current, writer, handle, digest, rows = None, None, None, None, 0

    def finish() -> None:
        writer.__exit__(None, None, None)
        size = (path / _shard_name(current)).stat().st_size
        write_bytes(path / _marker_name(current), json.dumps({"images": rows, "bytes": size, "sha256": digest.hexdigest()}).encode())

    try:
        with torch.no_grad():
            for (k, idx), x in zip(batches, loader):
                if k != current:
                    if writer is not None:
                        finish()
                    current, rows = k, min(per_shard, n - k * per_shard)
                    (path / _marker_name(k)).unlink(missing_ok=True)
                    writer = atomic_write(path / _shard_name(k), "wb")
                    handle = writer.__enter__()
                    header = _npy_header((rows, layout.values_per_image))
                    digest = hashlib.sha256(header)
                    handle.write(header)
                feats = extractor(x)
                flat = torch.cat([feats[t].flatten(1) for t in layout.taps], dim=1).to("cpu", torch.float16)
                data = flat.numpy().tobytes()
                digest.update(data)
                handle.write(data)
                if bar is not None:
                    bar.update(len(idx))
            if writer is not None:
                finish()
                writer = None
    except BaseException as e:
        if writer is not None:
            try:
                writer.__exit__(type(e), e, e.__traceback__)
            except BaseException:  # noqa: BLE001 - the writer re-raises e; the temporary file is gone
                pass
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise FeatureStoreError(f"cannot write the feature store {path}: {e.strerror or e} "
                                    f"(finished shards are kept; rerun to resume)") from None
        raise
    finally:
        if bar is not None:
            bar.close()
