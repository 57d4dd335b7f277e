"""Pointing baselines computed on the same phrases and protocol as a model: centre and random point."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from phraseground.data.types import ImageSample
from phraseground.errors import ConfigError
from phraseground.eval.metrics import check_image_size
from phraseground.eval.pointing import DEFAULT_PROTOCOL, PointingGame, PointingProtocol

BASELINES = ("center", "random")


def center_point(width: int, height: int) -> tuple[float, float]:
    """The image centre ``(W / 2, H / 2)`` in pixels."""
    check_image_size(width, height)
    return width / 2, height / 2


def random_points(width: int, height: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points drawn uniformly over the image, (n, 2) float64 ``(x, y)`` in ``[0, W) x [0, H)``."""
    check_image_size(width, height)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
    return u * torch.tensor([width, height], dtype=torch.float64)


def _mean_reports(reports: list[dict]) -> dict:
    """Average the numbers of several PointingGame reports on the same phrases."""

    def mean(key: str, parts: list[dict]) -> float | None:
        values = [p[key] for p in parts]
        return None if values[0] is None else float(np.mean(values))

    first = reports[0]
    counts = ("accuracy", "hits", "misses")
    return {
        "protocol": first["protocol"],
        **{k: mean(k, reports) for k in counts},
        "n_evaluated": first["n_evaluated"],
        "skipped": first["skipped"],
        "per_type": {
            t: {k: mean(k, [r["per_type"][t] for r in reports]) for k in counts} for t in first["per_type"]
        },
    }


def evaluate_baseline(
    samples: Iterable[ImageSample],
    baseline: str = "center",
    protocol: str | PointingProtocol = DEFAULT_PROTOCOL,
    repeats: int = 10,
    seed: int = 0,
    box_frame: str = "xyxy",
) -> dict:
    """Pointing accuracy of a baseline over every phrase of every caption of ``samples``.

    ``"center"`` answers the image centre. ``"random"`` draws ``repeats`` uniform points per
    phrase from a generator seeded with ``seed`` (drawn for skipped phrases too, so a phrase
    gets the same points under every protocol) and scores each draw as its own pointing game;
    accuracy, hits and misses (overall and per type) are then means over the ``repeats`` games,
    so hits and misses may be fractional, and ``accuracy_std`` is their spread.

    Returns:
        a PointingGame report plus ``baseline`` (and for ``"random"``: ``repeats``, ``seed``,
        ``accuracy_std``, ``averaged_over_repeats=True``).

    Raises:
        ConfigError: unknown baseline or ``repeats`` < 1.
    """
    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats!r}")
    games = [PointingGame(protocol, box_frame) for _ in range(1 if baseline == "center" else repeats)]
    generator = torch.Generator().manual_seed(seed)
    for sample in samples:
        w, h = sample.width, sample.height
        for caption in sample.captions:
            for phrase in caption.phrases:
                if baseline == "center":
                    games[0].update(phrase, w, h, point=center_point(w, h))
                    continue
                judged = games[0].judge(phrase, w, h)  # once: every repeat scores the same phrase
                for game, (x, y) in zip(games, random_points(w, h, repeats, generator).tolist()):
                    game.update(phrase, w, h, point=(x, y), judged=judged)
    reports = [g.compute() for g in games]
    if baseline == "center":
        return {"baseline": "center", **reports[0]}
    accuracies = [r["accuracy"] for r in reports]
    return {
        "baseline": "random",
        **_mean_reports(reports),
        "accuracy_std": None if accuracies[0] is None else float(np.std(accuracies)),
        "repeats": repeats,
        "seed": seed,
        "averaged_over_repeats": True,
    }
