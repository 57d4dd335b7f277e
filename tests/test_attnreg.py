"""attnreg (Endo et al. 2017): box losses against hand-computed boxes, attention shapes,
ablation switches, output parametrisations, grounding and a tiny end-to-end run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

import phraseground
from phraseground.errors import ConfigError
from phraseground.models import box_loss
from phraseground.models.base import TrainBatch
from phraseground.models.registry import build_config, create_model
from phraseground.train.config import load_config
from phraseground.train.loop import train


@pytest.fixture
def one_thread():
    """Small training runs: one intra-op thread (2 threads on a shared 2-core machine thrash)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _t(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- box losses
def test_paired_iou_hand_computed():
    a = _t((0, 0, 2, 2), (0, 0, 1, 1), (0, 0, 4, 2), (1, 1, 3, 3))
    b = _t((1, 1, 3, 3), (2, 2, 3, 3), (1, 0, 3, 1), (1, 1, 3, 3))
    # overlap 1 / union 7; disjoint; inner 2x1 strip of an 8 box: 2 / 8; identical
    expected = torch.tensor([1 / 7, 0.0, 2 / 8, 1.0], dtype=torch.float64)
    assert torch.allclose(box_loss.paired_iou(a, b), expected, atol=1e-6)


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 10
    a = torch.cat([xy, xy + 0.1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 5], 1)  # (50, 4)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 10
    b = torch.cat([xy, xy + 0.1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 5], 1)  # (50, 4)
    assert (box_iou(a, b).diagonal() > 0).sum() > 10  # the check sees overlapping pairs too
    assert torch.allclose(box_loss.paired_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6)


def test_iou_gradient_hand_computed():
    # pred (x1,y1,x2,y2) = (0,0,2,2) vs target (1,1,3,3): I = (x2 − 1)(y2 − 1) = 1, U = 8 − I = 7.
    # d/dx2: dI = 1, dU = h_pred − dI = 1 -> (1·7 − 1·1) / 49 = 6/49;
    # d/dx1: dI = 0 (x1 < 1), dU = −h_pred = −2 -> (0·7 + 1·2) / 49 = 2/49 (same for y).
    pred = _t((0, 0, 2, 2)).requires_grad_()
    box_loss.paired_iou(pred, _t((1, 1, 3, 3))).sum().backward()
    assert torch.allclose(pred.grad, _t((2 / 49, 2 / 49, 6 / 49, 6 / 49)), atol=1e-6)


def test_iou_loss_gives_no_gradient_to_a_disjoint_box_but_giou_does():
    target = _t((5, 5, 6, 6))
    for kind, expected in (("iou", 1.0), ("giou", 1 + (36 - 2) / 36)):  # enclosing box 6x6, union 2
        pred = _t((0, 0, 1, 1)).requires_grad_()
        loss = box_loss.iou_loss(pred, target, kind)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
        loss.sum().backward()
        if kind == "iou":
            assert torch.count_nonzero(pred.grad) == 0
        else:  # translating the box by t towards the target: loss = 2 − 2 / (6 − t)², slope −4 / 6³
            assert pred.grad.sum().item() == pytest.approx(-4 / 216, abs=1e-6)


def test_degenerate_boxes_are_finite():
    pred = _t((1, 1, 1, 3), (2, 2, 2, 2), (3, 3, 1, 1)).requires_grad_()  # zero width, a point, inverted
    target = _t((0, 0, 2, 2), (2, 2, 2, 2), (0, 0, 4, 4))
    iou = box_loss.paired_iou(pred, target)
    assert torch.equal(iou, torch.zeros(3, dtype=torch.float64))
    for kind in box_loss.IOU_LOSSES:
        loss = box_loss.iou_loss(pred, target, kind)
        assert torch.isfinite(loss).all()
        (g,) = torch.autograd.grad(loss.sum(), pred)
        assert torch.isfinite(g).all()


def test_iou_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown IoU loss"):
        box_loss.iou_loss(_t((0, 0, 1, 1)), _t((0, 0, 1, 1)), "diou")


def test_squared_error_and_area_penalty_hand_computed():
    # xywh (0,0,2,2) vs (1,1,2,3): differences (-1,-1,0,-1) -> ½·3
    se = box_loss.squared_error(_t((0, 0, 2, 2), (1, 1, 2, 2)), _t((1, 1, 3, 4), (1, 1, 2, 2)))
    assert torch.allclose(se, torch.tensor([1.5, 0.0], dtype=torch.float64))
    # target covers 0.5 × 0.25 of the image = 2 cells of a 4×4 grid; attention mass 5 -> ½·3²
    pen = box_loss.area_penalty(_t((0, 0, 0.5, 0.25), (0.5, 0.5, 1, 1)), torch.tensor([5.0, 4.0], dtype=torch.float64), 4)
    assert torch.allclose(pen, torch.tensor([4.5, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------- the model
VOCAB = ["a", "red", "blue", "star", "square", "the", "small", "left", "of"]
TOKENS = [["a", "red", "star"], ["the", "small", "blue", "square", "left"], ["star"]]
SMALL = dict(grid=4, word_dim=8, lstm_hidden=6, image_attention_hidden=10, text_attention_hidden=7,
             region_hidden=9, attention_init=0.05)


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("attnreg", vocab=VOCAB, **{**SMALL, **overrides}).eval()


def _features(b: int = 3, grid: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"c4": torch.randn(b, 128, grid, grid, generator=g).relu()}


def _reference(model, features: dict[str, torch.Tensor], tokens: list[str]) -> tuple[torch.Tensor, ...]:
    """The paper's equations for one (image, phrase) pair, one region and one word at a time."""
    cfg = model.cfg
    words = torch.tanh(model.text([tokens]).words[0, -1, : len(tokens)])  # (T, E)
    v_t = words.mean(0)
    regions = features["c4"][0].flatten(1).t()  # (N, C)
    alpha = None
    phrase, image_input = v_t, regions.flatten()
    if cfg.attention != "none":
        alpha = torch.stack([torch.relu(model.image_attention(r, v_t))[0] for r in regions])  # (N,)
        image_input = alpha
    word_alpha = None
    if cfg.attention == "image+text":
        word_alpha = torch.softmax(torch.stack([model.text_attention(v, alpha)[0] for v in words]), 0)  # (T,)
        phrase = sum(a * v for a, v in zip(word_alpha, words))
    return model._to_boxes(model.region(image_input, phrase)[None])[0], alpha, word_alpha


@pytest.mark.parametrize("attention", ["image+text", "image", "none"])
def test_predict_matches_the_per_region_per_word_equations(attention):
    model = _model(attention=attention, attention_init=0.0)
    feats = _features()
    with torch.no_grad():
        for mlp in (model.region, model.text_attention):  # outputs sensitive to every input
            if mlp is not None:
                torch.nn.init.normal_(mlp.out.weight, std=2.0)
        out = model.predict(feats, TOKENS)
        assert out.boxes.shape == (3, 4)
        for b, toks in enumerate(TOKENS):
            box, alpha, word_alpha = _reference(model, {"c4": feats["c4"][b : b + 1]}, toks)
            assert torch.allclose(out.boxes[b], box, atol=1e-5)
            if attention == "none":
                assert out.image_attention is None
            else:
                assert out.image_attention.shape == (3, 16)
                assert torch.allclose(out.image_attention[b], alpha, atol=1e-5)
            if attention == "image+text":
                assert out.word_attention.shape == (3, 5)
                assert torch.allclose(out.word_attention[b, : len(toks)], word_alpha, atol=1e-5)
                assert torch.all(out.word_attention[b, len(toks):] == 0)  # padding gets no weight
            else:
                assert out.word_attention is None


def test_ablation_switches_build_only_the_parts_they_use():
    full, no_text, none = _model(), _model(attention="image"), _model(attention="none")
    assert full.text_attention is not None and full.region.in_a.in_features == 16
    assert no_text.text_attention is None and no_text.image_attention is not None
    assert none.image_attention is None and none.text_attention is None
    assert none.region.in_a.in_features == 16 * 128  # the flattened region features


def _batch(boxes: torch.Tensor | None = None) -> TrainBatch:
    if boxes is None:
        boxes = torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.25, 0.25, 1.0, 1.0], [0.5, 0.0, 0.75, 0.5]])
    return TrainBatch(_features(), TOKENS, boxes, torch.arange(3))


def _xywh(b: torch.Tensor) -> torch.Tensor:
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)  # (N, 4)


@pytest.mark.parametrize("penalty", [True, False])
def test_loss_is_iou_plus_weighted_se_and_area_terms(penalty):
    model = _model(area_penalty=penalty, lambda_se=0.01, lambda_area=0.1, box_units=10.0, iou_loss="iou")
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        pred = model.predict(batch.features, batch.tokens)
    p, t = pred.boxes * 10, batch.boxes * 10  # box units
    iou = box_iou(p, t).diagonal()
    wh = _xywh(p) - _xywh(t)
    s_box = (batch.boxes[:, 2] - batch.boxes[:, 0]) * (batch.boxes[:, 3] - batch.boxes[:, 1]) * 16
    area = 0.5 * (s_box - pred.image_attention.sum(-1)) ** 2
    expected = (1 - iou).mean() + 0.01 * (0.5 * (wh**2).sum(-1)).mean() + (0.1 * area.mean() if penalty else 0)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss_area"].item() == pytest.approx(area.mean().item(), rel=1e-5)  # logged either way


def test_no_attention_ablation_has_no_area_term():
    out = _model(attention="none")(_batch())
    assert "loss_area" not in out and torch.isfinite(out["loss"])


def test_box_output_parametrisations_hand_computed():
    relu = _model(box_output="relu", box_units=100.0)
    raw = torch.tensor([[10.0, 20.0, 30.0, 40.0], [-5.0, 10.0, 20.0, -1.0]])
    assert torch.allclose(relu._to_boxes(raw), torch.tensor([[0.1, 0.2, 0.4, 0.6], [0.0, 0.1, 0.2, 0.1]]))
    sig = _model(box_output="sigmoid")
    logit = lambda p: torch.log(torch.tensor(p) / (1 - torch.tensor(p)))  # noqa: E731
    raw = torch.stack([torch.zeros(4), torch.stack([logit(0.5), logit(0.5), logit(0.2), logit(0.4)])])
    assert torch.allclose(sig._to_boxes(raw), torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.4, 0.3, 0.6, 0.7]]), atol=1e-6)


@pytest.mark.parametrize("box_output", ["relu", "sigmoid"])
def test_initial_box_is_centred_and_attention_alive(box_output):
    model = _model(box_output=box_output, attention_init=0.05)
    with torch.no_grad():
        out = model.predict(_features(), TOKENS)
    assert torch.allclose(out.boxes, torch.tensor([0.25, 0.25, 0.75, 0.75]).expand(3, 4), atol=0.05)
    assert (out.image_attention > 0).all() and (out.image_attention - 0.05).abs().max() < 0.05


@pytest.mark.parametrize("bad", [
    {"attention": "text"}, {"box_output": "linear"}, {"iou_loss": "l1"}, {"lambda_se": -1.0},
    {"dropout": 1.0}, {"grid": 0}, {"box_units": 0.0}, {"attention_init": -0.1}, {"text_encoder": "elmo"},
])
def test_bad_config_values_are_config_errors(bad):
    with pytest.raises(ConfigError, match=rf"config: model_args\.{next(iter(bad))}: "):
        build_config("attnreg", bad)


def test_numbers_written_as_strings_are_read_or_rejected():
    cfg = build_config("attnreg", {"lambda_se": "1e-3", "grid": "8"})  # YAML 1.1 keeps "1e-3" a string
    assert cfg.lambda_se == 1e-3 and cfg.grid == 8
    for bad in ({"lambda_se": "small"}, {"grid": 2.5}):
        with pytest.raises(ConfigError, match=r"config: model_args\.(lambda_se|grid): expected (float|int)"):
            build_config("attnreg", bad)


def test_unknown_tap_is_a_config_error():
    with pytest.raises(ConfigError, match="no tap"):
        create_model("attnreg", vocab=VOCAB, taps=["conv5_3"])


def test_ground_feeds_each_span_alone_with_its_image():
    model = _model()
    feats = _features(2)
    tokens = [["x", "the", "red", "star", "y"], ["a", "blue", "square"]]
    with torch.no_grad():
        res = model.ground(feats, tokens, [[(1, 4), (0, 1)], [(1, 3)]])
        alone = model.predict({"c4": feats["c4"][[0, 0, 1]]}, [["the", "red", "star"], ["x"], ["blue", "square"]])
    assert [len(r.boxes) for r in res] == [2, 1]
    boxes = torch.cat([r.boxes for r in res])
    assert torch.allclose(boxes, alone.boxes.clamp(0, 1), atol=1e-6)
    heat = torch.cat([r.heatmaps for r in res])  # (3, 4, 4)
    assert torch.allclose(heat, alone.image_attention.view(3, 4, 4), atol=1e-6)
    assert torch.allclose(torch.cat([r.scores for r in res]), alone.image_attention.sum(-1), atol=1e-5)
    assert res[0].extras["word_attention"].shape == (2, 3)


def test_ground_without_attention_gives_zero_heatmaps_and_boxes():
    model = _model(attention="none")
    with torch.no_grad():
        (res,) = model.ground(_features(1), [["a", "red", "star"]], [[(0, 3)]])
    assert torch.count_nonzero(res.heatmaps) == 0 and res.boxes.shape == (1, 4) and not res.extras


def test_word_table_text_encoder_starts_from_the_file(tmp_path):
    table = tmp_path / "vectors.txt"
    table.write_text("red 0.5 -1 2\nstar 1 1 1\nunrelated 3 3 3\n")
    model = _model(text_encoder="word_table", text_encoder_args={"path": str(table), "freeze": False})
    emb = model.text.embedding.weight
    assert model.text.vocab.itos == ["<pad>", "<unk>", "red", "star"]  # restricted to the training words
    assert torch.allclose(emb[2:], torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]))
    model.train()
    model(_batch())["loss"].backward()
    assert emb.grad is not None and torch.count_nonzero(emb.grad[2:]) > 0


def _toy_scenes(n: int, seed: int) -> TrainBatch:
    """One object per 4×4 image: a cell marked by its colour's channels on faint noise; the
    phrase names it and its box is that cell."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, 128, 4, 4, generator=g) * 0.1
    tokens, boxes = [], []
    for i in range(n):
        r, c = divmod(int(torch.randint(16, (1,), generator=g)), 4)
        k = int(torch.randint(2, (1,), generator=g))
        feats[i, 64 * k : 64 * (k + 1), r, c] += 1.0
        tokens.append(["the", ("red", "blue")[k], "star"])
        boxes.append([c / 4, r / 4, (c + 1) / 4, (r + 1) / 4])
    return TrainBatch({"c4": feats}, tokens, torch.tensor(boxes), torch.arange(n))


def test_default_parametrisation_learns_to_box_the_object(one_thread):
    torch.manual_seed(0)
    model = create_model("attnreg", vocab=VOCAB, **{**SMALL, "image_attention_hidden": 16, "region_hidden": 32})
    batch = _toy_scenes(128, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    held_out = _toy_scenes(64, seed=1)
    with torch.no_grad():
        iou = box_iou(model.predict(held_out.features, held_out.tokens).boxes, held_out.boxes).diagonal()
    # the untrained centred box reaches IoU 0.25 at best
    assert (iou >= 0.5).float().mean() >= 0.9


# ---------------------------------------------------------------- configs and the training loop
CONFIGS = Path(phraseground.__file__).resolve().parent / "configs"


@pytest.mark.parametrize("name", ["attnreg_synthetic.yaml", "attnreg_paper_referit.yaml"])
def test_configs_load_and_validate(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model == "attnreg"
    model_cfg = build_config("attnreg", cfg.model_args)
    if name.startswith("attnreg_paper"):  # Table 1 and Sec. 3.6 of the paper
        assert (model_cfg.image_attention_layers, model_cfg.image_attention_hidden) == (3, 750)
        assert (model_cfg.text_attention_layers, model_cfg.text_attention_hidden) == (1, 500)
        assert (model_cfg.region_layers, model_cfg.region_hidden) == (2, 450)
        assert (model_cfg.dropout, cfg.train.batch_size, cfg.train.lr) == (0.6, 20, 1e-3)
        assert (model_cfg.box_output, model_cfg.iou_loss, model_cfg.attention_init) == ("relu", "iou", 0.0)
        assert (model_cfg.lambda_se, model_cfg.lambda_area, model_cfg.area_penalty) == (1e-4, 1e-5, True)


def test_training_loop_end_to_end(tiny_bench, tmp_path, one_thread):
    overrides = [f"data.root={tiny_bench}", "model_args.backbone_weights=random", "model_args.grid=4",
                 "model_args.image_attention_hidden=8", "model_args.region_hidden=8", "model_args.word_dim=8",
                 "model_args.lstm_hidden=8", "model_args.text_attention_hidden=8", "train.epochs=1",
                 "train.batch_size=16", "train.val_max_images=1"]
    summary = train(load_config(CONFIGS / "attnreg_synthetic.yaml", overrides), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.pt").is_file() and summary["steps"] > 0
    report = summary["last_val"]
    assert report["box"]["n_evaluated"] == report["pointing_box_centre"]["n_evaluated"] > 0
