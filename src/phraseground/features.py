"""Backbone features: what a model needs from its backbone (``FeatureSpec``) and the one object
that turns images into those features (``FeatureExtractor``).

The same extractor serves the disk feature store (``feature_store``), online training (the
backbone inside the training step, ``data.features: online``) and the ``Grounder``, so the
preprocessing (square resize, normalisation) and the resize of every tap to the model's grid are
written once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data.images import load_image
from .encoders.vision import BackboneSpec, create_backbone, get_backbone_spec

#: names the preprocessing below; part of every store fingerprint (change it when it changes)
PREPROCESS = "rgb/square-resize-pil-declared-interpolation/normalise/v2"
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def image_to_tensor(image: Image.Image, spec: BackboneSpec, size: int | None = None) -> torch.Tensor:
    """The project's one preprocessing: one RGB image -> (3, S, S) float32, the whole image resized
    (squashed) to the backbone's square input (``size``, default ``spec.input_size``) with the
    spec's declared interpolation, then normalised with its declared mean/std."""
    s = size or spec.input_size
    arr = np.asarray(image.convert("RGB").resize((s, s), _RESAMPLE[spec.interpolation]), dtype=np.float32)  # (S, S, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1) / 255.0  # (3, S, S)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (x - mean) / std


def images_to_tensor(images: Sequence[Image.Image], spec: BackboneSpec, size: int | None = None) -> torch.Tensor:
    """``image_to_tensor`` of each image -> (B, 3, S, S) float32."""
    return torch.stack([image_to_tensor(im, spec, size) for im in images])


@dataclass(frozen=True)
class FeatureSpec:
    """What a model reads from its backbone.

    Attributes:
        backbone: a registered backbone name.
        weights: "pretrained", a path to a weights file, "random" (seeded, tests/benchmarks), or
            "state:<sha256>" for a checkpoint's fine-tuned backbone (``FeatureExtractor.for_checkpoint``).
        taps: the taps the model reads, in order.
        grid: every tap is bilinearly resized to (grid, grid) when given; None keeps the native size.
    """

    backbone: str
    weights: str
    taps: tuple[str, ...]
    grid: int | None = None

    @property
    def backbone_spec(self) -> BackboneSpec:
        return get_backbone_spec(self.backbone)


#: random backbone weights are drawn from this seed, so that "random" names one set of weights
RANDOM_WEIGHTS_SEED = 0


def resize_to_grid(features: dict[str, torch.Tensor], grid: int | None) -> dict[str, torch.Tensor]:
    """Every (B, C, h, w) map bilinearly resized to (grid, grid) — the one place the grid resize
    is written; maps already of that size, and ``grid=None``, are left as they are."""
    if grid is None:
        return features
    return {t: f if f.shape[-2:] == (grid, grid) else F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
            for t, f in features.items()}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensor bytes (the identity of fine-tuned weights)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_backbone(spec: FeatureSpec) -> nn.Module:
    """The frozen tap extractor of ``spec`` (random weights drawn from a fixed seed)."""
    if spec.weights.startswith("state:"):
        from .errors import ConfigError

        raise ConfigError(f"backbone weights {spec.weights[:18]}... are a checkpoint's fine-tuned backbone: "
                          "build the extractor with FeatureExtractor.for_checkpoint")
    if spec.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return create_backbone(spec.backbone, "random", list(spec.taps))
    return create_backbone(spec.backbone, spec.weights, list(spec.taps))


class FeatureExtractor(nn.Module):
    """Images -> the features a model needs, on any device.

    ``preprocess`` runs on CPU (in DataLoader workers); ``forward`` runs the backbone on a
    preprocessed batch and resizes every tap to the grid. The backbone is frozen
    (``requires_grad`` False) until ``set_trainable(True)`` (online fine-tuning).
    """

    def __init__(self, spec: FeatureSpec, device: torch.device | str = "cpu", backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone_spec = spec.backbone_spec
        self.backbone = backbone if backbone is not None else build_backbone(spec)
        self.to(device)

    @classmethod
    def for_checkpoint(cls, model: nn.Module, ckpt: dict, device: torch.device | str = "cpu") -> "FeatureExtractor":
        """The extractor a checkpoint's model reads: the fine-tuned backbone the checkpoint holds
        (``"backbone"``, written by online training with ``train.finetune_backbone_from``), else
        the model's declared backbone weights."""
        from dataclasses import replace

        spec = model.feature_needs
        state = ckpt.get("backbone")
        if state is None:
            return cls(spec, device)
        spec = replace(spec, weights=f"state:{state_sha256(state)}")
        backbone = build_backbone(replace(spec, weights="random"))
        backbone.load_state_dict(state)
        return cls(spec, device, backbone)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    @property
    def device(self) -> torch.device:
        p = next(self.backbone.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(3, S, S) float32 input of one image."""
        return image_to_tensor(image, self.backbone_spec)

    def set_trainable(self, trainable: bool) -> None:
        """Fine-tune (True: gradients, train-mode batch norm) or freeze (False: eval mode) the backbone.

        Only the parameters the taps depend on are trained: layers past the deepest tap (a
        classifier head) stay frozen, so DDP sees no parameter without a gradient.
        """
        used = self._tap_parameters() if trainable else set()
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in used)
        self.backbone.train(trainable)

    def _tap_parameters(self) -> set[str]:
        """Names of the backbone parameters the taps depend on (one forward/backward, cached)."""
        if getattr(self, "_used", None) is None:
            named = list(self.backbone.named_parameters())
            was = self.backbone.training
            flags = [p.requires_grad for _, p in named]
            self.backbone.eval()
            for _, p in named:
                p.requires_grad_(True)
            s = self.backbone_spec.input_size
            with torch.enable_grad():
                out = self.forward(torch.zeros(1, 3, s, s))
                grads = torch.autograd.grad(sum(f.sum() for f in out.values()), [p for _, p in named], allow_unused=True)
            for (_, p), flag in zip(named, flags):
                p.requires_grad_(flag)
            self.backbone.train(was)
            self._used = {n for (n, _), g in zip(named, grads) if g is not None}
        return self._used

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # a frozen backbone stays in eval mode (batch-norm statistics) whatever the caller's mode
        super().train(mode and self.trainable)
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) preprocessed images -> {tap: (B, C, h, w)} float32 (h = w = grid when set)."""
        feats = resize_to_grid(self.backbone(images.to(self.device, non_blocking=True)), self.spec.grid)
        return {t: feats[t] for t in self.spec.taps}

    @torch.no_grad()
    def extract(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Features of PIL images (no gradient)."""
        return self(torch.stack([self.preprocess(im) for im in images]))

    @torch.no_grad()
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """tap -> (C, h, w) of one image (one forward pass of a blank image)."""
        s = self.backbone_spec.input_size
        was = self.backbone.training
        self.backbone.eval()
        out = self(torch.zeros(1, 3, s, s))
        self.backbone.train(was)
        return {t: tuple(f.shape[1:]) for t, f in out.items()}


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    spec: BackboneSpec,
    image_paths: Sequence[Path],
    grid: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    dtype: torch.dtype = torch.float16,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Features of every image held in RAM, tap -> (N, C, h, w) in ``image_paths`` order.

    Only for small sets (``data.features: memory``); the disk store is the default.

    Args:
        sizes: per image the annotated ``(width, height)`` (``load_image``'s ``expect_size``:
            an EXIF-rotated image whose annotation matches its stored frame is used in that frame).
    """
    extractor = FeatureExtractor(FeatureSpec(spec.name, "given", tuple(backbone.taps), grid), device, backbone)
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in backbone.taps}
    starts = range(0, len(image_paths), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="features", unit="batch")
    for i in starts:
        batch = [load_image(p, expect_size=None if sizes is None else sizes[i + j])
                 for j, p in enumerate(image_paths[i : i + batch_size])]
        for tap, f in extractor.extract(batch).items():
            chunks[tap].append(f.to("cpu", dtype))
    return {t: torch.cat(c) for t, c in chunks.items()}
