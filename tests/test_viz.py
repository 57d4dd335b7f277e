"""Overlays: the heatmap is blended where it is hot, the image is left alone where it is zero."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phraseground.viz import GT_COLOUR, PRED_COLOUR, display_scale, overlay


def test_overlay_blends_only_where_the_heatmap_is_hot():
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    heat = torch.zeros(10, 20)
    heat[2:5, 12:16] = 1.0
    out = np.asarray(overlay(image, heat, alpha=0.5), dtype=np.int32)
    assert (out[8, 2] == (10, 200, 30)).all()  # zero heat: the image pixel unchanged
    assert np.abs(out[3, 13] - (10, 200, 30)).sum() > 50  # peak: half-blended with the colour map


def test_overlay_colours_upscaling_and_labels():
    image = Image.new("RGB", (40, 30), (0, 0, 0))
    f = display_scale(40, 30)
    assert f == 9 and display_scale(2000, 1000) == 1024 / 2000 and display_scale(500, 400) == 1.0
    heat = torch.zeros(30, 40)
    heat[20:25, 30:35] = 1.0
    out = np.asarray(overlay(image, heat, point=(10.5, 10.5), box=(5, 5, 20, 20), gt_boxes=[(25, 15, 38, 28)]))
    assert tuple(out[10, 10]) == PRED_COLOUR  # the point
    assert tuple(out[5, 12]) == PRED_COLOUR and tuple(out[15, 32]) == GT_COLOUR  # prediction box, GT box edges
    hot = out[22, 32].astype(int)
    assert hot[0] > hot[2] > 0 or hot.sum() > 200  # magma's hot end: warm, not jet's red-only
    assert (out[2, 38] == 0).all()  # zero heat leaves the image alone
    labelled = np.asarray(overlay(Image.new("RGB", (400, 300)), None, label="a red star"))
    small = np.asarray(overlay(Image.new("RGB", (100, 75)), None, label="a red star"))
    rows = lambda a: int((a.max(axis=(1, 2)) > 0).sum())  # noqa: E731 (rows the label strip touches)
    assert rows(labelled) > 2 * rows(small) > 0  # the label grows with the image
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, torch.zeros(10, 10))
