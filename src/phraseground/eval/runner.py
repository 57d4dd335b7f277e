"""The one evaluation runner: every phrase's heatmap is computed once, at the model's native
resolution, resized once per image size (batched), and given to every evaluator; each protocol
derives its point and box from it the way its published code does (``score.score_resized``).

``PhraseScores`` tallies the per-phrase results into the report every caller reads (``pointing``,
``attention_correctness``, ``box``, ``pointing_box_centre``), and ``phrase_record`` turns one
result into the output record of DECISIONS §2 plus the evaluation fields (``image_id``,
``caption_index``, ``phrase_index``, ``hit``, ``skip_reason``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from phraseground.data.types import ImageSample, Phrase
from phraseground.eval.metrics import Tally, TallyGroup, as_boxes, check_heatmap, union_box
from phraseground.eval.pointing import DEFAULT_PROTOCOL, PointingProtocol, frame_boxes, get_protocol, point_hits
from phraseground.eval.score import score_resized, skipped


class PhraseScores:
    """Running tallies of per-phrase results, reported in the shape of the metric classes."""

    def __init__(self, protocol: str | PointingProtocol = DEFAULT_PROTOCOL, boxes: bool = True) -> None:
        self.protocol = get_protocol(protocol)
        self.pointing = Tally(("hit",))
        self.attention = Tally(("share",))
        self.box = Tally(("hit", "hit_any_gt"))
        self.centre: Tally | None = None
        self.boxes = boxes

    def add(self, phrase: Phrase, r: dict, any_gt: bool | None = None, centre_hit: bool | None = None) -> None:
        """Record one phrase's ``score_resized`` result (plus the regressed-box extras)."""
        tallies = [self.pointing, self.attention, self.box] + ([self.centre] if centre_hit is not None else [])
        if r["skip_reason"] is not None:
            for t in tallies:
                t.skip(r["skip_reason"])
            return
        self.pointing.add(phrase.types, {"hit": float(r["hit"])})
        self.attention.add(phrase.types, {"share": r["attention_correctness"]})
        if r["box_correct"] is not None:
            self.box.add(phrase.types, {"hit": float(r["box_correct"]), "hit_any_gt": float(bool(any_gt))})
        if centre_hit is not None:
            self.centre.add(phrase.types, {"hit": float(centre_hit)})

    def report(self) -> dict:
        name = self.protocol.name

        def point(t: Tally) -> dict:
            return {"protocol": name, **Tally.counts(t.total, "hit"), "n_evaluated": t.total.n,
                    "skipped": dict(sorted(t.skipped.items())),
                    "per_type": {k: Tally.counts(g, "hit") for k, g in sorted(t.per_type.items())}}

        def both(g: TallyGroup) -> dict:
            return {**Tally.counts(g, "hit"), **Tally.counts(g, "hit_any_gt", suffix="_any_gt")}

        a = self.attention
        out = {
            "pointing": point(self.pointing),
            "attention_correctness": {
                "protocol": name, "attention_correctness": Tally.mean(a.total, "share"),
                "attention_rule": self.protocol.attention, "n_evaluated": a.total.n,
                "skipped": dict(sorted(a.skipped.items())),
                "per_type": {k: {"attention_correctness": Tally.mean(g, "share"), "n_evaluated": g.n}
                             for k, g in sorted(a.per_type.items())},
            },
        }
        if self.boxes:
            b = self.box
            out["box"] = {"protocol": name, "iou_threshold": 0.5, **both(b.total), "n_evaluated": b.total.n,
                          "skipped": dict(sorted(b.skipped.items())),
                          "per_type": {k: both(g) for k, g in sorted(b.per_type.items())}}
        if self.centre is not None:
            out["pointing_box_centre"] = point(self.centre)
        return out


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


def resize_batch(lows: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Bilinear resize (half-pixel centres, float32) of each (h, w) map to its (W, H), one
    ``F.interpolate`` call per group of equal map and image sizes."""
    out: list[np.ndarray | None] = [None] * len(lows)
    groups: dict[tuple, list[int]] = {}
    for i, (low, size) in enumerate(zip(lows, sizes)):
        groups.setdefault((tuple(low.shape), size), []).append(i)
    for (_, (w, h)), idx in groups.items():
        stack = torch.stack([lows[i] for i in idx]).to(torch.float32)[:, None]  # (P, 1, h', w')
        if stack.shape[-2:] == (h, w):
            res = stack[:, 0].numpy()
        else:
            res = F.interpolate(stack, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()  # (P, H, W)
        for j, i in enumerate(idx):
            out[i] = res[j]
    return out  # type: ignore[return-value]


def _xyxy(b) -> dict | None:
    if b is None:
        return None
    return {"xmin": round(float(b[0]), 2), "ymin": round(float(b[1]), 2),
            "xmax": round(float(b[2]), 2), "ymax": round(float(b[3]), 2)}


def phrase_record(sample: ImageSample, caption_index: int, phrase_index: int, phrase: Phrase, r: dict,
                  score: float | None = None, level: str | None = None, unknown_words: list[str] | None = None,
                  protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The DECISIONS §2 phrase record of one scored phrase, with the evaluation fields.

    The shape is ``phraseground.predict.records``' (every key present); ``box`` and ``point``
    are the protocol's (``akbari2019``: the union of heat2bbox's boxes, the argmax pixel centre);
    ``boxes`` holds the protocol's boxes (score None: the protocols do not score boxes)."""
    point = r.get("point")
    return {
        "label": phrase.text,
        "score": None if score is None else round(float(score), 6),
        "box": _xyxy(r.get("box")),
        "point": None if point is None else {"x": round(float(point[0]), 2), "y": round(float(point[1]), 2)},
        "boxes": [{"score": None, "box": _xyxy(b)} for b in (r.get("boxes") or [])],
        "level": level,
        "unknown_words": list(unknown_words or []),
        "concepts": None,
        "overlay": None,
        "image_id": sample.image_id,
        "caption_index": caption_index,
        "phrase_index": phrase_index,
        "protocol": protocol,
        "hit": r.get("hit"),
        "box_correct": r.get("box_correct"),
        "attention_correctness": None if r.get("attention_correctness") is None
        else round(float(r["attention_correctness"]), 6),
        "skip_reason": r.get("skip_reason"),
    }


@torch.no_grad()
def ground_captions(model, fs, pairs: list[tuple[int, int]]) -> list:
    """Ground every phrase of the given captions in their own images (the model's tokenizer;
    the phrases' word spans mapped onto its tokens)."""
    images = list(dict.fromkeys(i for i, _ in pairs))  # each image once, in order
    row = {i: k for k, i in enumerate(images)}
    device = next(model.parameters()).device
    feats = fs.select(images, device)
    caps = [fs.samples[i].captions[c] for i, c in pairs]
    texts = [model.tokenize_spans(cap.text, [p.word_span for p in cap.phrases]) for cap in caps]
    image_of = torch.tensor([row[i] for i, _ in pairs], dtype=torch.long, device=device)
    return model.ground(feats, [tokens for tokens, _ in texts], [spans for _, spans in texts], image_of)


@torch.no_grad()
def run_grounding(
    model,
    fs,
    protocol: str | PointingProtocol = DEFAULT_PROTOCOL,
    batch_size: int = 64,
    boxes: bool = True,
    progress: bool = False,
    box_frame: str = "xyxy",
    on_phrase: Callable[[ImageSample, int, int, Phrase, dict, dict], None] | None = None,
) -> dict:
    """Pointing game, box accuracy and attention correctness of ``model`` on a FeatureSet.

    Heatmap models are scored on their heatmaps; models that regress boxes on their boxes
    (accuracy@IoU≥0.5, union vs union, and the box centre as a pointing answer) plus the
    pointing game and attention on their attention heatmap.

    Args:
        on_phrase: called as ``on_phrase(sample, caption_index, phrase_index, phrase, result,
            extra)`` for every phrase (skipped ones too), ``extra`` holding the low-resolution
            ``heatmap``, ``score`` and ``level``: how ``--predictions-out`` writes records.
    """
    proto = get_protocol(protocol)
    model.eval()
    tally = PhraseScores(proto, boxes)
    levels = list(model.feature_needs.taps) if model.cfg is not None else []
    batches = caption_batches(fs.samples, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(list(batches), desc="evaluate", unit="batch")
    for pairs in batches:
        results = ground_captions(model, fs, pairs)
        items = []  # (sample, caption index, phrase index, phrase, low map, grounding result, k)
        for (i, c), res in zip(pairs, results):
            s = fs.samples[i]
            heat = res.heatmaps.detach().float().cpu()
            for k, phrase in enumerate(s.captions[c].phrases):
                items.append((s, c, k, phrase, heat[k], res))
        # skip rules first: skipped phrases need no resize
        todo, lows, sizes = [], [], []
        for it in items:
            s, c, k, phrase, low, res = it
            reason = "notvisual" if phrase.is_notvisual else None
            if reason is None:
                from phraseground.eval.pointing import box_skip_reason

                reason = box_skip_reason(phrase.boxes, s.width, s.height, proto, box_frame)
            if reason is not None:
                r = skipped(reason)
                tally.add(phrase, r, centre_hit=None)
                if res.boxes is not None:
                    _centre(tally).skip(reason)
                if on_phrase is not None:
                    on_phrase(s, c, k, phrase, r, _extra(res, k, low, levels))
                continue
            todo.append(it)
            lows.append(check_heatmap(low))
            sizes.append((s.width, s.height))
        for it, low, resized in zip(todo, lows, resize_batch(lows, sizes)):
            s, c, k, phrase, _, res = it
            regressed = res.boxes is not None
            r = score_resized(low, resized, phrase.boxes, s.width, s.height, proto, box_frame,
                              boxes=boxes and not regressed)
            any_gt = centre_hit = None
            if regressed:
                b = res.boxes[k].detach().float().cpu().to(torch.float64) \
                    * torch.tensor([s.width, s.height, s.width, s.height], dtype=torch.float64)
                gt = as_boxes(phrase.boxes)
                centre = (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)
                centre_hit = point_hits(centre, frame_boxes(gt, s.width, s.height, proto, box_frame), proto)
                _centre(tally)
                if boxes:
                    iou = box_iou(b[None], union_box(gt)[None])
                    r["box_correct"] = bool(float(iou) >= 0.5)
                    any_gt = bool(float(box_iou(b[None], gt).max()) >= 0.5)
                r["box"], r["boxes"] = b.tolist(), [b.tolist()]
            elif r["box_correct"] is not None and r["box"] is not None:
                any_gt = bool(float(box_iou(torch.tensor([r["box"]], dtype=torch.float64),
                                            as_boxes(phrase.boxes)).max()) >= 0.5)
            tally.add(phrase, r, any_gt=any_gt, centre_hit=centre_hit)
            if on_phrase is not None:
                on_phrase(s, c, k, phrase, r, _extra(res, k, low, levels))
    return tally.report()


def _centre(tally: PhraseScores) -> Tally:
    if tally.centre is None:
        tally.centre = Tally(("hit",))
    return tally.centre


def _extra(res, k: int, low: torch.Tensor, levels: list[str]) -> dict:
    lv = int(res.levels[k]) if res.levels is not None else -1
    return {"heatmap": low, "score": float(res.scores[k]), "level": levels[lv] if 0 <= lv < len(levels) else None}
