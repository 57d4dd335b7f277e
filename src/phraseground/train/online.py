"""Online features (``data.features: online``): the backbone runs inside the training step on
images decoded by a DataLoader, so it can be fine-tuned (``train.finetune_backbone_from``).

``OnlineModel`` puts the backbone in front of the grounding model (what DDP wraps, so the
backbone's gradients are averaged too); ``OnlineImages`` is the features object of a split in
this mode: per epoch a DataLoader (workers, pinned memory on CUDA) of the images of each step,
and ``select`` (validation, evaluation) runs the current backbone without gradient.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from ..feature_store import ImageDataset
from ..features import FeatureExtractor
from ..models.base import GroundingModel, TrainBatch


class OnlineModel(nn.Module):
    """backbone -> grounding model; ``forward(batch)`` fills ``batch.features`` from ``batch.images``."""

    def __init__(self, model: GroundingModel, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.model = model
        self.extractor = extractor

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        if batch.images is not None:
            trainable = any(p.requires_grad for p in self.extractor.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
                batch.features = self.extractor(batch.images)
        return self.model(batch)


class OnlineImages:
    """A split's images for online features: ``samples``, ``len()``, ``loader(batches)``, ``select``."""

    def __init__(self, samples: list, extractor: FeatureExtractor, workers: int = 0) -> None:
        self.samples = samples
        self.extractor = extractor
        self.workers = workers
        self.dataset = ImageDataset([s.image_path for s in samples], extractor.backbone_spec,
                                    [(s.width, s.height) for s in samples])

    def __len__(self) -> int:
        return len(self.samples)

    def loader(self, batches: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
        """(B, 3, S, S) inputs of each batch of image indices, decoded by ``workers`` processes."""
        return iter(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[list(b) for b in batches], num_workers=self.workers,
            pin_memory=self.extractor.device.type == "cuda",
            generator=torch.Generator()))  # its own generator: the global RNG (resume) is not consumed

    @torch.no_grad()
    def select(self, image_indices: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Features of the given images from the current backbone (eval mode, no gradient)."""
        idx = torch.as_tensor(image_indices, dtype=torch.long).tolist()
        was = self.extractor.backbone.training
        self.extractor.backbone.eval()
        try:
            feats = self.extractor(torch.stack([self.dataset[i] for i in idx]))
        finally:
            self.extractor.backbone.train(was)
        return {t: f.to(device, torch.float32) for t, f in feats.items()}
