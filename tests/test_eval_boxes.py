"""Heatmap -> boxes, box accuracy and attention correctness against hand-computed cases and naive loops."""
from __future__ import annotations

from collections import deque

import pytest
import torch
import torch.nn.functional as F

from phraseground.data.types import Phrase
from phraseground.errors import ConfigError, PhrasegroundError
from phraseground.eval.boxes import (
    AttentionCorrectness,
    BoxAccuracy,
    BoxExtraction,
    attention_share,
    box_pixel_mask,
    heatmap_to_boxes,
    union_box,
)
from phraseground.eval.pointing import PointingGame


def phrase(boxes, types=("people",)) -> Phrase:
    return Phrase("a thing", 0, 2, "1", tuple(types), tuple(boxes))


def two_blobs() -> torch.Tensor:
    hm = torch.zeros(20, 30)
    hm[2:5, 3:6] = 1.0  # rows 2..4, cols 3..5
    hm[10:15, 20:25] = 2.0  # rows 10..14, cols 20..24
    return hm


def naive_boxes(hm: torch.Tensor, peak_frac: float, region_frac: float, nms_iou: float, max_boxes: int):
    """Loop version of heatmap_to_boxes: 3x3 peaks, flood fill, bounding box, greedy NMS."""
    h, w = hm.shape
    v = hm.tolist()
    top = max(max(r) for r in v)
    found = []
    for r in range(h):
        for c in range(w):
            around = [v[i][j] for i in range(max(r - 1, 0), min(r + 2, h)) for j in range(max(c - 1, 0), min(c + 2, w))]
            if v[r][c] == max(around) and v[r][c] >= peak_frac * top:
                thr, seen, todo = region_frac * v[r][c], {(r, c)}, deque([(r, c)])
                while todo:
                    i, j = todo.popleft()
                    for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                        if 0 <= a < h and 0 <= b < w and (a, b) not in seen and v[a][b] >= thr:
                            seen.add((a, b))
                            todo.append((a, b))
                rows, cols = [p[0] for p in seen], [p[1] for p in seen]
                found.append((v[r][c], (min(cols), min(rows), max(cols) + 1, max(rows) + 1)))
    found.sort(key=lambda t: -t[0])

    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    kept = []
    for score, box in found:
        if all(iou(box, k[1]) <= nms_iou for k in kept):
            kept.append((score, box))
    return kept[:max_boxes]


def test_two_blobs_give_two_boxes():
    boxes, scores = heatmap_to_boxes(two_blobs())
    assert boxes.tolist() == [[20.0, 10.0, 25.0, 15.0], [3.0, 2.0, 6.0, 5.0]]
    assert scores.tolist() == [2.0, 1.0]
    # the weaker blob's peak (1.0) is below 0.6 * 2.0: only one box
    boxes, _ = heatmap_to_boxes(two_blobs(), peak_frac=0.6)
    assert boxes.tolist() == [[20.0, 10.0, 25.0, 15.0]]
    boxes, _ = heatmap_to_boxes(two_blobs(), max_boxes=1)
    assert boxes.tolist() == [[20.0, 10.0, 25.0, 15.0]]


def test_single_pixel_box_is_one_pixel_wide():
    hm = torch.zeros(6, 8)
    hm[3, 5] = 1.0
    boxes, _ = heatmap_to_boxes(hm)
    assert boxes.tolist() == [[5.0, 3.0, 6.0, 4.0]]


def test_region_fraction_of_the_peak():
    hm = torch.zeros(9, 9)
    hm[2:7, 2:7] = 0.2  # outer ring: rows/cols 2..6
    hm[3:6, 3:6] = 0.4  # inner ring: rows/cols 3..5
    hm[4, 4] = 1.0
    assert heatmap_to_boxes(hm, region_frac=0.3)[0].tolist() == [[3.0, 3.0, 6.0, 6.0]]
    assert heatmap_to_boxes(hm, region_frac=0.2)[0].tolist() == [[2.0, 2.0, 7.0, 7.0]]
    assert heatmap_to_boxes(hm, region_frac=0.5)[0].tolist() == [[4.0, 4.0, 5.0, 5.0]]


def test_regions_are_four_connected():
    hm = torch.zeros(5, 5)
    hm[1, 1] = 1.0
    hm[2, 2] = 0.5  # touches the peak diagonally only
    boxes, _ = heatmap_to_boxes(hm, peak_frac=0.9, region_frac=0.3)
    assert boxes.tolist() == [[1.0, 1.0, 2.0, 2.0]]


def test_overlapping_regions_are_suppressed():
    hm = torch.zeros(5, 9, dtype=torch.float64)
    hm[2, 1:8] = torch.tensor([0.9, 0.6, 0.5, 0.4, 0.5, 0.6, 1.0], dtype=torch.float64)  # two peaks on one ridge
    # both regions at 0.3 of their peak are the whole ridge: one box survives, scored 1.0
    boxes, scores = heatmap_to_boxes(hm)
    assert boxes.tolist() == [[1.0, 2.0, 8.0, 3.0]] and scores.tolist() == [1.0]
    # at 0.6 of the peak the regions are the two ends (>= 0.6 and >= 0.54): both survive
    boxes, scores = heatmap_to_boxes(hm, region_frac=0.6)
    assert boxes.tolist() == [[6.0, 2.0, 8.0, 3.0], [1.0, 2.0, 3.0, 3.0]] and scores.tolist() == [1.0, 0.9]


def test_no_positive_value_gives_no_box():
    for hm in (torch.zeros(4, 4), -torch.ones(4, 4)):
        boxes, scores = heatmap_to_boxes(hm)
        assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("seed", range(6))
def test_heatmap_to_boxes_matches_naive_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 1, 4, 5, generator=gen, dtype=torch.float64)
    hm = F.interpolate(low, size=(24, 30), mode="bilinear", align_corners=False)[0, 0]  # (24, 30)
    for kwargs in (dict(peak_frac=0.3, region_frac=0.3, nms_iou=0.5, max_boxes=3),
                   dict(peak_frac=0.1, region_frac=0.8, nms_iou=0.2, max_boxes=10),
                   dict(peak_frac=0.5, region_frac=0.9, nms_iou=0.5, max_boxes=2)):
        boxes, scores = heatmap_to_boxes(hm, **kwargs)
        expected = naive_boxes(hm, **kwargs)
        assert [tuple(b) for b in boxes.tolist()] == [b for _, b in expected]
        assert scores.tolist() == [s for s, _ in expected]


def test_extraction_settings_are_checked():
    with pytest.raises(ConfigError, match="region_frac"):
        BoxExtraction(region_frac=0.0)
    with pytest.raises(ConfigError, match="max_boxes"):
        heatmap_to_boxes(torch.ones(3, 3), max_boxes=0)


def test_union_box():
    assert union_box([(2, 5, 4, 9), (1, 6, 3, 7)]).tolist() == [1.0, 5.0, 4.0, 9.0]
    with pytest.raises(PhrasegroundError):
        union_box([])


def test_iou_threshold_boundary_with_regressed_boxes():
    metric = BoxAccuracy("akbari2019")
    gt = phrase([(0, 0, 10, 20)])  # 200 px of a 50x50 image: 8 %
    assert metric.update(gt, 50, 50, boxes=(0, 0, 10, 10)) is True  # IoU 100 / 200 = 0.5
    assert metric.update(gt, 50, 50, boxes=(0, 0, 10, 9.9)) is False  # IoU 99 / 200
    report = metric.compute()
    assert (report["hits"], report["misses"], report["accuracy"]) == (1, 1, 0.5)


def test_union_vs_any_gt_box():
    metric = BoxAccuracy()
    two = phrase([(0, 0, 10, 10), (30, 0, 40, 10)], types=("people", "clothing"))  # union 400 px of 6400
    assert metric.update(two, 80, 80, boxes=torch.tensor([0.0, 0.0, 10.0, 10.0])) is False  # IoU 100/400
    assert metric.update(two, 80, 80, boxes=[(0, 0, 10, 10), (30, 0, 40, 10)]) is True  # unions equal
    report = metric.compute()
    assert (report["hits"], report["misses"]) == (1, 1)
    assert (report["hits_any_gt"], report["misses_any_gt"], report["accuracy_any_gt"]) == (1, 1, 0.5)
    # 2nd update: union (0, 0, 40, 10) vs best single GT box: IoU 100 / 400 -> miss
    assert report["per_type"]["clothing"] == {
        "accuracy": 0.5, "hits": 1, "misses": 1, "accuracy_any_gt": 0.5, "hits_any_gt": 1, "misses_any_gt": 1,
    }


def test_box_accuracy_from_heatmap_and_zero_map():
    metric = BoxAccuracy(box_method="nms")
    gt = phrase([(3, 2, 6, 5), (20, 10, 25, 15)])  # the two blobs: union (3, 2, 25, 15)
    assert metric.update(gt, 30, 20, heatmap=two_blobs()) is True
    assert metric.update(gt, 30, 20, heatmap=torch.zeros(5, 5)) is False
    # from a 10x15 map upsampled x2: the blob regions keep their place approximately
    low = two_blobs()[::2, ::2]  # (10, 15)
    assert metric.update(gt, 30, 20, heatmap=low) is True
    assert metric.compute()["hits"] == 2
    # akbari2019 (heat2bbox): the top 3 peaks all lie on the brighter plateau, merge into its
    # one box (20, 10, 24, 14), and that box alone misses the union of the two GT boxes
    assert BoxAccuracy("akbari2019").update(gt, 30, 20, heatmap=two_blobs()) is False


def test_box_metrics_skip_exactly_like_the_pointing_protocol():
    phrases = [
        phrase([(0, 0, 10, 10)], types=("notvisual",)),
        phrase([], types=("scene",)),
        phrase([(0, 0, 2, 2)]),  # 4 of 400 px: small for akbari2019 only
        phrase([(0, 0, 10, 10)]),
    ]
    for protocol in ("akbari2019", "engilberge2018"):
        game, boxes, attention = PointingGame(protocol), BoxAccuracy(protocol), AttentionCorrectness(protocol)
        for p in phrases:
            game.update(p, 20, 20, point=(1, 1))
            boxes.update(p, 20, 20, boxes=(0, 0, 2, 2))
            attention.update(p, 20, 20, heatmap=torch.ones(4, 4))
        expected = game.compute()
        for report in (boxes.compute(), attention.compute()):
            assert report["skipped"] == expected["skipped"]
            assert report["n_evaluated"] == expected["n_evaluated"]
    assert expected["skipped"] == {"no_box": 1, "notvisual": 1}


def test_box_accuracy_bad_inputs():
    metric = BoxAccuracy()
    with pytest.raises(ValueError, match="exactly one"):
        metric.update(phrase([(0, 0, 10, 10)]), 20, 20)
    with pytest.raises(PhrasegroundError, match="xyxy"):
        metric.update(phrase([(0, 0, 10, 10)]), 20, 20, boxes=(5, 0, 1, 10))
    with pytest.raises(ConfigError):
        BoxAccuracy(iou_threshold=0)


def test_attention_share_counts_overlaps_once():
    hm = torch.arange(16, dtype=torch.float64).reshape(4, 4)  # (H, W), total mass 120
    # (0,0,2,2) holds {0, 1, 4, 5}; (1,1,3,2) holds {5, 6}; union of pixels {0, 1, 4, 5, 6} = 16
    assert attention_share(hm, [(0, 0, 2, 2), (1, 1, 3, 2)]) == pytest.approx(16 / 120)
    assert attention_share(hm, [(0.5, 0, 2, 1)]) == pytest.approx(1 / 120)  # pixel col 0 is outside x0 = 0.5
    assert attention_share(torch.zeros(4, 4), [(0, 0, 2, 2)]) == 0.0
    with pytest.raises(PhrasegroundError, match="non-negative"):
        attention_share(-hm, [(0, 0, 2, 2)])


def test_attention_correctness_mean_and_resize():
    metric = AttentionCorrectness(attention="union")
    # a uniform 2x2 map resized to 4x4 stays uniform: the share is the box's pixel share
    assert metric.update(phrase([(0, 0, 2, 2)]), 4, 4, heatmap=torch.ones(2, 2)) == pytest.approx(4 / 16)
    assert metric.update(phrase([(0, 0, 4, 3)], ("animals",)), 4, 4, heatmap=torch.ones(2, 2)) == pytest.approx(12 / 16)
    report = metric.compute()
    assert report["attention_correctness"] == pytest.approx(0.5)
    assert report["per_type"]["animals"] == {"attention_correctness": pytest.approx(0.75), "n_evaluated": 1}
    with pytest.raises(PhrasegroundError, match="non-negative"):
        metric.update(phrase([(0, 0, 4, 3)]), 4, 4, heatmap=torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    metric.reset()
    assert metric.compute()["attention_correctness"] is None
    # akbari2019: per-box sums, MultiGrounding's map[y0:y1, x0:x1], negative values allowed
    per_box = AttentionCorrectness("akbari2019")
    both = phrase([(0, 0, 2, 2), (0, 0, 4, 3)])  # overlapping: 4/16 + 12/16 = 1
    assert per_box.update(both, 4, 4, heatmap=torch.ones(2, 2)) == pytest.approx(1.0)
    assert per_box.update(both, 4, 4, heatmap=torch.tensor([[1.0, -1.0], [1.0, 1.0]])) is not None


def test_box_pixel_mask_matches_naive_loop():
    gen = torch.Generator().manual_seed(3)
    corners = (torch.rand(4, 4, generator=gen) * 12 - 1).tolist()
    boxes = [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in corners]
    mask = box_pixel_mask(boxes, 11, 9)
    naive = [[any(x0 <= col < x1 and y0 <= row < y1 for x0, y0, x1, y1 in boxes) for col in range(11)] for row in range(9)]
    assert mask.tolist() == naive
