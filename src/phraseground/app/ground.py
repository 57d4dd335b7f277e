"""``phraseground ground``: one image (-> ``grounding.json``) or a batch (``--input requests.jsonl``
or ``--images DIR``, -> ``predictions.jsonl``), with overlays on request."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

from ..errors import PhrasegroundError
from ..io import safe_filename, write_text

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("image", nargs="?", help="one image (writes OUT/grounding.json); or use --input / --images")
    s.add_argument("--phrase", action="append", default=[], help="a phrase (repeatable; default: none)")
    s.add_argument("--sentence", action="append", default=[],
                   help="a sentence with phrases in [brackets]; without brackets the sentence is one phrase "
                        "(repeatable; default: none)")
    s.add_argument("--input", metavar="REQUESTS.jsonl", default=None,
                   help='batch: one {"image": PATH, "phrases": [...]} or {"image": PATH, "sentence": "[a] b [c]"} '
                        "per line; a relative PATH is taken from the current folder, else from the file's folder "
                        "(default: none)")
    s.add_argument("--images", metavar="DIR", default=None,
                   help=f"batch: every image in DIR ({', '.join(IMAGE_SUFFIXES)}), with the --phrase/--sentence given "
                        "(default: none)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training checkpoint (best.pt / last.pt)")
    src.add_argument("--pretrained", metavar="DIR", help="a folder written by `phraseground export`")
    src.add_argument("--model", help="a model that needs no checkpoint: cam (class activation maps of the ImageNet "
                                     "classes nearest to the phrase)")
    s.add_argument("--backbone-weights", default=None,
                   help="local file for the frozen backbone's weights (default: the model's weights id, from the "
                        "package or the standard caches)")
    s.add_argument("--out", required=True,
                   help="output folder for grounding.json (one image) or predictions.jsonl (a batch) and the overlay "
                        "PNGs (created with its missing parents; overlay names are made safe from the phrase)")
    ov = s.add_mutually_exclusive_group()
    ov.add_argument("--overlays", dest="overlays", action="store_true", default=None,
                    help="write one overlay PNG per phrase (default: on for one image, off for a batch)")
    ov.add_argument("--no-overlays", dest="overlays", action="store_false", help="write no overlay")
    s.add_argument("--batch-size", type=int, default=8, help="images per backbone pass (default: 8)")
    s.add_argument("--top-k", type=int, default=3, help="candidate boxes per phrase in 'boxes' (default: 3)")


def _write_overlays(rec: dict[str, Any], image, out: Path, stem: str | None) -> None:
    """One overlay PNG per phrase (its heatmap popped from the record, its name put in)."""
    import torch

    from ..predict.records import box_tuple
    from ..viz import overlay, save_png

    for k, p in enumerate(rec["predictions"]):
        hm = p.pop("heatmap")
        box = box_tuple(p["box"])
        point = None if p["point"] is None else (p["point"]["x"], p["point"]["y"])
        name = safe_filename(p["label"], k if stem is None else f"{stem}_{k:02d}")
        save_png(overlay(image, torch.from_numpy(hm), point, box, p["label"]), out / name)
        p["overlay"] = name if stem is None else f"overlays/{name}"


def _requests_from_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, (image, texts) or PhrasegroundError) for each non-blank line."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise PhrasegroundError(f"{path}: cannot read requests ({e.strerror or e})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                yield n, PhrasegroundError(f"not JSON ({e.msg})")
                continue
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                yield n, PhrasegroundError('a request is an object with "image" (a path) and "phrases" or "sentence"')
                continue
            texts = []
            phrases = item.get("phrases", [])
            if isinstance(phrases, str) or not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                yield n, PhrasegroundError('"phrases" must be a list of strings')
                continue
            texts.extend(phrases)
            if "sentence" in item:
                if not isinstance(item["sentence"], str):
                    yield n, PhrasegroundError('"sentence" must be a string')
                    continue
                texts.append(item["sentence"])
            if not texts:
                yield n, PhrasegroundError('no "phrases" and no "sentence": nothing to ground')
                continue
            image = Path(item["image"])
            if not image.is_absolute() and not image.exists() and (path.parent / image).exists():
                image = path.parent / image
            yield n, (image, texts)


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def _grounder(args: argparse.Namespace, kw: dict[str, Any]):
    from ..predict import Grounder

    if args.checkpoint:
        return Grounder.from_checkpoint(args.checkpoint, **kw)
    if args.model:
        return Grounder.from_model(args.model, **kw)
    return Grounder.from_pretrained(args.pretrained, **kw)


def run_ground(args: argparse.Namespace) -> int:
    from ..predict import Grounder, json_ready

    texts = list(args.phrase) + list(args.sentence)
    modes = [m for m in ("image", "input", "images") if getattr(args, m)]
    if len(modes) != 1:
        raise PhrasegroundError("give one IMAGE, or --input REQUESTS.jsonl, or --images DIR")
    if args.input and texts:
        raise PhrasegroundError("with --input the phrases come from the file; drop --phrase/--sentence")
    if not args.input and not texts:
        raise PhrasegroundError("give at least one --phrase or --sentence")
    if args.batch_size < 1 or args.top_k < 1:
        raise PhrasegroundError("--batch-size and --top-k must be >= 1")
    kw = dict(device=args.device, backbone_weights=args.backbone_weights, batch_size=args.batch_size, top_k=args.top_k)
    out = Path(args.out)

    if args.image:
        grounder = _grounder(args, kw)
        prepared = grounder.prepare(args.image, texts)  # every input checked before anything is written
        rec = grounder.run_prepared([prepared], heatmap=True)[0]
        out.mkdir(parents=True, exist_ok=True)
        if args.overlays is not False:
            _write_overlays(rec, prepared.image, out, None)
        rec = json_ready(rec)
        rec.update(model=grounder.model_name, source=grounder.source)
        write_text(out / "grounding.json", json.dumps(rec, indent=2) + "\n")
        for p in rec["predictions"]:
            b = p["box"]
            print(f"{p['label']!r}: point {p['point'] and (p['point']['x'], p['point']['y'])}, "
                  f"box {b and tuple(b.values())}, score {p['score']:.3f}, level {p['level']}")
        print(f"wrote grounding.json{' and overlays' if args.overlays is not False else ''} to {out}")
        return 0

    if args.input:
        source = Path(args.input)
        items = _requests_from_jsonl(source)
        total = _count_lines(source)
        where = str(source)
    else:
        folder = Path(args.images)
        if not folder.is_dir():
            raise PhrasegroundError(f"{folder}: not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise PhrasegroundError(f"{folder}: no image ({', '.join(IMAGE_SUFFIXES)})")
        items = ((k + 1, (p, texts)) for k, p in enumerate(files))
        total = len(files)
        where = str(folder)
    grounder = _grounder(args, kw)
    overlays = bool(args.overlays)
    out.mkdir(parents=True, exist_ok=True)
    labels: list[str] = []

    def requests():
        for n, item in items:
            labels.append(f"{where}:{n}" if args.input else str(item[0]))
            yield item

    lines: list[str] = []
    failures: list[dict[str, Any]] = []
    from tqdm import tqdm

    bar = tqdm(total=total, desc="ground", unit="image", disable=args.quiet or None, file=sys.stderr)
    for k, res in enumerate(grounder.stream(requests(), heatmap=overlays, return_errors=True)):
        bar.update(1)
        if isinstance(res, PhrasegroundError):
            bar.clear()
            print(f"phraseground: error: {labels[k]}: {res}", file=sys.stderr)
            failures.append({"request": labels[k], "error": str(res)})
            continue
        if overlays:
            _write_overlays(res, _reload(res["image"]), out / "overlays", Path(res["image"]).stem)
        lines.append(json.dumps(json_ready(res)) + "\n")
    bar.close()
    write_text(out / "predictions.jsonl", "".join(lines))
    if failures:
        write_text(out / "errors.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    else:
        (out / "errors.jsonl").unlink(missing_ok=True)
    print(f"grounded {len(lines)} images, {len(failures)} failed; wrote {out / 'predictions.jsonl'}"
          + (f" and {out / 'errors.jsonl'}" if failures else ""))
    return 1 if failures else 0


def _reload(image: str):
    from ..predict.grounder import _load_image

    return _load_image(image)[0]
