"""Run a grounding model over a dataset split and score it (``runner.run_grounding``)."""
from __future__ import annotations

from ..models.base import GroundingModel
from .runner import caption_batches, ground_captions, run_grounding

__all__ = ["caption_batches", "evaluate_grounding", "ground_captions"]


def evaluate_grounding(model: GroundingModel, fs, protocol: str = "akbari2019", batch_size: int = 64,
                       boxes: bool = True, progress: bool = False, box_frame: str = "xyxy",
                       on_phrase=None) -> dict:
    """Pointing game, box accuracy and attention correctness of ``model`` on a FeatureSet
    (the one runner, ``phraseground.eval.runner.run_grounding``)."""
    return run_grounding(model, fs, protocol, batch_size=batch_size, boxes=boxes, progress=progress,
                         box_frame=box_frame, on_phrase=on_phrase)
