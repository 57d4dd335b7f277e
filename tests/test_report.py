"""report.html / report.md: the plots exist, the grids show the records' hit / miss / skip, the
page is self-contained, and the overlays draw ground truth and prediction in their colours."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from phraseground.app.report import learning_curve, select_grid, select_worst, tile_title, write_report
from phraseground.data.types import Caption, ImageSample, Phrase


class _Page(HTMLParser):
    """Collects <img src>, <figure data-*> and <figcaption> texts, <h2> headings."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs, self.figures, self.captions, self.h2, self.links = [], [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "figure":
            self.figures.append(a)
        if tag in ("figcaption", "h2"):
            self._in = tag
            (self.captions if tag == "figcaption" else self.h2).append("")
        if tag in ("link", "script", "a") or "href" in a:
            self.links.append(a)

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "figcaption":
            self.captions[-1] += data
        elif self._in == "h2":
            self.h2[-1] += data


def _samples(tmp_path, n=5):
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (64, 48), (40 * i, 90, 160)).save(path)
        phrases = (Phrase("a red star", 0, 3, "1", ("figure",), ((4, 4, 30, 30),)),
                   Phrase("a striped background", 4, 3, "2", ("scene",), ()),
                   Phrase("a blue square", 8, 3, "3", ("polygon",), ((40, 10, 60, 40),)))
        out.append(ImageSample(str(i), path, 64, 48, (Caption("a red star on a striped background and a blue square", phrases),)))
    return out


def _records(samples):
    recs = []
    for s in samples:
        i = int(s.image_id)
        recs.append({"image_id": s.image_id, "caption_index": 0, "phrase_index": 0, "label": "a red star",
                     "point": {"x": 10.5, "y": 10.5} if i % 2 == 0 else {"x": 62.5, "y": 46.5},
                     "hit": i % 2 == 0, "skip_reason": None})
        recs.append({"image_id": s.image_id, "caption_index": 0, "phrase_index": 1, "label": "a striped background",
                     "point": {"x": 30.5, "y": 20.5}, "hit": None, "skip_reason": "no_box"})
        recs.append({"image_id": s.image_id, "caption_index": 0, "phrase_index": 2, "label": "a blue square",
                     "point": {"x": 5.5 + i, "y": 45.5} if i != 3 else None, "hit": False, "skip_reason": None})
    return recs


@pytest.fixture
def report(tmp_path):
    samples = _samples(tmp_path)
    records = _records(samples)
    log = tmp_path / "log.jsonl"
    lines = [{"epoch": e, "step": 10 * e + k, "loss": 5.0 - e - 0.1 * k} for e in range(3) for k in range(2)]
    lines += [{"epoch": e, "step": 10 * e + 2, "val_score": 0.3 + 0.2 * e, "val_pointing": 0.3 + 0.2 * e} for e in range(3)]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"epoch\": 3, \"lo")  # a torn last line
    summary = {"model": "mlmcs", "protocol": "akbari2019", "pointing_accuracy": 0.3, "box_accuracy": 0.1,
               "attention_correctness": 0.2, "baselines": {"center": 0.2, "random": 0.1, "random_repeats": 10},
               "n_images": 5, "n_phrases": 10, "hits": 3, "misses": 7, "skipped": {"no_box": 5},
               "per_type": {"figure": {"accuracy": 0.6}, "polygon": {"accuracy": 0.0}}}
    per_type = {"mlmcs": {"figure": 0.6, "polygon": 0.0}, "centre baseline": {"figure": 0.2, "polygon": 0.4},
                "random baseline": {"figure": 0.1, "polygon": 0.1}}
    calls = []

    def heatmaps(recs):
        calls.append(len(recs))
        return [torch.rand(6, 8) for _ in recs]

    out = tmp_path / "rep"
    drawn = write_report(out, summary, records, samples, heatmap_fn=heatmaps, log_path=log, per_type=per_type,
                         n_grid=9, n_worst=4)
    return out, drawn, records, calls


def test_learning_curve_per_epoch_mean_loss_and_validation(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 0, "loss": 4}\n{"epoch": 0, "loss": 2}\n{"epoch": 0, "val_score": 0.5}\n'
                   '{"epoch": 1, "loss": 1}\nnot json\n{"epoch": 1, "val_score": 0.6}\n{"epoch": 1, "val_score": 0.7}\n')
    assert learning_curve(log) == {"epoch": [1, 2], "train_loss": [3.0, 1.0], "val_score": [0.5, 0.7]}


def test_report_files_and_plots_exist(report):
    out, drawn, _, calls = report
    assert drawn["plots"] == ["Learning curve", "Pointing accuracy per phrase type", "Overlays", "Worst misses"]
    for name in ("learning_curve", "per_type", "overlays", "worst_misses"):
        im = Image.open(out / "report_files" / f"{name}.png")
        assert im.width > 300 and im.height > 200
    md = (out / "report.md").read_text()
    for name in ("learning_curve", "per_type", "overlays", "worst_misses"):
        assert f"](report_files/{name}.png)" in md
    assert "| mlmcs | **0.3000** |" in md and "centre baseline" in md and "random baseline" in md
    assert calls == [13]  # one call for both grids' heatmaps


def test_html_is_self_contained_and_titles_match_the_records(report):
    out, drawn, records, _ = report
    text = (out / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.h2 == ["Learning curve", "Pointing accuracy per phrase type", "Overlays", "Worst misses"]
    assert page.srcs and all(re.match("data:image/(png|jpeg);base64,", s) for s in page.srcs)
    assert not page.links and "http://" not in text and "https://" not in text
    for s in page.srcs:  # every embedded image decodes
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    by_key = {(r["image_id"], r["caption_index"], r["phrase_index"]): r for r in records}
    assert len(page.figures) == len(page.captions) == 9 + 4
    for fig, cap in zip(page.figures, page.captions):
        rec = by_key[(fig["data-image"], int(fig["data-caption"]), int(fig["data-phrase"]))]
        want = "skipped" if rec["skip_reason"] else ("hit" if rec["hit"] else "miss")
        assert fig["data-status"] == want
        assert cap.startswith(tile_title(rec))
        assert cap.split(" · ")[0] == {"hit": "HIT", "miss": "MISS", "skipped": "SKIPPED (no_box)"}[want]
    grid = page.captions[:9]
    assert grid == drawn["grid"]
    assert sum(c.startswith("SKIPPED (no_box)") for c in grid) == 3  # skipped phrases marked, not hidden
    worst = page.captions[9:]
    assert worst == drawn["worst"] and all(c.startswith("MISS") for c in worst)
    assert worst[0].endswith("(no answer)")  # the all-zero heatmap (no point) is the worst miss


def test_worst_misses_are_the_farthest_from_the_truth(tmp_path):
    samples = _samples(tmp_path)
    by_id = {s.image_id: s for s in samples}
    worst = select_worst(_records(samples), by_id, n=3)
    assert [(w["image_id"], w["phrase_index"]) for w in worst] == [("3", 2), ("1", 0), ("3", 0)]  # inf, then 36.4 px twice (stable)


def test_report_without_heatmaps_or_log(tmp_path):
    samples = _samples(tmp_path, 2)
    summary = {"model": "m", "protocol": "akbari2019", "pointing_accuracy": None}
    drawn = write_report(tmp_path / "r", summary, _records(samples), samples)
    assert drawn["plots"] == ["Overlays", "Worst misses"]
    assert re.search(r"<figcaption class='miss'>MISS · a blue square", (tmp_path / "r" / "report.html").read_text())


def test_evaluate_report_of_a_trained_checkpoint(tiny_run, tiny_bench, tmp_path, capsys):
    from phraseground.app.cli import main
    from phraseground.data.flickr30k import read_flickr30k
    from phraseground.eval.pointing import frame_boxes, point_hits, skip_reason

    run, _ = tiny_run
    out = tmp_path / "rep"
    code = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_bench), "--split", "test",
                 "--report", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert page.h2[:2] == ["Learning curve", "Pointing accuracy per phrase type"]  # log.jsonl beside best.pt
    assert "Overlays" in page.h2 and "Worst misses" in page.h2
    samples = {s.image_id: s for s in read_flickr30k(tiny_bench, "test")[0]}
    assert page.figures
    for fig, cap in zip(page.figures, page.captions):  # each title agrees with the harness's own rules
        s = samples[fig["data-image"]]
        phrase = s.captions[int(fig["data-caption"])].phrases[int(fig["data-phrase"])]
        reason = skip_reason(phrase, s.width, s.height, "akbari2019", "flickr30k")
        assert cap.split(" · ")[1].startswith(phrase.text[:30])
        if reason:
            assert fig["data-status"] == "skipped" and cap.startswith(f"SKIPPED ({reason})")
        else:
            point = tuple(map(float, fig["data-point"].split(","))) if "data-point" in fig else None
            gt = frame_boxes(phrase.boxes, s.width, s.height, "akbari2019", "flickr30k")
            hit = point is not None and point_hits(point, gt, "akbari2019")
            assert fig["data-status"] == ("hit" if hit else "miss") and cap.startswith("HIT" if hit else "MISS")
    code = main(["evaluate", "--baseline", "center", "--data", str(tiny_bench), "--report", str(out)])
    assert code == 2 and "--report needs --checkpoint" in capsys.readouterr().err


def test_grid_takes_each_images_first_caption_in_record_order():
    import random

    rng = random.Random(0)
    base = {f"im{i}": i % 3 for i in range(6)}  # im1, im2, im4, im5 have no caption 0
    records = []
    for k in range(60):
        image = f"im{rng.randrange(6)}"
        records.append({"image_id": image, "caption_index": base[image] + rng.randrange(3), "phrase_index": k})
    lowest = {}
    for r in records:  # naive: every image's lowest caption index, by a full scan per record
        lowest[r["image_id"]] = min(q["caption_index"] for q in records if q["image_id"] == r["image_id"])
    expected = [r for r in records if r["caption_index"] == lowest[r["image_id"]]]
    assert any(r["caption_index"] > 0 for r in expected)  # an image whose first caption is not 0
    assert select_grid(records, n=100) == expected
    assert select_grid(records, n=5) == expected[:5]
