"""Every paper config builds with random weights and takes one training step and one
grounding step on tiny random inputs, so none of them rots. Resources that cannot be
downloaded here (ELMo files, word tables) are replaced by tiny files in the real formats."""
from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

import pytest
import torch

from phraseground.train.config import package_config
from phraseground.encoders.vision import create_backbone, get_backbone_spec
from phraseground.models.base import TrainBatch
from phraseground.models.registry import create_model
from phraseground.train.config import load_config
from test_elmo import make_weights, write_elmo

CONFIG_DIR = package_config("mlmcs_synthetic").parent
PAPER_CONFIGS = sorted(Path(p).name for p in glob.glob(str(CONFIG_DIR / "*_paper_*.yaml")) if "_base" not in p)
VOCAB = ["a", "man", "in", "red", "the", "bike", "on", "left", "."]
TOKENS = [["a", "man", "in", "red"], ["the", "bike", "on", "the", "left", "."]]


def _offline_text_args(args: dict, kind: str, tmp: Path) -> dict:
    """Point the text encoder at tiny local files in the real formats."""
    if kind == "elmo":
        opts, weights = write_elmo(tmp, make_weights())
        return {"options_file": str(opts), "weight_file": str(weights)}
    if kind == "word_table":
        table = tmp / "vectors.txt"  # GloVe text format
        dim = 6
        words = VOCAB + ([args["unk_token"]] if args.get("unk_token") else [])
        table.write_text("".join(f"{w} " + " ".join(f"{(i + j) / 10:.2f}" for j in range(dim)) + "\n"
                                 for i, w in enumerate(words)))
        return {**{k: v for k, v in args.items() if k not in ("path", "vocab_file")}, "path": str(table)}
    return args


def test_every_model_has_paper_configs():
    names = {load_config(CONFIG_DIR / c).model for c in PAPER_CONFIGS}
    assert {"mlmcs"} <= names and len([c for c in PAPER_CONFIGS if c.startswith("mlmcs")]) == 8


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_config_builds_and_steps(config, tmp_path):
    cfg = load_config(CONFIG_DIR / config)
    args = dataclasses.asdict(cfg.model_args)
    args["text_encoder_args"] = _offline_text_args(args.get("text_encoder_args", {}), args.get("text_encoder", "learned"), tmp_path)
    args["backbone_weights"] = "random"
    torch.manual_seed(0)
    model = create_model(cfg.model, vocab=VOCAB, **args)
    spec = get_backbone_spec(model.cfg.backbone)
    side = model.feature_grid or 4
    feats = {t: torch.randn(2, spec.channels[t], side, side) for t in model.feature_taps}
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.4, 0.2, 0.9, 0.9]]) if model.supervision == "full" else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    model.train()
    out = model(TrainBatch(feats, TOKENS, boxes, torch.arange(2)))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        res = model.ground(feats, TOKENS, [[(0, 2), (3, 4)], [(0, 2)]])
    assert [r.heatmaps.shape[0] for r in res] == [2, 1]
    assert all(torch.isfinite(r.heatmaps).all() for r in res)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "resnet152", "pnasnet5large"])
def test_backbone_taps_have_the_declared_channels(backbone):
    spec = get_backbone_spec(backbone)
    extractor = create_backbone(backbone, weights="random", taps=list(spec.channels))
    with torch.no_grad():
        out = extractor(torch.randn(1, 3, 96, 96))
    assert {t: f.shape[1] for t, f in out.items()} == spec.channels
