"""Preprocessing and frozen-backbone feature extraction (images are opened by ``data.images.load_image``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.images import load_image
from .encoders.vision import BackboneSpec, TapExtractor


def images_to_tensor(images: Sequence[Image.Image], spec: BackboneSpec) -> torch.Tensor:
    """Resize to the backbone's square input and normalise -> (B, 3, S, S) float32."""
    s = spec.input_size
    arr = np.stack([np.asarray(im.resize((s, s), Image.BILINEAR), dtype=np.float32) for im in images])  # (B, S, S, 3)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0  # (B, 3, S, S)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    backbone: TapExtractor,
    spec: BackboneSpec,
    image_paths: Sequence[Path],
    grid: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    dtype: torch.dtype = torch.float16,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the frozen backbone over images.

    Args:
        grid: when given, every tap is bilinearly resized to (grid, grid) here, once.
        dtype: storage type of the returned features (float16 halves the memory).
        sizes: per image the annotated ``(width, height)``; an EXIF-rotated image whose
            annotation matches its stored frame is used in that frame (``load_image``'s ``expect_size``).

    Returns:
        tap -> (N, C, h, w) features, in the order of ``image_paths``.
    """
    backbone = backbone.to(device)
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in backbone.taps}
    starts = range(0, len(image_paths), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="features", unit="batch")
    for i in starts:
        batch = [load_image(p, expect_size=None if sizes is None else sizes[i + j])
                 for j, p in enumerate(image_paths[i : i + batch_size])]
        x = images_to_tensor(batch, spec).to(device)
        for tap, f in backbone(x).items():
            if grid is not None:
                f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
            chunks[tap].append(f.to("cpu", dtype))
    return {t: torch.cat(c) for t, c in chunks.items()}
