"""Checkpoints live in the models layer (:mod:`phraseground.models.checkpoint`); this name stays
for callers written before the move."""
from ..models.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint

__all__ = ["FORMAT", "load_checkpoint", "model_from_checkpoint", "model_payload", "save_checkpoint"]
