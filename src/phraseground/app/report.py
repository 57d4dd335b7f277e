"""Evaluation reports to look at: ``report.html`` (one self-contained file, images embedded as
data URIs) and ``report.md`` (the same content, images as PNG files beside it).

Both hold the headline table, the learning curve read from the run's ``log.jsonl`` (training
loss and validation score per epoch), pointing accuracy per phrase type beside the centre and
random baselines, a grid of overlays (ground-truth boxes in cyan, the prediction in lime, hit /
miss / skipped in each title) and a separate grid of the worst misses.

The report reads per-phrase evaluation records: dicts with ``image_id``, ``caption_index``,
``phrase_index``, ``label``, ``point`` (``{"x", "y"}`` or None), ``hit`` (True / False / None when
skipped) and ``skip_reason``; ``box`` (``{"xmin", ...}``) when known. Ground-truth boxes and
image files come from the dataset samples. Plots use matplotlib's Agg backend.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.types import ImageSample
from ..io import write_bytes, write_text
from ..viz import GT_COLOUR, PRED_COLOUR, display_overlay

PLOTS = "report_files"  # folder of the PNGs that report.md links to

STATUS_COLOURS = {"hit": "#1a9850", "miss": "#d73027", "skipped": "#7f7f7f"}
HeatmapFn = Callable[[list[dict]], list[torch.Tensor]]


# ----------------------------------------------------------------------------- records


def status(record: dict) -> str:
    """``"hit"``, ``"miss"`` or ``"skipped"`` of one evaluation record."""
    if record.get("skip_reason"):
        return "skipped"
    return "hit" if record.get("hit") else "miss"


def tile_title(record: dict) -> str:
    """The title of a record's overlay: its status (with the skip reason) and the phrase."""
    s = status(record)
    head = f"SKIPPED ({record['skip_reason']})" if s == "skipped" else s.upper()
    return f"{head} · {record['label']}"


def _key(record: dict) -> tuple[str, int, int]:
    return str(record["image_id"]), int(record["caption_index"]), int(record["phrase_index"])


def _gt_boxes(samples_by_id: dict[str, ImageSample], record: dict) -> list[tuple[float, ...]]:
    s = samples_by_id[str(record["image_id"])]
    return [tuple(b) for b in s.captions[record["caption_index"]].phrases[record["phrase_index"]].boxes]


def miss_distance(record: dict, gt_boxes: Sequence[Sequence[float]], width: int, height: int) -> float:
    """How far a miss is: distance of its point from the nearest GT box over the image diagonal
    (``inf`` without a point: an all-zero heatmap gives no answer)."""
    p = record.get("point")
    if not p:
        return math.inf
    x, y = float(p["x"]), float(p["y"])
    best = math.inf
    for x0, y0, x1, y1 in gt_boxes:
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        best = min(best, math.hypot(dx, dy))
    return best / math.hypot(width, height)


def select_grid(records: Sequence[dict], n: int = 12) -> list[dict]:
    """The first ``n`` records of the first caption of each image, in order (skipped ones included,
    so the grid shows what a skip looks like)."""
    lowest: dict = {}  # image id -> its lowest caption index (one pass, not one per record)
    for q in records:
        lowest[q["image_id"]] = min(int(q["caption_index"]), lowest.get(q["image_id"], math.inf))
    first = [r for r in records if int(r["caption_index"]) == lowest[r["image_id"]]]
    return first[:n]


def select_worst(records: Sequence[dict], samples_by_id: dict[str, ImageSample], n: int = 8) -> list[dict]:
    """The ``n`` misses farthest from their ground truth (see ``miss_distance``)."""
    misses = [r for r in records if status(r) == "miss"]

    def dist(r: dict) -> float:
        s = samples_by_id[str(r["image_id"])]
        return miss_distance(r, _gt_boxes(samples_by_id, r), s.width, s.height)

    return sorted(misses, key=dist, reverse=True)[:n]


# ----------------------------------------------------------------------------- learning curve


def learning_curve(log_path: Path) -> dict[str, list]:
    """Per epoch (1-based): the mean training loss and the validation score from ``log.jsonl``.

    Lines that are not JSON (a run killed mid-write) are ignored; a resumed run's repeated
    validation line for an epoch keeps the last one.
    """
    losses: dict[int, list[float]] = {}
    vals: dict[int, float] = {}
    for line in Path(log_path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "epoch" not in rec:
            continue
        e = int(rec["epoch"]) + 1
        if "val_score" in rec and rec["val_score"] is not None:
            vals[e] = float(rec["val_score"])
        elif "loss" in rec:
            losses.setdefault(e, []).append(float(rec["loss"]))
    epochs = sorted(set(losses) | set(vals))
    return {
        "epoch": epochs,
        "train_loss": [float(np.mean(losses[e])) if e in losses else None for e in epochs],
        "val_score": [vals.get(e) for e in epochs],
    }


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the object API renders with Agg, no global backend state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_learning_curve(curve: dict[str, list], title: str = "") -> bytes:
    """PNG: training loss (left axis) and validation score (right axis) per epoch."""
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    ep = curve["epoch"]
    tl = [(e, v) for e, v in zip(ep, curve["train_loss"]) if v is not None]
    vs = [(e, v) for e, v in zip(ep, curve["val_score"]) if v is not None]
    c_loss, c_val = "#3b528b", "#21918c"  # viridis samples
    if tl:
        ax.plot(*zip(*tl), marker="o", color=c_loss, label="training loss (mean over the epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color=c_loss)
    ax2 = ax.twinx()
    if vs:
        ax2.plot(*zip(*vs), marker="s", color=c_val, label="validation score")
    ax2.set_ylabel("validation score", color=c_val)
    ax2.set_ylim(0, 1)
    ax.set_xticks(ep)
    ax.set_title(title or "learning curve")
    lines = ax.get_lines() + ax2.get_lines()
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    return _png(fig)


def plot_per_type(per_type: dict[str, dict[str, float | None]], title: str = "") -> bytes:
    """PNG: grouped bars, pointing accuracy per phrase type, one bar per system (model, baselines)."""
    from matplotlib import colormaps

    systems = list(per_type)
    types = sorted({t for v in per_type.values() for t in v})
    fig = _figure(max(4.5, 1.1 * len(types) + 2.5), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(systems))
    cmap = colormaps["viridis"]
    for k, name in enumerate(systems):
        vals = [per_type[name].get(t) for t in types]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(types))]
        bars = ax.bar(xs, [v or 0.0 for v in vals], width, label=name,
                      color=cmap(k / max(1, len(systems) - 1) * 0.85))
        for b, v in zip(bars, vals):
            if v is not None:
                ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"{v:.2f}",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(types)), types)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("pointing accuracy")
    ax.set_title(title or "per phrase type")
    ax.legend(fontsize=8, loc="upper left", ncols=len(systems))
    return _png(fig)


def plot_grid(tiles: Sequence[Image.Image], titles: Sequence[str], statuses: Sequence[str],
              title: str = "", cols: int = 4) -> bytes:
    """PNG: the tiles in a grid, each titled (colour by hit / miss / skipped)."""
    rows = max(1, math.ceil(len(tiles) / cols))
    fig = _figure(3.0 * cols, 3.25 * rows + 0.4)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < len(tiles):
            ax.imshow(np.asarray(tiles[i]))
            text = titles[i] if len(titles[i]) <= 38 else titles[i][:37] + "…"
            ax.set_title(text, fontsize=9, color=STATUS_COLOURS[statuses[i]])
    if title:
        fig.suptitle(title)
    return _png(fig)


def render_tile(sample: ImageSample, record: dict, heatmap: torch.Tensor | None, min_side: int = 224,
                max_side: int = 448) -> Image.Image:
    """One record's overlay at display size (small images upscaled, large ones scaled down)."""
    from ..data.images import load_image

    p, b = record.get("point"), record.get("box")
    image = load_image(Path(sample.image_path), expect_size=(sample.width, sample.height))
    return display_overlay(image, heatmap,
                           point=(p["x"], p["y"]) if p else None,
                           box=(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) if b else None,
                           gt_boxes=_gt_boxes({str(sample.image_id): sample}, record),
                           min_side=min_side, max_side=max_side)


# ----------------------------------------------------------------------------- documents


def _data_uri(data: bytes) -> str:
    kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _tile_jpeg(tile: Image.Image) -> bytes:
    """A tile for the page: JPEG (the textured photos and heatmaps compress 5-10x better than PNG)."""
    buf = io.BytesIO()
    tile.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def headline_rows(summary: dict) -> list[tuple[str, str, str]]:
    """(system, pointing accuracy, note) rows of the headline table."""
    b = summary.get("baselines", {})
    rows = [(summary["model"], _fmt(summary.get("pointing_accuracy")),
             f"box accuracy (IoU ≥ 0.5) {_fmt(summary.get('box_accuracy'))}, "
             f"attention correctness {_fmt(summary.get('attention_correctness'))}")]
    if "center" in b:
        rows.append(("centre baseline", _fmt(b["center"]), "the image centre"))
    if "random" in b:
        rows.append((f"random baseline (mean of {b.get('random_repeats', '?')})", _fmt(b["random"]),
                     "a uniform random point"))
    return rows


def _intro(summary: dict) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in summary.get("skipped", {}).items()) or "none"
    return (f"{summary.get('n_images', '?')} images, {summary.get('n_phrases', '?')} phrases evaluated "
            f"(hits {summary.get('hits', '?')}, misses {summary.get('misses', '?')}; skipped: {skipped}); "
            f"protocol `{summary.get('protocol', '?')}`.")


def _extra_lines(summary: dict) -> list[str]:
    lines = []
    if "train_seconds" in summary:
        lines.append(f"Training: {summary['train_seconds']:.0f} s"
                     + (f"; whole demo {summary['total_seconds']:.0f} s" if "total_seconds" in summary else "")
                     + (f"; peak memory {summary['peak_memory_mb']:.0f} MB" if summary.get("peak_memory_mb") is not None else "")
                     + ".")
    if "retrieval" in summary:
        lines.append("Retrieval (full test split): " + json.dumps(summary["retrieval"]))
    if summary.get("checkpoint"):
        lines.append(f"Checkpoint: `{summary['checkpoint']}`.")
    return lines


LEGEND = ("Overlays: heatmap in magma (dark = cold, yellow = hot); ground-truth boxes in cyan, the "
          "predicted point and box in lime. Skipped phrases are not scored by the protocol.")


def _markdown(summary: dict, sections: list[tuple[str, str, str]], tiles: dict[str, list[tuple[str, str, str]]]) -> str:
    out = [f"# {summary.get('title') or 'phraseground report: `' + summary['model'] + '`'}", "", _intro(summary), "",
           "| system | pointing accuracy | |", "|---|---|---|"]
    out += [f"| {a} | {'**' + b + '**' if i == 0 else b} | {c} |" for i, (a, b, c) in enumerate(headline_rows(summary))]
    per_type = summary.get("per_type") or {}
    if per_type:
        out += ["", "Per phrase type (pointing): " + ", ".join(
            f"{t} {_fmt(v['accuracy'] if isinstance(v, dict) else v)}" for t, v in per_type.items())]
    out += [""] + [line for x in _extra_lines(summary) for line in (x, "")]
    for heading, fname, caption in sections:
        out += [f"## {heading}", "", f"![{caption}]({PLOTS}/{fname})", ""]
        if heading in tiles:
            out += [LEGEND, ""] + [f"- `{t}` — {html.escape(title)}" for t, title, _ in tiles[heading]] + [""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}img.plot{max-width:100%;border:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0}figure img{width:100%;image-rendering:auto;border:1px solid #ddd}
figcaption{font-size:.85em;font-weight:600;padding:.2em 0}
figcaption.hit{color:#1a9850}figcaption.miss{color:#d73027}figcaption.skipped{color:#7f7f7f}
figure.skipped img{opacity:.6}.legend{font-size:.9em;color:#555}
.sw{display:inline-block;width:1em;height:.7em;margin:0 .25em;vertical-align:middle}
"""


def _html(summary: dict, plots: list[tuple[str, bytes]], grids: dict[str, list[tuple[dict, str, bytes]]]) -> str:
    esc = html.escape
    title = summary.get("title") or f"phraseground report: {summary['model']}"
    rows = "".join(f"<tr><td>{esc(a)}</td><td>{'<b>' + esc(b) + '</b>' if i == 0 else esc(b)}</td><td>{esc(c)}</td></tr>"
                   for i, (a, b, c) in enumerate(headline_rows(summary)))
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p>{esc(_intro(summary).replace('`', ''))}</p>",
             f"<table id='headline'><tr><th>system</th><th>pointing accuracy</th><th></th></tr>{rows}</table>"]
    parts += [f"<p>{esc(x.replace('`', ''))}</p>" for x in _extra_lines(summary)]
    for heading, png in plots:
        parts.append(f"<h2>{esc(heading)}</h2><img class='plot' alt='{esc(heading)}' src='{_data_uri(png)}'>")
    gt = "#%02x%02x%02x" % GT_COLOUR
    pred = "#%02x%02x%02x" % PRED_COLOUR
    for heading, items in grids.items():
        parts.append(f"<h2>{esc(heading)}</h2><p class='legend'>Heatmap in magma (dark = cold, yellow = hot);"
                     f"<span class='sw' style='background:{gt}'></span>ground truth"
                     f"<span class='sw' style='background:{pred}'></span>prediction (point and box). "
                     "Skipped phrases are not scored by the protocol.</p>")
        if not items:
            parts.append("<p>none</p>")
            continue
        parts.append(f"<div class='grid' data-grid='{esc(heading)}'>")
        for rec, title_text, png in items:
            s = status(rec)
            pt = rec.get("point")
            where = f" data-point='{pt['x']:.2f},{pt['y']:.2f}'" if pt else ""
            parts.append(f"<figure class='{s}' data-status='{s}' data-image='{esc(str(rec['image_id']))}'"
                         f" data-caption='{int(rec['caption_index'])}' data-phrase='{int(rec['phrase_index'])}'{where}>"
                         f"<img alt='{esc(title_text)}' src='{_data_uri(png)}'>"
                         f"<figcaption class='{s}'>{esc(title_text)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out_dir: Path, summary: dict, records: Sequence[dict], samples: Iterable[ImageSample],
                 heatmap_fn: HeatmapFn | None = None, log_path: Path | None = None,
                 per_type: dict[str, dict[str, float | None]] | None = None,
                 n_grid: int = 12, n_worst: int = 8) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``report_files/*.png`` into ``out_dir``.

    Args:
        summary: headline numbers (``model``, ``protocol``, ``pointing_accuracy``, ``box_accuracy``,
            ``attention_correctness``, ``baselines`` {center, random, random_repeats}, ``n_images``,
            ``n_phrases``, ``hits``, ``misses``, ``skipped``, ``per_type``; optional ``title``,
            ``train_seconds``, ``total_seconds``, ``peak_memory_mb``, ``checkpoint``, ``retrieval``).
        records: per-phrase evaluation records (module docstring), all phrases of the split
            (``RecordCollector`` gathers them from the evaluation runner).
        samples: the split's samples (ground truth and image files).
        heatmap_fn: the heatmaps (model grid, any size) of a list of records, for the overlays;
            without it the overlays show the boxes and points only.
        log_path: the run's ``log.jsonl`` for the learning curve (skipped when missing).
        per_type: accuracy per phrase type of each system, ``{system: {type: accuracy}}``.

    Returns:
        what was drawn: ``{"plots": [...], "grid": [titles], "worst": [titles], "files": [...]}``.
    """
    out_dir = Path(out_dir)
    (out_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    by_id = {str(s.image_id): s for s in samples}
    plots: list[tuple[str, str, bytes]] = []  # (heading, file name, png)
    if log_path is not None and Path(log_path).is_file():
        curve = learning_curve(Path(log_path))
        if curve["epoch"]:
            plots.append(("Learning curve", "learning_curve.png", plot_learning_curve(curve, f"{summary['model']}: learning curve")))
    if per_type:
        plots.append(("Pointing accuracy per phrase type", "per_type.png",
                      plot_per_type(per_type, f"pointing accuracy per phrase type ({summary.get('protocol', '')})")))
    chosen = {"Overlays": select_grid(records, n_grid), "Worst misses": select_worst(records, by_id, n_worst)}
    wanted = [r for rs in chosen.values() for r in rs]
    heat = dict(zip(map(_key, wanted), heatmap_fn(wanted))) if heatmap_fn and wanted else {}
    grids: dict[str, list[tuple[dict, str, bytes]]] = {}
    md_tiles: dict[str, list[tuple[str, str, str]]] = {}
    for heading, recs in chosen.items():
        tiles = [render_tile(by_id[str(r["image_id"])], r, heat.get(_key(r))) for r in recs]
        titles = [tile_title(r) for r in recs]
        if heading == "Worst misses":
            titles = [f"{t} ({_off(r, by_id)})" for t, r in zip(titles, recs)]
        grids[heading] = [(r, t, _tile_jpeg(im)) for r, t, im in zip(recs, titles, tiles)]
        fname = "overlays.png" if heading == "Overlays" else "worst_misses.png"
        if recs:
            plots_entry = plot_grid(tiles, titles, [status(r) for r in recs], heading)
            plots.append((heading, fname, plots_entry))
            md_tiles[heading] = [(f"{r['image_id']}#{r['caption_index']}.{r['phrase_index']}", t, status(r))
                                 for r, t in zip(recs, titles)]
    files = []
    for _, fname, png in plots:
        write_bytes(out_dir / PLOTS / fname, png)
        files.append(f"{PLOTS}/{fname}")
    md = _markdown(summary, [(h, f, h.lower()) for h, f, _ in plots], md_tiles)
    page = _html(summary, [(h, p) for h, _, p in plots if h not in grids], grids)
    for name, text in (("report.md", md), ("report.html", page)):
        write_text(out_dir / name, text)
        files.append(name)
    return {"plots": [h for h, _, _ in plots], "grid": [t for _, t, _ in grids["Overlays"]],
            "worst": [t for _, t, _ in grids["Worst misses"]], "files": files}


def _off(record: dict, by_id: dict[str, ImageSample]) -> str:
    s = by_id[str(record["image_id"])]
    d = miss_distance(record, _gt_boxes(by_id, record), s.width, s.height)
    return "no answer" if math.isinf(d) else f"{d * math.hypot(s.width, s.height):.0f} px off"


# ----------------------------------------------------------------------------- from an evaluation


def headline(model_name: str, result: dict, center: dict, rand: dict, n_images: int,
             box_frame: str = "xyxy") -> dict:
    """The summary fields of ``write_report`` from ``evaluate_grounding``'s result and the two
    baselines' reports on the same phrases."""
    pointing = result["pointing"]
    return {
        "model": model_name,
        "protocol": pointing["protocol"],
        "box_frame": box_frame,
        "pointing_accuracy": pointing["accuracy"],
        "box_accuracy": result.get("box", {}).get("accuracy"),
        "attention_correctness": result.get("attention_correctness", {}).get("attention_correctness"),
        "baselines": {"center": center["accuracy"], "random": rand["accuracy"], "random_repeats": rand["repeats"]},
        "n_images": n_images,
        "n_phrases": pointing["n_evaluated"],
        "hits": pointing["hits"],
        "misses": pointing["misses"],
        "skipped": pointing["skipped"],
        "per_type": pointing["per_type"],
    }


def per_type_table(summary: dict, center: dict, rand: dict) -> dict[str, dict[str, float | None]]:
    """``{system: {phrase type: pointing accuracy}}`` of the model and the two baselines."""
    return {name: {t: v["accuracy"] for t, v in per_type.items()}
            for name, per_type in ((summary["model"], summary["per_type"]), ("centre baseline", center["per_type"]),
                                   ("random baseline", rand["per_type"]))}


def report_for_model(out_dir: Path, collected: "RecordCollector", samples, summary: dict, center: dict, rand: dict,
                     log_path: Path | None = None) -> dict[str, Any]:
    """``write_report`` from what the evaluation runner handed a ``RecordCollector``."""
    return write_report(out_dir, summary, collected.records, samples, heatmap_fn=collected.heatmaps,
                        log_path=log_path, per_type=per_type_table(summary, center, rand))


def evaluation_report(out_dir: Path, collected: "RecordCollector", samples, result: dict, model_name: str,
                      checkpoint: Path, seed: int = 0, box_frame: str = "xyxy") -> dict[str, Any]:
    """``evaluate --report DIR``: the baselines on the same phrases, then the report; the learning
    curve comes from the ``log.jsonl`` beside the checkpoint, when there is one."""
    from ..eval.baselines import evaluate_baseline

    protocol = result["pointing"]["protocol"]
    center = evaluate_baseline(samples, "center", protocol, box_frame=box_frame)
    rand = evaluate_baseline(samples, "random", protocol, repeats=10, seed=seed, box_frame=box_frame)
    summary = {**headline(model_name, result, center, rand, len(samples), box_frame), "checkpoint": str(checkpoint),
               "title": f"phraseground evaluation: {model_name}"}
    return report_for_model(out_dir, collected, samples, summary, center, rand, Path(checkpoint).parent / "log.jsonl")


class RecordCollector:
    """An ``on_phrase`` callback for the evaluation runner (``evaluate_grounding(...,
    on_phrase=)``): keeps every phrase's record (``eval.runner.phrase_record``: the output
    record plus ``hit`` and ``skip_reason``) and its low-resolution heatmap, for the report."""

    def __init__(self, protocol: str = "akbari2019") -> None:
        self.protocol = protocol
        self.records: list[dict] = []
        self._maps: dict[tuple[str, int, int], torch.Tensor] = {}

    def __call__(self, sample: ImageSample, c: int, k: int, phrase, r: dict, extra: dict) -> None:
        from ..eval.runner import phrase_record

        self.records.append(phrase_record(sample, c, k, phrase, r, extra.get("score"), extra.get("level"),
                                          protocol=self.protocol))
        if extra.get("heatmap") is not None:
            self._maps[(str(sample.image_id), c, k)] = torch.as_tensor(extra["heatmap"]).float()

    def heatmaps(self, records: list[dict]) -> list[torch.Tensor | None]:
        """A ``heatmap_fn`` for ``write_report``."""
        return [self._maps.get(_key(r)) for r in records]


def on_phrases(*callbacks):
    """One ``on_phrase`` callback that calls each of ``callbacks`` (None ones left out)."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def call(*args) -> None:
        for c in live:
            c(*args)

    return call
