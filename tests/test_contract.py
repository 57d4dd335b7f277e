"""The model contract (models/base.py), the typed config loader, self-contained checkpoints,
the tokenizer and the import layers."""
from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import phraseground
from phraseground.encoders.text import Vocab, tokenize, tokenize_spans
from phraseground.errors import CheckpointError, ConfigError, PhrasegroundError
from phraseground.features import FeatureSpec
from phraseground.models.base import supports_retrieval
from phraseground.models.checkpoint import load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint
from phraseground.models.registry import create_model, list_models, model_class
from phraseground.train.config import load_config
from test_elmo import make_weights, write_elmo

VOCAB = ["a", "red", "blue", "star", "square", "left", "of", "."]
SRC = Path(phraseground.__file__).resolve().parent


# ---------------------------------------------------------------- typed config
def test_config_values_are_typed_with_the_key_path():
    cfg = load_config(None, ["train.lr=1e-4", "model_args.dim=64", "train.lr_milestones=[2, '3']"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.model_args.dim == 64 and cfg.train.lr_milestones == [2, 3]
    for override, message in [
        ("train.epochs=abc", "config: train.epochs: expected int, got 'abc'"),
        ("model_args.dim=2.5", "config: model_args.dim: expected int, got 2.5"),
        ("train.lr=fast", "config: train.lr: expected float, got 'fast'"),
        ("data.root=[1]", "config: data.root: expected str"),
        ("model_args.area_penalty=1", "config: model_args.area_penalty: unknown option"),
        ("train.caption_sampling=some", "config: train.caption_sampling: expected one of ['all', 'one']"),
        ("train.epoch=3", "config: train.epoch: unknown option; did you mean 'epochs'?"),
        ("model_args.levels=[c2]", "config: model_args.levels: renamed: use model_args.taps"),
        ("model_args.taps=[c9]", "config: model_args.taps: backbone synthcnn has no tap(s) ['c9']"),
        ("trian.epochs=3", "config: trian: unknown section"),
        ("model=nope", "config: model: unknown model 'nope'"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [override] if not override.startswith("model=") else [override])
        assert message in str(e.value), (override, str(e.value))


def test_bad_config_fails_before_any_data_is_generated(tmp_path, capsys):
    """Issue 15 #6: the old code generated the benchmark (and extracted features) first."""
    from phraseground.app.cli import main

    for bad in ("train.epochs=abc", "model_args.dim=abc", "model_args.no_such=1"):
        out = tmp_path / bad.split("=")[0]
        assert main(["train", "--out", str(out), "--quiet", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("phraseground: error: config: ") and err.count("\n") == 1, err
        assert not (out / "synthetic").exists()


def test_train_leaves_the_callers_config_alone(tmp_path):
    from phraseground.train.loop import train

    cfg = load_config(None, ["data.synthetic_images=4", "train.batch_size=2", "train.epochs=1", "model_args.dim=8",
                             "model_args.grid=4", "model_args.word_dim=8", "train.caption_sampling=all",
                             "train.val_max_images=1"])
    before = copy.deepcopy(cfg)
    train(cfg, tmp_path, progress=False)
    assert cfg == before and cfg.data.root == ""
    assert (tmp_path / "synthetic" / "synthetic.json").is_file()


def test_model_configs_share_the_backbone_fields_and_names():
    for name in list_models():
        if model_class(name).supervision == "none":  # cam: nothing to train, no training config
            continue
        cfg = load_config(None, [f"model={name}"]).model_args
        fields = {f.name for f in dataclasses.fields(cfg)}
        assert {"backbone", "backbone_weights", "taps", "word_dim"} <= fields, name
        assert not {"levels", "tap", "text_dim"} & fields, name


# ---------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", ["mlmcs", "dsve", "attnreg"])
def test_every_model_declares_its_feature_needs_and_vocabulary(name):
    model = create_model(name, vocab=VOCAB)
    needs = model.feature_needs
    assert isinstance(needs, FeatureSpec) and needs.backbone == "synthcnn" and needs.taps
    assert needs.grid == (None if name == "dsve" else model.cfg.grid)
    assert model.unknown_words(["Red", "star", "zebra", "."]) == ["zebra"]  # case folded, punctuation known
    assert model.vocabulary()[:2] == ["<pad>", "<unk>"]
    assert supports_retrieval(model) == (name == "dsve")
    assert model.tokenize("A red star.") == ["A", "red", "star", "."]


def _grounder_checkpoint(name: str, tmp_path: Path) -> Path:
    model = create_model(name, vocab=VOCAB, backbone_weights="random").eval()
    path = tmp_path / f"{name}.pt"
    config = {"model": name, "model_args": dataclasses.asdict(model.cfg)}
    save_checkpoint(model_payload(model, config, VOCAB), path)
    return path


@pytest.mark.parametrize("name", ["dsve", "mlmcs"])
def test_unknown_words_are_reported_and_an_all_unknown_phrase_refused(name, tmp_path):
    """Issue 15 #3: dsve named its encoder `words`, so the Grounder never saw its vocabulary."""
    from phraseground.predict import Grounder

    image = tmp_path / "im.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    grounder = Grounder.from_checkpoint(_grounder_checkpoint(name, tmp_path), device="cpu")
    with pytest.raises(PhrasegroundError, match="no word is known"):
        grounder(image, "zebra giraffe")
    record = grounder(image, "[a zebra star].")  # "star." is not unknown: the "." is split off
    assert record["predictions"][0]["unknown_words"] == ["zebra"]
    assert record["predictions"][0]["label"] == "a zebra star"


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_splits_punctuation_and_keeps_case_and_spans():
    assert tokenize("A red star.") == ["A", "red", "star", "."]
    assert tokenize("(red) U.S. man's t-shirt... ok!!") == ["(", "red", ")", "U.S.", "man's", "t-shirt", "...", "ok", "!!"]
    tokens, spans = tokenize_spans("[a red star]. left, of the square.", [(0, 3), (3, 4), (4, 7), (2, 2)])
    assert tokens == ["[", "a", "red", "star", "]", ".", "left", ",", "of", "the", "square", "."]
    assert [tokens[s:e] for s, e in spans] == [["a", "red", "star"], ["left"], ["of", "the", "square"], []]
    with pytest.raises(ValueError):
        tokenize_spans("two words", [(1, 3)])
    vocab = Vocab.build([["A", "Red", "star"], ["a", "."]])
    assert vocab.itos[2:] == ["a", ".", "red", "star"] and "RED" in vocab and "zebra" not in vocab
    cased = Vocab(["Paris", "paris", "the"])
    assert cased.index("Paris") != cased.index("paris") and cased.index("The") == cased.index("the")


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_rebuilds_pretrained_text_encoders_without_their_files(tmp_path):
    table = tmp_path / "vectors.txt"
    table.write_text("".join(f"{w} {' '.join(str(v) for v in np.random.default_rng(i).normal(size=4))}\n"
                             for i, w in enumerate(["a", "red", "star", "blue", "square"])))
    opts, weights = write_elmo(tmp_path, make_weights())
    cases = [("dsve", {"text_encoder": "word_table", "text_encoder_args": {"path": str(table)}}),
             ("attnreg", {"text_encoder": "word_table", "text_encoder_args": {"path": str(table)}}),
             ("mlmcs", {"text_encoder": "elmo", "word_layers": [0, 1, 2],
                        "text_encoder_args": {"options_file": str(opts), "weight_file": str(weights)}})]
    tokens = [["a", "red", "star"], ["blue", "square"]]
    for name, args in cases:
        torch.manual_seed(0)
        model = create_model(name, vocab=VOCAB, backbone_weights="random", **args).eval()
        path = tmp_path / f"{name}.pt"
        save_checkpoint(model_payload(model, {"model": name, "model_args": dataclasses.asdict(model.cfg)}, VOCAB), path)
        moved = tmp_path / "moved"
        moved.mkdir(exist_ok=True)
        for f in (table, opts, weights):
            f.rename(moved / f.name)
        try:
            rebuilt, _ = model_from_checkpoint(path)  # no table / ELMo file to read
        finally:
            for f in (table, opts, weights):
                (moved / f.name).rename(f)
        with torch.no_grad():
            a, b = model.text(tokens), rebuilt.text(tokens)
        torch.testing.assert_close(a.words, b.words)
        torch.testing.assert_close(a.sentence, b.sentence)


def test_older_checkpoint_format_is_refused_in_one_line(tmp_path):
    torch.save({"format": "phraseground-checkpoint-v1", "model": "mlmcs"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "old.pt")
    assert "older phraseground" in str(e.value) and "\n" not in str(e.value)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    from phraseground.train.loop import rng_state, set_rng_state

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ---------------------------------------------------------------- layers
LAYERS = {  # package -> rank; a module may import only packages of a lower or equal rank
    "errors": 0, "io": 0, "schema": 0, "device": 0, "extras": 0,
    "data": 1, "encoders": 2, "features": 2, "feature_store": 2, "models": 3,
    "eval": 4, "train": 5, "viz": 5, "predict": 6, "app": 7, "cli": 7, "__main__": 7,
}
SAME_RANK_FORBIDDEN = set()


def _imports(path: Path) -> set[str]:
    """phraseground sub-packages a module imports (absolute or relative), as top-level names."""
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:
                    parts = [alias.name for alias in node.names]
                    found.update(parts)
                    continue
            elif node.module and node.module.split(".")[0] == "phraseground":
                parts = node.module.split(".")[1:]
                if not parts:
                    found.update(alias.name for alias in node.names)
                    continue
            else:
                continue
            found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "phraseground" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_layers_import_only_downward():
    """data -> encoders -> models -> eval -> train -> predict -> app; the library never imports
    the app; train and eval do not import each other both ways (train may validate with eval)."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        if top == "__init__" or top == "cli":  # the package root re-exports; cli.py is the app's alias
            continue
        rank = LAYERS.get(top)
        assert rank is not None, f"{path}: add its layer to LAYERS (and the README's Architecture section)"
        for target in _imports(path) - {top}:
            if target in LAYERS and LAYERS[target] > rank:
                bad.append(f"{path.relative_to(SRC)} imports {target}")
    assert not bad, bad


def test_no_test_imports_the_app_to_reach_library_code():
    tests = Path(__file__).resolve().parent
    for path in tests.glob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.startswith("from phraseground.app") and "import main" not in line and "report" not in line \
                    and "serve" not in line and "demo import run_demo" not in line:
                raise AssertionError(f"{path.name}: {line}")
