"""akbari2019 against hand-computed cases and a transcription of MultiGrounding's evaluation code.

The transcription below follows ``code/utils.py`` of hassanhub/MultiGrounding line by line
(``heat2bbox``, ``filter_bbox``, ``isCorrect``, ``isCorrectHit``, ``attCorrectness``,
``check_percent``, ``union``, ``IoU``), with scikit-image's ``peak_local_max`` and OpenCV's
``cv2.resize`` as there (PyTorch's bilinear resize when OpenCV is missing); it is written for
this test only and shares no code with ``phraseground.eval.akbari2019``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from phraseground.eval import score_heatmap
from phraseground.eval import akbari2019 as ak

skimage_feature = pytest.importorskip("skimage.feature")
try:
    import cv2
except ImportError:  # pragma: no cover - the [test] extra installs it
    cv2 = None


# ----------------------------------------------------------------------------- transcription
def mg_resize(a: np.ndarray, W: int, H: int) -> np.ndarray:
    if cv2 is not None:
        return cv2.resize(a, (W, H))
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return torch.nn.functional.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()


def mg_heat2bbox(heat_map, original_image_shape):
    h, w = heat_map.shape
    bounding_boxes = []
    heat_map = heat_map - np.min(heat_map)
    heat_map = heat_map / np.max(heat_map)
    bboxes, box_scores = [], []
    peak_coords = skimage_feature.peak_local_max(heat_map, exclude_border=False, threshold_rel=0.3)
    heat_resized = mg_resize(heat_map, original_image_shape[1], original_image_shape[0])
    peak_coords_resized = ((peak_coords + 0.5) * np.asarray([original_image_shape]) / np.asarray([[h, w]])).astype("int32")
    for pk_coord in peak_coords_resized:
        pk_value = heat_resized[tuple(pk_coord)]
        mask = heat_resized > pk_value * 0.3
        labeled, n = ndi.label(mask)
        lab = labeled[tuple(pk_coord)]
        yy, xx = np.where(labeled == lab)
        bboxes.append((np.min(xx), np.min(yy), np.max(xx), np.max(yy)))
        box_scores.append(pk_value)
    box_idx = np.argsort(-np.asarray(box_scores), kind="stable")[: min(3, len(box_scores))]
    bboxes = [bboxes[i] for i in box_idx]
    box_scores = [box_scores[i] for i in box_idx]
    to_remove = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for iii in range(len(bboxes)):
            for iiii in range(iii):
                if iiii in to_remove:
                    continue
                b1, b2 = bboxes[iii], bboxes[iiii]
                isec = max(min(b1[2], b2[2]) - max(b1[0], b2[0]), 0) * max(min(b1[3], b2[3]) - max(b1[1], b2[1]), 0)
                ioa1 = isec / ((b1[2] - b1[0]) * (b1[3] - b1[1]))
                ioa2 = isec / ((b2[2] - b2[0]) * (b2[3] - b2[1]))
                if ioa1 > 0.6 and ioa1 == ioa2:
                    to_remove.append(iii)
                elif ioa1 > 0.6 and ioa1 >= ioa2:
                    to_remove.append(iii)
                elif ioa2 > 0.6 and ioa2 >= ioa1:
                    to_remove.append(iiii)
    for i in range(len(bboxes)):
        if i not in to_remove:
            bounding_boxes.append({"score": box_scores[i], "bbox": bboxes[i], "bbox_normalized": np.asarray([
                bboxes[i][0] / heat_resized.shape[1], bboxes[i][1] / heat_resized.shape[0],
                bboxes[i][2] / heat_resized.shape[1], bboxes[i][3] / heat_resized.shape[0]])})
    return bounding_boxes


def mg_filter_bbox(bbox_dict):
    out_b, out_n = [], []
    for d in bbox_dict:
        x_min, x_max, y_min, y_max = d["bbox_normalized"][0], d["bbox_normalized"][2], d["bbox_normalized"][1], d["bbox_normalized"][3]
        if d["score"] > 0 and (x_max - x_min) * (y_max - y_min) < 0.9:
            out_b.append(d["bbox"])
            out_n.append(d["bbox_normalized"])
    return out_b, out_n


def mg_iou(a, b):
    xA, yA, xB, yB = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, xB - xA) * max(0, yB - yA)
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def mg_union(bbox):
    if len(bbox) == 0:
        return []
    return [[np.min(bbox, axis=0)[0], np.min(bbox, axis=0)[1], np.max(bbox, axis=0)[2], np.max(bbox, axis=0)[3]]]


def mg_is_correct(annot, pred):
    return int(any(mg_iou(p, a) >= 0.5 for p in pred for a in annot))


def mg_hit(bbox_annot, heatmap, H, W):
    r = mg_resize(heatmap, W, H)
    row, col = np.unravel_index(np.argmax(r, axis=None), r.shape)
    return int(any(b[0] <= col <= b[2] and b[1] <= row <= b[3] for b in bbox_annot))


def mg_att(bbox_annot, heatmap, H, W):
    r = mg_resize(heatmap, W, H)
    s = np.sum(r)
    if s == 0:
        return 0
    r = r / s
    return sum(np.sum(r[y0:y1, x0:x1]) for x0, y0, x1, y1 in bbox_annot)


def mg_score(heatmap, bbox, bbox_norm, H, W):
    """(skipped, box, hit, att) as MultiGrounding's evaluator counts one phrase."""
    u = mg_union(bbox_norm)[0]
    if (u[2] - u[0]) * (u[3] - u[1]) < 0.05:
        return True, None, None, None
    _, pred_norm = mg_filter_bbox(mg_heat2bbox(heatmap, (H, W)))
    return False, mg_is_correct(mg_union(bbox_norm), mg_union(pred_norm)), mg_hit(bbox, heatmap, H, W), mg_att(bbox, heatmap, H, W)


def flickr_xml(boxes):  # our xyxy -> the XML integers MultiGrounding read
    return [[int(x0) + 1, int(y0) + 1, int(x1), int(y1)] for x0, y0, x1, y1 in boxes]


# ----------------------------------------------------------------------------- agreement
def random_case(rng: np.random.Generator):
    h, w = rng.choice([4, 7, 8, 16]), rng.choice([4, 8, 11, 16])
    W, H = int(rng.integers(20, 160)), int(rng.integers(20, 160))
    hm = rng.random((h, w)).astype(np.float32)
    if rng.random() < 0.5:  # smooth maps: few peaks, large regions
        hm = ndi.gaussian_filter(hm, sigma=float(rng.uniform(0.5, 2.0))).astype(np.float32)
    if rng.random() < 0.3:
        hm = np.maximum(hm - np.float32(rng.uniform(0.2, 0.6)), 0).astype(np.float32) + np.float32(1e-3) * hm
    # boxes with an edge next to the argmax pixel, as in the 600 cases
    r = mg_resize(hm, W, H)
    row, col = np.unravel_index(np.argmax(r), r.shape)
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        x0 = int(rng.integers(0, W - 2))
        y0 = int(rng.integers(0, H - 2))
        x1, y1 = int(rng.integers(x0 + 1, W + 1)), int(rng.integers(y0 + 1, H + 1))
        if rng.random() < 0.5:
            x1 = int(min(max(col + rng.integers(-1, 2), x0 + 1), W))
        if rng.random() < 0.5:
            y1 = int(min(max(row + rng.integers(-1, 2), y0 + 1), H))
        boxes.append((x0, y0, x1, y1))
    return hm, boxes, W, H


@pytest.mark.parametrize("frame", ["flickr30k", "xyxy"])
def test_agrees_with_multigrounding_on_random_cases(frame):
    rng = np.random.default_rng(10)
    n = kept = 0
    for _ in range(300):
        hm, boxes, W, H = random_case(rng)
        mg_boxes = flickr_xml(boxes) if frame == "flickr30k" else [list(b) for b in boxes]
        norm = [[b[0] / W, b[1] / H, b[2] / W, b[3] / H] for b in mg_boxes]
        skip, box, hit, att = mg_score(hm, mg_boxes, norm, H, W)
        ours = score_heatmap(hm, boxes, (W, H), "akbari2019", box_frame=frame)
        n += 1
        assert ours["kept"] is not skip, (boxes, W, H)
        if skip:
            assert ours["skip_reason"] == "small_box"
            continue
        kept += 1
        assert ours["hit"] == bool(hit), (hm, boxes, W, H)
        assert ours["box_correct"] == bool(box), (hm, boxes, W, H)
        assert ours["attention_correctness"] == pytest.approx(att, rel=1e-5, abs=1e-6)
    assert kept > 200


def test_boxes_agree_with_heat2bbox_box_for_box():
    rng = np.random.default_rng(11)
    for _ in range(200):
        hm, _, W, H = random_case(rng)
        expected, _ = mg_filter_bbox(mg_heat2bbox(hm, (H, W)))
        got, _ = ak.heat2bbox(hm, W, H)
        assert [tuple(int(v) for v in b) for b in expected] == [tuple(b) for b in got.tolist()]


def test_peak_finder_matches_scikit_image_including_plateaus():
    rng = np.random.default_rng(12)
    maps = [rng.random((9, 13)) for _ in range(50)]
    plateau = np.zeros((8, 8))
    plateau[2:4, 2:5] = 1.0  # a 2x3 plateau: every pixel is a peak
    plateau[6, 6] = 0.5
    maps += [plateau, np.round(rng.random((10, 10)) * 3) / 3]  # many ties
    for m in maps:
        m = (m - m.min()) / (m.max() - m.min())
        expected = skimage_feature.peak_local_max(m, exclude_border=False, threshold_rel=0.3)
        assert ak.find_peaks(m).tolist() == expected.tolist()
    assert ak.find_peaks(plateau).tolist() == [[2, 2], [2, 3], [2, 4], [3, 2], [3, 3], [3, 4], [6, 6]]
    assert len(ak.find_peaks(np.ones((5, 5)))) == 0  # a constant map has no peak


# ----------------------------------------------------------------------------- by hand
def test_peak_on_the_right_and_bottom_edge_is_a_hit():
    hm = np.zeros((10, 10), np.float32)
    hm[6, 7] = 1.0  # argmax pixel: row 6, col 7
    r = score_heatmap(hm, [(2, 3, 7, 6)], (10, 10))  # x1 = 7, y1 = 6: the edge itself
    assert r["hit"] is True and r["point"] == (7.5, 6.5)
    assert score_heatmap(hm, [(2, 3, 7, 6)], (10, 10), "tolerance15")["hit"] is True  # 0.5 px away
    assert score_heatmap(hm, [(2, 3, 6, 6)], (10, 10))["hit"] is False
    # Flickr30k frame: our (2, 3, 7, 6) is the XML box (3, 4, 7, 6): still a hit on its edge
    assert score_heatmap(hm, [(2, 3, 7, 6)], (10, 10), box_frame="flickr30k")["hit"] is True
    # ... and the near edge moves in by one: col 2 is outside (3, ., 7, .)
    hm2 = np.zeros((10, 10), np.float32)
    hm2[4, 2] = 1.0
    assert score_heatmap(hm2, [(2, 3, 7, 6)], (10, 10))["hit"] is True
    assert score_heatmap(hm2, [(2, 3, 7, 6)], (10, 10), box_frame="flickr30k")["hit"] is False


def test_overlapping_boxes_count_twice_in_attention():
    hm = np.ones((4, 4), np.float32)  # uniform: each pixel 1/16
    r = score_heatmap(hm, [(0, 0, 4, 2), (0, 0, 4, 4)], (4, 4))
    assert r["attention_correctness"] == pytest.approx(8 / 16 + 16 / 16)  # 1.5 > 1
    union = score_heatmap(hm, [(0, 0, 4, 2), (0, 0, 4, 4)], (4, 4), attention="union")
    assert union["attention_correctness"] == pytest.approx(1.0)
    # the slice map[y0:y1, x0:x1] leaves the right/bottom edge out (unlike the hit test)
    assert score_heatmap(hm, [(1, 1, 3, 3)], (4, 4))["attention_correctness"] == pytest.approx(4 / 16)


def test_whole_image_region_is_dropped_by_the_90_percent_filter():
    low = np.ones((4, 4), np.float32)
    low[0, 0] = 0.0  # min-max normalisation needs a minimum; every other pixel is a peak
    boxes, _ = ak.heat2bbox(low, 40, 40)
    assert len(boxes) == 0  # the one region spans (0, 0)..(39, 39): 0.95 of the image
    gt = [(2, 2, 38, 38)]
    assert score_heatmap(low, gt, (40, 40))["box_correct"] is False
    assert score_heatmap(low, gt, (40, 40), box_method="nms")["box_correct"] is True  # today's variant


def cone(shape, centre, peak, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.maximum(np.abs(yy - centre[0]), np.abs(xx - centre[1]))
    return np.where(d <= radius, peak * (1 - d / (radius + 1)), 0.0)


def test_two_peaks_whose_boxes_merge():
    # full resolution (no resize). An L-shaped ridge from the peak (2, 2) along row 2 and column
    # 14, falling off with the distance, and a second cone inside the L's bounding box
    hm = np.zeros((20, 20), np.float32)
    for k in range(13):
        hm[2, 2 + k] = 1.0 - 0.02 * k
        hm[2 + k, 14] = 1.0 - 0.02 * (12 + k)
    hm += cone((20, 20), (8, 6), 0.8, 2).astype(np.float32)
    boxes, scores = ak.heat2bbox(hm, 20, 20)
    # the cone's box (4, 6)..(8, 10) lies inside the L's (2, 2)..(14, 14): isec / its area = 1 > 0.6
    assert boxes.tolist() == [[2, 2, 14, 14]]
    assert scores.tolist() == [pytest.approx(1.0)]


def test_three_peaks_that_do_not_merge_and_a_fourth_left_out():
    hm = (cone((30, 30), (4, 4), 1.0, 2) + cone((30, 30), (4, 24), 0.9, 2) + cone((30, 30), (24, 4), 0.8, 2) + cone((30, 30), (24, 24), 0.7, 2))
    boxes, scores = ak.heat2bbox(hm.astype(np.float32), 30, 30)
    assert boxes.tolist() == [[2, 2, 6, 6], [22, 2, 26, 6], [2, 22, 6, 26]]  # top 3 by peak, 0.7 left out
    assert scores.tolist() == pytest.approx([1.0, 0.9, 0.8])
    gt = [(2, 2, 27, 27)]  # union of the three boxes (2, 2, 26, 26) vs the GT: IoU 0.92
    assert score_heatmap(hm, gt, (30, 30))["box_correct"] is True
    assert score_heatmap(hm, gt, (30, 30))["box"] == [2.0, 2.0, 27.0, 27.0]


def test_region_is_strictly_above_three_tenths_of_the_peak():
    hm = np.zeros((10, 10), np.float32)
    hm[5, 5] = 1.0
    hm[5, 6] = 0.3  # exactly 0.3 x the peak: not in the region
    hm[5, 4] = 0.31
    boxes, _ = ak.heat2bbox(hm, 10, 10)
    assert boxes.tolist() == [[4, 5, 5, 5]]


def test_frames_of_the_loaders():
    b = [(10.4, 20.6, 30.5, 40.9)]
    f = ak.to_frame(b, 100, 200, "referit")
    assert f.pixel.tolist() == [[10, 20, 30, 40]] and f.norm[0].tolist() == pytest.approx([0.104, 0.103, 0.305, 0.2045])
    f = ak.to_frame([(0, 0, 5, 7)], 10, 10, "flickr30k")
    assert f.pixel.tolist() == [[1, 1, 5, 7]] and f.norm[0].tolist() == pytest.approx([0.1, 0.1, 0.5, 0.7])
    for name in ("coco", "visual_genome", "xyxy"):
        assert ak.to_frame(b, 100, 200, name).pixel.tolist() == [list(b[0])]


def test_zero_map_skips_and_bad_inputs():
    z = score_heatmap(np.zeros((3, 3)), [(0, 0, 5, 5)], (10, 10))
    assert (z["kept"], z["hit"], z["attention_correctness"], z["box_correct"], z["point"]) == (True, False, 0.0, False, None)
    s = score_heatmap(np.ones((3, 3)), [(0, 0, 1, 1)], (10, 10))
    assert (s["kept"], s["skip_reason"], s["hit"]) == (False, "small_box", None)
    assert score_heatmap(torch.ones(3, 3), [], (10, 10))["skip_reason"] == "no_box"
    from phraseground.errors import ConfigError, PhrasegroundError

    with pytest.raises(ConfigError, match="frame"):
        score_heatmap(np.ones((3, 3)), [(0, 0, 5, 5)], (10, 10), box_frame="voc")
    with pytest.raises(PhrasegroundError):
        score_heatmap(np.ones(3), [(0, 0, 5, 5)], (10, 10))
