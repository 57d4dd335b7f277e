"""Training/evaluation data: samples of a split, their cached backbone features, batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.flickr30k import read_flickr30k
from ..data.types import ImageSample
from ..encoders.text import tokenize
from ..eval.metrics import union_box
from ..errors import ConfigError
from ..features import FeatureExtractor, FeatureSpec, build_backbone, extract_features
from ..io import write_text
from ..models.base import GroundingModel, TrainBatch
from .config import DataConfig


def load_split(data: DataConfig, split: str) -> list[ImageSample]:
    """Samples of one split of the configured dataset."""
    if data.format == "flickr30k":
        samples, _ = read_flickr30k(Path(data.root), split)
        return samples
    if data.format == "photos":  # real photographs shipped in packages, every case a test case
        from ..data.photos import read_photo_cases

        return read_photo_cases(None if data.root in ("", "photos") else Path(data.root)) if split == "test" else []
    if data.format == "index":  # root holds <split>.json.gz / <split>.json written by `phraseground prepare`
        from ..data.index import read_index

        for name in (f"{split}.json.gz", f"{split}.json"):
            if (Path(data.root) / name).is_file():
                return read_index(Path(data.root) / name)[0]
        raise ConfigError(f"{data.root}: no index {split}.json.gz or {split}.json (write it with `phraseground prepare`)")
    raise ConfigError(f"unknown data format {data.format!r}; known: flickr30k, index, photos")


def box_frame_of(data: DataConfig) -> str:
    """The dataset's box frame for ``akbari2019`` (``phraseground.eval.akbari2019.FRAMES``):
    Flickr30k for the ``flickr30k`` format (the synthetic benchmark included), else the
    dataset an index was prepared from."""
    from ..eval.akbari2019 import frame_of_dataset

    if data.format == "flickr30k":
        return "flickr30k"
    if data.format == "photos":  # hand-drawn boxes, 0-based continuous xyxy: used as given
        return "xyxy"
    if data.format == "index":
        from ..data.index import read_index

        for name in ("test.json.gz", "test.json", "val.json.gz", "val.json", "train.json.gz", "train.json"):
            if (Path(data.root) / name).is_file():
                return frame_of_dataset(read_index(Path(data.root) / name)[1].get("dataset"))
    return "xyxy"


@dataclass
class FeatureSet:
    """Samples with their frozen-backbone features, tap -> (N, C, h, w) in sample order."""

    samples: list[ImageSample]
    features: dict[str, torch.Tensor]

    def select(self, image_indices: list[int] | torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(image_indices, dtype=torch.long)
        return {t: f[idx].to(device, torch.float32, memory_format=torch.channels_last) for t, f in self.features.items()}

    def __len__(self) -> int:
        return len(self.samples)


def build_feature_set(model: GroundingModel, samples: list[ImageSample], batch_size: int = 64,
                      device: str = "cpu", progress: bool = False) -> FeatureSet:
    """Run the model's frozen backbone over the samples' images once, into RAM (small sets only)."""
    return features_for(model, samples, DataConfig(features="memory"), device=device, batch_size=batch_size,
                        progress=progress)


def store_root(data: DataConfig) -> Path:
    """The feature store root of a data config: ``data.feature_store``, else ``features`` beside the data."""
    if data.feature_store:
        return Path(data.feature_store)
    if not data.root:
        raise ConfigError("data.feature_store is empty and there is no data.root to put the store beside")
    return Path(data.root).resolve().parent / "features"


def features_for(model: GroundingModel | FeatureSpec, samples: list[ImageSample], data: DataConfig, label: str = "",
                 device: torch.device | str = "cpu", batch_size: int = 64, progress: bool = False,
                 quiet: bool = False, extractor: FeatureExtractor | None = None):
    """The features object of ``samples`` for ``model`` (or its ``FeatureSpec``): the disk store
    of ``data.features: store`` (reused, resumed or extracted; see ``feature_store``), or
    features in RAM for ``memory``.

    Args:
        extractor: the backbone to use instead of the declared one (a checkpoint's fine-tuned
            backbone, ``FeatureExtractor.for_checkpoint``); its spec names the store.
    """
    spec = extractor.spec if extractor is not None else model if isinstance(model, FeatureSpec) else model.feature_needs
    if data.features == "memory":
        feats = extract_features(extractor.backbone if extractor is not None else build_backbone(spec), spec.backbone_spec, [s.image_path for s in samples], grid=spec.grid,
                                 batch_size=batch_size, device=device, progress=progress,
                                 sizes=[(s.width, s.height) for s in samples])
        return FeatureSet(samples, feats)
    if data.features not in ("store", "online"):
        raise ConfigError(f"data.features must be 'store', 'memory' or 'online', got {data.features!r}")
    from ..feature_store import open_store

    return open_store(store_root(data), spec, [s.image_path for s in samples], samples=samples,
                      sizes=[(s.width, s.height) for s in samples],
                      label=label, device=device, batch_size=batch_size, workers=None if data.workers < 0 else data.workers,
                      shard_mb=data.feature_shard_mb, verify=data.feature_verify, rebuild=data.feature_rebuild,
                      quiet=quiet, progress=progress, extractor=extractor)


def union_box_fraction(sample: ImageSample, boxes: tuple) -> list[float]:
    """Union (enclosing) box of ``boxes`` as fractions of the image size, xyxy."""
    w, h = sample.width, sample.height
    return (union_box(boxes) / torch.tensor([w, h, w, h], dtype=torch.float64)).tolist()


def training_items(samples: list[ImageSample], supervision: str, caption_sampling: str = "all",
                   generator: torch.Generator | None = None) -> list[tuple[int, int, int]]:
    """(image, caption, phrase) index triples of one epoch.

    Weak supervision: one item per caption (phrase = -1), or with ``caption_sampling="one"``
    one randomly drawn caption per image (drawn from ``generator``). Full supervision: one
    item per visual phrase with boxes.
    """
    if caption_sampling not in ("all", "one"):
        raise ConfigError(f"caption_sampling must be 'all' or 'one', got {caption_sampling!r}")
    items = []
    for i, s in enumerate(samples):
        if supervision == "weak":
            if caption_sampling == "one" and s.captions:
                items.append((i, int(torch.randint(len(s.captions), (1,), generator=generator)), -1))
            else:
                items.extend((i, c, -1) for c in range(len(s.captions)))
            continue
        for c, cap in enumerate(s.captions):
            items.extend((i, c, p) for p, ph in enumerate(cap.phrases) if ph.boxes and not ph.is_notvisual)
    return items


def make_batch(fs: FeatureSet, items: list[tuple[int, int, int]], device: torch.device | str = "cpu",
               tokenize: Callable[[str], list[str]] = tokenize, with_features: bool = True) -> TrainBatch:
    """Batch of items: captions (weak) or phrases with their union target box (full), tokenised
    by ``tokenize`` (the training loop passes the model's); ``with_features=False`` leaves the
    features to the step (online mode)."""
    images = [i for i, _, _ in items]
    tokens, boxes = [], []
    for i, c, p in items:
        cap = fs.samples[i].captions[c]
        if p < 0:
            tokens.append(tokenize(cap.text))
        else:
            ph = cap.phrases[p]
            tokens.append(tokenize(ph.text))
            boxes.append(union_box_fraction(fs.samples[i], ph.boxes))
    return TrainBatch(
        features=fs.select(images, device) if with_features else {},
        tokens=tokens,
        boxes=torch.tensor(boxes, dtype=torch.float32, device=device) if boxes else None,
        image_index=torch.tensor(images, device=device),
    )


def ensure_synthetic(data: DataConfig, where: Path, progress: bool = False) -> Path:
    """Generate the embedded benchmark into ``where`` unless it is already there with the
    same parameters (a ``synthetic.json`` marker, written last); return its root."""
    import json

    from ..data.synthetic import generate_benchmark

    where = Path(where)
    params = {"images": data.synthetic_images, "seed": data.synthetic_seed, "size": data.synthetic_size}
    marker = where / "synthetic.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return where
        except (OSError, ValueError):
            pass
    generate_benchmark(where, data.synthetic_images, data.synthetic_seed, data.synthetic_size, progress=progress)
    write_text(marker, json.dumps(params))
    return where
