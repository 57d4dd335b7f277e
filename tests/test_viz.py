"""Overlays: the heatmap is blended where it is hot, the image is left alone where it is zero."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phraseground.viz import overlay


def test_overlay_blends_only_where_the_heatmap_is_hot():
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    heat = torch.zeros(10, 20)
    heat[2:5, 12:16] = 1.0
    out = np.asarray(overlay(image, heat, alpha=0.5), dtype=np.int32)
    assert (out[8, 2] == (10, 200, 30)).all()  # zero heat: the image pixel unchanged
    assert np.abs(out[3, 13] - (10, 200, 30)).sum() > 50  # peak: half-blended with the colour map


def test_overlay_marks_point_and_box_and_checks_size():
    image = Image.new("RGB", (40, 40), (0, 0, 0))
    out = np.asarray(overlay(image, torch.zeros(40, 40), point=(20, 20), box=(5, 5, 35, 35)))
    assert (out[20, 20] == (255, 0, 0)).all()  # red dot at the point
    assert (out[5, 20] == (255, 255, 255)).all() and (out[34, 20] == (255, 255, 255)).all()  # box edges
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, torch.zeros(10, 10))
