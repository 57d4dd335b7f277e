"""Experiment configuration: dataclasses loadable from YAML with ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..schema import from_data


@dataclass
class DataConfig:
    """Where the data is. ``format``: "flickr30k" (a Flickr30k Entities directory, real or
    synthetic) or "index" (a folder of ``<split>.json.gz`` files written by ``phraseground prepare``)."""

    root: str = ""
    format: str = "flickr30k"
    train_split: str = "train"
    val_split: str = "val"
    synthetic_images: int = 2500  # used when root is empty: the embedded benchmark is generated
    synthetic_seed: int = 0
    synthetic_size: int = 128
    max_image_pixels: int = 0  # refuse larger images (decompression bombs); 0: the process default (data/images.py)
    # frozen-backbone features: "store" (extracted once to a disk store, read by memory mapping),
    # "memory" (extracted into RAM at every run; small sets only) or "online" (see README)
    features: Literal["store", "memory", "online"] = "store"
    feature_store: str = ""  # store root; empty: a folder "features" beside the data (<parent of root>/features)
    feature_verify: Literal["checksum", "size"] = "checksum"  # "checksum": sha256 of every shard when a store is opened; "size": sizes only
    feature_rebuild: bool = False  # re-extract corrupted or truncated shards instead of stopping
    feature_shard_mb: float = 1024  # shard size of a new store
    workers: int = -1  # DataLoader workers decoding images (-1: 0 on CPU, up to 8 with CUDA)


@dataclass
class TrainConfig:
    """Optimisation schedule (paper: B = 32, 20 epochs, Adam 1e-3 halved at 10 and 15)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    lr_milestones: list[int] = field(default_factory=lambda: [10, 15])
    lr_gamma: float = 0.5
    weight_decay: float = 5e-4
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "auto"
    val_protocol: str = "akbari2019"
    val_max_images: int = 200
    checkpoint_every: int = 200  # steps between mid-epoch `last` checkpoints (0: epoch ends only)
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    vocab_min_count: int = 1
    caption_sampling: Literal["all", "one"] = "all"  # weak supervision: every caption each epoch, or "one" per image
    feature_batch: int = 64
    # under torchrun: contrastive losses over the global batch (all-gather of embeddings with gradient)
    # so that results do not depend on the number of processes; false: each process its own batch
    global_batch: bool = True
    # data.features: online only: the epoch from which the backbone is fine-tuned (-1: always frozen)
    finetune_backbone_from: int = -1

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "feature_batch", "vocab_min_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("val_max_images", "checkpoint_every", "max_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be at least 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be above 0, got {self.lr}")


@dataclass
class ExperimentConfig:
    """A whole run: the model's name and typed options (its registered config dataclass), the
    data and the schedule. Build it with :func:`config_from_dict` / :func:`load_config`."""

    model: str = "mlmcs"
    model_args: Any = None  # the model's config dataclass (MLMCSConfig, DSVEConfig, ...)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model_args is None or isinstance(self.model_args, dict):
            from ..models.registry import build_config

            self.model_args = build_config(self.model, self.model_args or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = ("model", "model_args", "data", "train")


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build an ExperimentConfig from a nested dict (YAML content, checkpoint), every value
    checked and converted by its annotation: errors name the key path
    (``config: train.epochs: expected int, got 'abc'``), before anything is computed."""
    from ..models.registry import build_config, list_models

    if not isinstance(values, dict):
        raise ConfigError("config: a config must be a mapping with keys model, model_args, data, train")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"config: {unknown[0]}: unknown section; known: {', '.join(_SECTIONS)}")
    model = values.get("model", "mlmcs")
    if not isinstance(model, str) or model not in list_models():
        raise ConfigError(f"config: model: unknown model {model!r}; known: {', '.join(list_models())}")
    return ExperimentConfig(
        model=model,
        model_args=build_config(model, values.get("model_args") or {}, "model_args"),
        data=from_data(DataConfig, values.get("data") or {}, "data"),
        train=from_data(TrainConfig, values.get("train") or {}, "train"),
    )


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value ({e})") from None
        parts = key.strip().split(".")
        node = values
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return values


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: ``top`` wins; mappings merge key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config; a ``base: other.yaml`` key (relative to the file) is merged under it."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: circular 'base' chain")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    base = values.pop("base", None)
    if base:
        values = _merge(read_yaml_config(path.parent / base, _seen + (path.resolve(),)), values)
    return values


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config and apply overrides. Without a path, start from the model's documented
    default config (``configs/<model>_synthetic.yaml``; the model is ``mlmcs`` unless an override
    ``model=NAME`` names another), the same config ``phraseground demo`` trains."""
    top = apply_overrides({}, overrides or [])
    if path:
        values = read_yaml_config(path)
    else:
        from ..models.registry import list_models

        model = top.get("model", "mlmcs")
        if not isinstance(model, str) or model not in list_models():
            raise ConfigError(f"config: model: unknown model {model!r}; known: {', '.join(list_models())}")
        values = read_yaml_config(package_config(f"{model}_synthetic"))
    return config_from_dict(_merge(values, top))


def package_config(name: str) -> Path:
    """Path of a config shipped with the package (``configs/<name>.yaml``)."""
    path = Path(str(resources.files("phraseground") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no built-in config {name!r} ({path})")
    return path


def default_config(model: str = "mlmcs", overrides: list[str] | None = None) -> ExperimentConfig:
    """The model's documented default config (``configs/<model>_synthetic.yaml``, the one
    ``phraseground demo`` and ``phraseground train`` without ``--config`` use), with overrides."""
    return load_config(package_config(f"{model}_synthetic"), overrides)
