"""Every registered model: random weights, a tiny batch, forward + backward, no NaN, every
trainable parameter gets a gradient; grounding output shapes; checkpoint round trip."""
from __future__ import annotations

import pytest
import torch

from phraseground.encoders.vision import get_backbone_spec
from phraseground.models.base import TrainBatch
from phraseground.models.registry import create_model, list_models

VOCAB = ["a", "red", "star", "blue", "square", "left", "of", "the", "small"]
TOKENS = [["a", "red", "star"], ["the", "small", "blue", "square", "left", "of", "a", "star"], ["a", "square"]]


def _inputs(model, b=3, side=6):
    spec = get_backbone_spec(model.cfg.backbone)
    g = torch.Generator().manual_seed(1)
    size = model.feature_grid or side
    return {t: torch.randn(b, spec.channels[t], size, size, generator=g) for t in model.feature_taps}


def test_registry_lists_the_models():
    assert "mlmcs" in list_models()


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, vocab=VOCAB)
    if model.supervision == "none":
        pytest.skip(f"{name} has nothing to train")
    model.train()
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8], [0.0, 0.0, 0.4, 0.5]])
    batch = TrainBatch(_inputs(model), TOKENS, boxes if model.supervision == "full" else None, torch.arange(3))
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    out["loss"].backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_ground_with_shared_images_equals_ground_per_text(name):
    """Texts sharing an image (``image_of``) are grounded exactly as with the image's features
    repeated for every text."""
    torch.manual_seed(0)
    model = create_model(name, vocab=VOCAB).eval()
    feats = _inputs(model, b=2)
    image_of = torch.tensor([1, 0, 1])
    spans = [[(0, 3)], [(0, 4), (6, 8)], [(0, 2)]]
    with torch.no_grad():
        shared = model.ground(feats, TOKENS, spans, image_of)
        repeated = model.ground({t: f[image_of] for t, f in feats.items()}, TOKENS, spans)
    for a, b in zip(shared, repeated):
        torch.testing.assert_close(a.heatmaps, b.heatmaps)
        torch.testing.assert_close(a.scores, b.scores)
        torch.testing.assert_close(a.levels, b.levels)
        if b.boxes is not None:
            torch.testing.assert_close(a.boxes, b.boxes)


@pytest.mark.parametrize("name", list_models())
def test_ground_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, vocab=VOCAB).eval()
    spans = [[(0, 3)], [(0, 4), (6, 8)], [(0, 2)]]
    with torch.no_grad():
        results = model.ground(_inputs(model), TOKENS, spans)
    assert len(results) == 3
    for res, sp in zip(results, spans):
        assert res.heatmaps.dim() == 3 and res.heatmaps.shape[0] == len(sp)
        assert (res.heatmaps >= 0).all() and torch.isfinite(res.heatmaps).all()
        assert res.scores.shape == (len(sp),) and res.levels.shape == (len(sp),)
        if res.boxes is not None:
            assert res.boxes.shape == (len(sp), 4)


@pytest.mark.parametrize("name", list_models())
def test_checkpoint_alone_rebuilds_the_model(name, tmp_path):
    from phraseground.models.checkpoint import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model(name, vocab=VOCAB).eval()
    save_checkpoint({"model": name, "config": {"model_args": {}}, "vocab": VOCAB, "state_dict": model.state_dict()},
                    tmp_path / "m.pt")
    rebuilt, _ = model_from_checkpoint(tmp_path / "m.pt")
    for (k, a), (k2, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
