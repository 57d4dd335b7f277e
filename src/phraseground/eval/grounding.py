"""Run a grounding model over a dataset split and score it with the harness's metrics."""
from __future__ import annotations

from typing import Iterator

import torch

from ..data.types import ImageSample
from ..models.base import GroundingModel, GroundingResult
from .boxes import AttentionCorrectness, BoxAccuracy
from .pointing import PointingGame


def caption_batches(samples: list[ImageSample], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """(image index, caption index) pairs of every caption that holds phrases, in batches."""
    batch: list[tuple[int, int]] = []
    for i, s in enumerate(samples):
        for c, cap in enumerate(s.captions):
            if cap.phrases:
                batch.append((i, c))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


@torch.no_grad()
def ground_captions(model: GroundingModel, fs, pairs: list[tuple[int, int]]) -> list[GroundingResult]:
    """Ground every phrase of the given captions in their own images (the model's tokenizer;
    the phrases' word spans mapped onto its tokens)."""
    feats = fs.select([i for i, _ in pairs], next(model.parameters()).device)
    caps = [fs.samples[i].captions[c] for i, c in pairs]
    texts = [model.tokenize_spans(cap.text, [p.word_span for p in cap.phrases]) for cap in caps]
    return model.ground(feats, [tokens for tokens, _ in texts], [spans for _, spans in texts])


@torch.no_grad()
def evaluate_grounding(model: GroundingModel, fs, protocol: str = "akbari2019", batch_size: int = 64,
                       boxes: bool = True, progress: bool = False, box_frame: str = "xyxy") -> dict:
    """Pointing game, box accuracy and attention correctness of ``model`` on a FeatureSet.

    Models that regress boxes are scored on their boxes (accuracy@IoU≥0.5) and on the
    box centre as the pointing answer, plus the pointing game on their attention heatmap.
    """
    model.eval()
    pointing, attention = PointingGame(protocol, box_frame), AttentionCorrectness(protocol, box_frame)
    box_acc = BoxAccuracy(protocol, box_frame=box_frame) if boxes else None
    centre_pointing = None
    batches = caption_batches(fs.samples, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(list(batches), desc="evaluate", unit="batch")
    for pairs in batches:
        for (i, c), res in zip(pairs, ground_captions(model, fs, pairs)):
            s = fs.samples[i]
            for k, phrase in enumerate(s.captions[c].phrases):
                hm = res.heatmaps[k].float().cpu()
                pointing.update(phrase, s.width, s.height, heatmap=hm)
                attention.update(phrase, s.width, s.height, heatmap=hm)
                if res.boxes is not None:
                    b = res.boxes[k].float().cpu() * torch.tensor([s.width, s.height, s.width, s.height])
                    if centre_pointing is None:
                        centre_pointing = PointingGame(protocol, box_frame)
                    centre_pointing.update(phrase, s.width, s.height,
                                           point=(float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2))
                    if box_acc is not None:
                        box_acc.update(phrase, s.width, s.height, boxes=b)
                elif box_acc is not None:
                    box_acc.update(phrase, s.width, s.height, heatmap=hm)
    report = {"pointing": pointing.compute(), "attention_correctness": attention.compute()}
    if box_acc is not None:
        report["box"] = box_acc.compute()
    if centre_pointing is not None:
        report["pointing_box_centre"] = centre_pointing.compute()
    return report
