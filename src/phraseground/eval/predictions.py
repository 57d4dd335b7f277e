"""Per-phrase predictions out of an evaluation (``evaluate --predictions-out``) and back in
(``evaluate --predictions``): the file one reads is exactly the file the other writes.

File format: JSON lines, one object per image in the shape of DECISIONS §2,
``{"image", "width", "height", "predictions": [record, ...]}``, each record the §2 phrase record
(``label, score, box {xmin, ymin, xmax, ymax}, point {x, y}, boxes, level, unknown_words``) plus
the evaluation fields ``image_id, caption_index, phrase_index, protocol, hit, box_correct,
attention_correctness, skip_reason``. With heatmaps, each image's low-resolution maps go to one
``.npz`` file in ``<FILE stem>_heatmaps/`` (keys ``c<caption>_p<phrase>``), named in the records
as ``heatmap`` (path relative to the JSONL file) and ``heatmap_key``; a ``.npy`` file (no key)
is read too.

Scoring a file (``score_predictions``): ground truth comes from the dataset, matched by
``(image_id, caption_index, phrase_index)``; the skip rules are re-applied. A record with a
heatmap is scored exactly as the model would be (``score_heatmap``); a record with only a
``point`` is scored on it by the protocol's hit rule, and its ``box`` (continuous pixel xyxy)
by IoU ≥ 0.5 against the union of the GT boxes (as regressed boxes are), its attention
correctness taken from the record (0 when absent); a GT phrase without a record is a miss,
counted in ``missing``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from phraseground.data.types import ImageSample
from phraseground.errors import PhrasegroundError
from phraseground.eval.metrics import as_boxes, union_box
from phraseground.eval.pointing import DEFAULT_PROTOCOL, box_skip_reason, frame_boxes, get_protocol, point_hits
from phraseground.eval.runner import PhraseScores, phrase_record
from phraseground.eval.score import score_heatmap, skipped
from phraseground.io import atomic_write, safe_filename


class PredictionsWriter:
    """Collects phrase records (``on_phrase`` of ``run_grounding``) and writes the JSONL file.

    Args:
        path: the JSONL file.
        heatmaps: also write each phrase's low-resolution heatmap (``.npz`` per image).
    """

    def __init__(self, path: str | Path, protocol: str = DEFAULT_PROTOCOL, heatmaps: bool = False) -> None:
        self.path = Path(path)
        self.protocol = get_protocol(protocol).name
        self.heatmaps = heatmaps
        self.images: dict[str, dict] = {}
        self.maps: dict[str, dict[str, np.ndarray]] = {}
        self.order: list[str] = []

    def __call__(self, sample: ImageSample, c: int, k: int, phrase, r: dict, extra: dict) -> None:
        key = sample.image_id
        if key not in self.images:
            self.images[key] = {"image": str(sample.image_path), "image_id": key, "width": sample.width,
                                "height": sample.height, "predictions": []}
            self.order.append(key)
        rec = phrase_record(sample, c, k, phrase, r, extra.get("score"), extra.get("level"), protocol=self.protocol)
        if self.heatmaps and extra.get("heatmap") is not None:
            self.maps.setdefault(key, {})[f"c{c}_p{k}"] = np.asarray(extra["heatmap"], dtype=np.float32)
        self.images[key]["predictions"].append(rec)

    def close(self) -> None:
        """Write the heatmap files, then the JSONL (each atomically)."""
        folder = self.path.parent / f"{self.path.stem}_heatmaps"
        if self.heatmaps:
            folder.mkdir(parents=True, exist_ok=True)
            for n, key in enumerate(self.order):
                maps = self.maps.get(key)
                if not maps:
                    continue
                name = safe_filename(key, n, suffix=".npz")
                with atomic_write(folder / name, "wb") as f:
                    np.savez_compressed(f, **maps)
                for rec in self.images[key]["predictions"]:
                    hk = f"c{rec['caption_index']}_p{rec['phrase_index']}"
                    if hk in maps:
                        rec["heatmap"], rec["heatmap_key"] = f"{folder.name}/{name}", hk
        with atomic_write(self.path, "w") as f:
            for key in self.order:
                f.write(json.dumps(self.images[key], ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> dict[tuple[str, int, int], dict]:
    """Records of a predictions file by ``(image_id, caption_index, phrase_index)``.

    Each line is an image object with ``predictions`` (what ``--predictions-out`` writes) or a
    single phrase record. Raises PhrasegroundError naming the line on malformed input.
    """
    path = Path(path)
    out: dict[tuple[str, int, int], dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PhrasegroundError(f"{path}: cannot read predictions ({e.strerror or e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PhrasegroundError(f"{path}:{n}: not JSON ({e.msg})") from None
        recs = obj.get("predictions", [obj]) if isinstance(obj, dict) else None
        if not isinstance(recs, list):
            raise PhrasegroundError(f"{path}:{n}: expected an image object with 'predictions' or a phrase record")
        for rec in recs:
            try:
                key = (str(rec.get("image_id", obj.get("image_id"))), int(rec["caption_index"]), int(rec["phrase_index"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise PhrasegroundError(
                    f"{path}:{n}: a record needs image_id, caption_index and phrase_index") from None
            out[key] = {**rec, "_line": n}
    return out


def _load_heatmap(base: Path, rec: dict) -> np.ndarray:
    f = base / rec["heatmap"]
    try:
        data = np.load(f, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return data[rec.get("heatmap_key") or data.files[0]]
        return data
    except (OSError, KeyError, ValueError) as e:
        raise PhrasegroundError(f"{f}: cannot read the heatmap of record line {rec['_line']} ({e})") from None


def _xyxy(d) -> list[float] | None:
    if d is None:
        return None
    if isinstance(d, dict):
        return [float(d["xmin"]), float(d["ymin"]), float(d["xmax"]), float(d["ymax"])]
    return [float(v) for v in d]


def score_predictions(samples: list[ImageSample], path: str | Path, protocol: str = DEFAULT_PROTOCOL,
                      box_frame: str = "xyxy") -> dict:
    """Score a predictions file against the samples' ground truth; the report of ``run_grounding``
    plus ``missing`` (GT phrases without a record) and ``scored_from`` (heatmap / point counts)."""
    proto = get_protocol(protocol)
    recs = read_predictions(path)
    base = Path(path).parent
    tally = PhraseScores(proto, boxes=True)
    missing = 0
    sources = {"heatmap": 0, "point": 0}
    for s in samples:
        for c, cap in enumerate(s.captions):
            for k, phrase in enumerate(cap.phrases):
                reason = "notvisual" if phrase.is_notvisual else box_skip_reason(phrase.boxes, s.width, s.height,
                                                                                   proto, box_frame)
                if reason is not None:
                    tally.add(phrase, skipped(reason))
                    continue
                rec = recs.get((s.image_id, c, k))
                if rec is None:
                    missing += 1
                    r = {"skip_reason": None, "hit": False, "attention_correctness": 0.0, "box_correct": False}
                elif rec.get("heatmap"):
                    sources["heatmap"] += 1
                    r = score_heatmap(_load_heatmap(base, rec), phrase.boxes, (s.width, s.height), proto, box_frame)
                    if r["box"] is not None:
                        any_gt = float(box_iou(torch.tensor([r["box"]], dtype=torch.float64),
                                               as_boxes(phrase.boxes)).max()) >= 0.5
                        tally.add(phrase, r, any_gt=any_gt)
                        continue
                else:
                    sources["point"] += 1
                    pt = rec.get("point")
                    gt = as_boxes(phrase.boxes)
                    hit = pt is not None and point_hits(
                        (float(pt["x"]), float(pt["y"])) if isinstance(pt, dict) else tuple(map(float, pt)),
                        frame_boxes(gt, s.width, s.height, proto, box_frame), proto)
                    box = _xyxy(rec.get("box"))
                    correct = box is not None and float(box_iou(torch.tensor([box], dtype=torch.float64),
                                                                union_box(gt)[None])) >= 0.5
                    att = rec.get("attention_correctness")
                    r = {"skip_reason": None, "hit": bool(hit), "box_correct": bool(correct),
                         "attention_correctness": float(att) if att is not None else 0.0}
                tally.add(phrase, r, any_gt=False)
    report = tally.report()
    report["missing"] = missing
    report["scored_from"] = sources
    return report
