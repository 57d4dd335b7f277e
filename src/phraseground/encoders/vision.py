"""Frozen vision backbones with named multi-level taps, and their pretrained weights.

A backbone is declared as data (``BackboneSpec``): how to build the network, which module
outputs are its taps, the input size and normalisation, and where its weights come from.
Weight source order (as timm/torchvision): a local file given by the user always wins, then
the file shipped with the package (``synthcnn``), then the standard caches (``TORCH_HOME`` for
torchvision, the Hugging Face cache for timm), then a download; with none possible, a
``WeightsNotFoundError`` says which file to put where.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone and feed it images.

    Attributes:
        builder: returns the network with random weights.
        taps: tap name -> dotted module path whose output is the tap, shallow to deep.
        input_size: square input side in pixels (images are resized to it).
        source: where pretrained weights come from: "package", "torchvision" or "timm".
        weights_id: package file name, torchvision weights enum name, or timm model name.
        sha256: expected hash of the package weights file (None to skip the check).
    """

    name: str
    builder: Callable[[], nn.Module]
    taps: dict[str, str]
    input_size: int
    source: str
    weights_id: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None
    default_levels: tuple[str, ...] = field(default=())


class TapExtractor(nn.Module):
    """Runs a network and returns the outputs of the named modules (forward hooks)."""

    def __init__(self, net: nn.Module, taps: dict[str, str]) -> None:
        super().__init__()
        self.net = net
        self.taps = dict(taps)
        self._out: dict[str, torch.Tensor] = {}
        modules = dict(net.named_modules())
        for tap, path in self.taps.items():
            if path not in modules:
                raise ConfigError(f"tap {tap!r}: module {path!r} not found in the backbone")
            modules[path].register_forward_hook(self._hook(tap))
        self._last = max(list(modules).index(p) for p in self.taps.values())

    def _hook(self, tap: str) -> Callable:
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self._out[tap] = out

        return hook

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S), normalised -> {tap: (B, C, h, w)}."""
        self._out = {}
        self.net(images)
        return {t: self._out[t] for t in self.taps}


def _synthcnn() -> nn.Module:
    from .synthcnn import SynthCNN

    return SynthCNN()


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


def _read_sha(name: str) -> str | None:
    f = PACKAGE_WEIGHTS / f"{name}.sha256"
    return f.read_text().split()[0] if f.is_file() else None


BACKBONES: dict[str, BackboneSpec] = {
    "synthcnn": BackboneSpec(
        name="synthcnn", builder=_synthcnn, taps={"c2": "c2", "c3": "c3", "c4": "c4"}, input_size=128,
        source="package", weights_id="synthcnn.safetensors", channels={"c2": 64, "c3": 96, "c4": 128}, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        sha256=_read_sha("synthcnn"), default_levels=("c2", "c3", "c4"),
    ),
    # VGG16 (torchvision): taps after the ReLU of conv4_1, conv4_3, conv5_1, conv5_3.
    "vgg16": BackboneSpec(
        name="vgg16", builder=_torchvision("vgg16"),
        taps={"conv4_1": "features.18", "conv4_3": "features.22", "conv5_1": "features.25", "conv5_3": "features.29"},
        input_size=299, source="torchvision", weights_id="VGG16_Weights.IMAGENET1K_V1",
        channels={"conv4_1": 512, "conv4_3": 512, "conv5_1": 512, "conv5_3": 512},
        default_levels=("conv4_1", "conv4_3", "conv5_1", "conv5_3"),
    ),
    # ResNet-152 conv5 (torchvision), the dsve backbone.
    "resnet152": BackboneSpec(
        name="resnet152", builder=_torchvision("resnet152"), taps={"conv5": "layer4"}, input_size=400,
        source="torchvision", weights_id="ResNet152_Weights.IMAGENET1K_V1", channels={"conv5": 2048}, default_levels=("conv5",),
    ),
    # PNASNet-5 large (timm): cells 5, 7, 9, 11.
    "pnasnet5large": BackboneSpec(
        name="pnasnet5large", builder=_timm("pnasnet5large"),
        taps={"cell_5": "cell_5", "cell_7": "cell_7", "cell_9": "cell_9", "cell_11": "cell_11"},
        input_size=299, source="timm", weights_id="pnasnet5large.tf_in1k", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        channels={"cell_5": 2160, "cell_7": 2160, "cell_9": 4320, "cell_11": 4320},
        default_levels=("cell_5", "cell_7", "cell_9", "cell_11"),
    ),
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or ``.pth`` state dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        raise WeightsNotFoundError(f"cannot read weights file {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path} does not hold a state dict")
    return state


def _torchvision_weights_file(spec: BackboneSpec) -> Path:
    import torchvision
    from torch.hub import get_dir, load_state_dict_from_url

    enum_name, member = spec.weights_id.split(".")
    url = getattr(torchvision.models, enum_name)[member].url
    cached = Path(get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    try:
        load_state_dict_from_url(url, progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - no network, bad hash, ...
        raise WeightsNotFoundError(
            f"{spec.name}: pretrained weights not found and could not be downloaded ({type(e).__name__}). "
            f"Put {os.path.basename(url)} (from {url}) into {cached.parent} (or set TORCH_HOME), "
            f"or give a local file with weights=/path/to/file.pth"
        ) from None
    return cached


def _timm_weights_file(spec: BackboneSpec) -> Path:
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(spec.weights_id)
    repo = getattr(cfg, "hf_hub_id", None) or spec.weights_id
    for fname in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, fname, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache
            continue
    try:
        return Path(hf_hub_download(repo, "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - offline
        raise WeightsNotFoundError(
            f"{spec.name}: pretrained weights not in the Hugging Face cache and not downloadable "
            f"({type(e).__name__}). Download model.safetensors of hf-hub:{repo} into the HF cache "
            f"(HF_HOME) on a machine with network, or give weights=/path/to/file.safetensors"
        ) from None


def resolve_weights(spec: BackboneSpec, weights: str | None) -> Path:
    """Find the weights file of a backbone: the user's file, the package's, the caches, a download."""
    if weights not in (None, "", "pretrained"):
        return Path(weights)
    if spec.source == "package":
        path = PACKAGE_WEIGHTS / spec.weights_id
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{spec.name}: {path} is missing; rebuild it with `python scripts/pretrain_synthcnn.py`"
            )
        return path
    if spec.source == "torchvision":
        return _torchvision_weights_file(spec)
    return _timm_weights_file(spec)


def create_backbone(name: str, weights: str | None = "pretrained", taps: list[str] | None = None) -> TapExtractor:
    """Build a frozen backbone returning the requested taps.

    Args:
        name: a key of ``BACKBONES``.
        weights: "pretrained" (default source order), a path to a local weights file, or
            "random" for random weights (tests, shape checks).
        taps: tap names to return (default: the spec's default levels).
    """
    spec = get_backbone_spec(name)
    net = spec.builder()
    if weights != "random":
        path = resolve_weights(spec, weights)
        if spec.source == "package" and spec.sha256 and weights in (None, "", "pretrained"):
            actual = sha256_file(path)
            if actual != spec.sha256:
                raise WeightsNotFoundError(f"{path}: sha256 {actual[:12]}… does not match the declared {spec.sha256[:12]}…")
        state = load_state_file(path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[:2]
            raise WeightsNotFoundError(f"{path} does not fit backbone {name}: {' '.join(first)}") from None
    taps = list(taps) if taps else list(spec.default_levels)
    unknown = [t for t in taps if t not in spec.taps]
    if unknown:
        raise ConfigError(f"backbone {name} has no tap(s) {unknown}; known: {list(spec.taps)}")
    extractor = TapExtractor(net, {t: spec.taps[t] for t in taps})
    extractor.eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    return extractor
