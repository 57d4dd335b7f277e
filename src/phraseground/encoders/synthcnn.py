"""The small CNN that stands in for an ImageNet backbone on the synthetic benchmark.

Pretrained by the project on a synthetic classification task (shape, colour and size of one
object on a textured background; ``scripts/pretrain_synthcnn.py``), then frozen. Taps:
``c2`` (stride 4), ``c3`` (stride 8), ``c4`` (stride 16).
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SynthCNN(nn.Module):
    """Four stride-2 stages (widths 32, 64, 96, 128) with classification heads for pretraining."""

    def __init__(self, n_shapes: int = 8, n_colours: int = 8, n_sizes: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.c2 = _block(32, 64)
        self.c3 = _block(64, 96)
        self.c4 = _block(96, 128)
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(128, n_shapes), "colour": nn.Linear(128, n_colours), "size": nn.Linear(128, n_sizes)
        })

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, S, S) -> logits per head, from the global max-pooled c4 map."""
        f = self.c4(self.c3(self.c2(self.c1(x))))
        pooled = f.amax(dim=(2, 3))  # (B, 128)
        return {k: h(pooled) for k, h in self.heads.items()}
