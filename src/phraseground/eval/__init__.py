"""Evaluation: the protocols (``akbari2019``, ``engilberge2018``, ``tolerance15``), box and
attention metrics, retrieval, baselines, and ``score_heatmap`` to score any method's heatmaps."""
from phraseground.eval.score import score_heatmap

__all__ = ["score_heatmap"]
