"""Issue 15's numbered defects, each reproduced through the command line or the API.

Every test here failed on the code the issue was filed against (commit eb3c504).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phraseground.app.cli import main
from test_images import bomb_png


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> bool:
    return code == 2 and err.startswith("phraseground: error: ") and err.count("\n") == 1


def phrases_of(record: dict) -> list[dict]:
    """The per-phrase records of a grounding.json, whatever the record's version calls them."""
    return record.get("predictions", record.get("phrases"))


# 1. decompression bomb: one line, exit 2, in every command that opens images
def test_1_bomb_in_ground_is_one_line_and_nothing_written(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    bomb = bomb_png(tmp_path / "bomb.png")
    code, _, err = _run(capsys, "ground", str(bomb), "--phrase", "a red star", "--checkpoint", str(run / "best.pt"),
                        "--out", str(tmp_path / "g"))
    assert _one_line_error(code, err), err
    assert "bomb.png" in err and "limit" in err and "--max-image-pixels" in err
    assert not (tmp_path / "g").exists()


def test_1_limit_option_refuses_a_normal_image(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    image = tiny_bench / "images" / "000025.jpg"  # 128 x 128 = 16384 pixels
    code, _, err = _run(capsys, "ground", str(image), "--phrase", "a red star", "--checkpoint", str(run / "best.pt"),
                        "--out", str(tmp_path / "g"), "--max-image-pixels", "16000")
    assert _one_line_error(code, err) and "16000" in err
    code, _, err = _run(capsys, "ground", str(image), "--phrase", "a red star", "--checkpoint", str(run / "best.pt"),
                        "--out", str(tmp_path / "g"), "--max-image-pixels", "16384")
    assert code == 0, err


def test_1_bomb_in_a_dataset_stops_evaluate_with_one_line(tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    data = tmp_path / "bench"
    shutil.copytree(tiny_bench, data)
    target = data / "images" / "000023.jpg"  # a test image, written as a PNG under its .jpg name
    bomb_png(target)
    code, _, err = _run(capsys, "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data),
                        "--split", "test", "--json", str(tmp_path / "e.json"), "--quiet")
    assert _one_line_error(code, err) and "000023.jpg" in err, err
    assert not (tmp_path / "e.json").exists()


def test_1_bomb_in_a_dataset_header_read_is_a_data_error(tmp_path):
    from phraseground.data.validate import image_size
    from phraseground.errors import DataFormatError

    with pytest.raises(DataFormatError, match="b.png.*exceeds the limit"):
        image_size(bomb_png(tmp_path / "b.png"))


# 2. 16-bit: the same picture in 8 and 16 bits gives the same answer
def test_2_same_picture_in_8_and_16_bits_grounds_the_same(tiny_run, tiny_bench, tmp_path):
    from phraseground.predict import Grounder

    run, _ = tiny_run
    grey = np.asarray(Image.open(tiny_bench / "images" / "000025.jpg").convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    g = Grounder.from_checkpoint(run / "best.pt", device="cpu")
    answers = []
    for name in ("g8.png", "g16.png"):
        rec = g(tmp_path / name, "a red star")
        p = rec["predictions"][0]
        answers.append(((rec["width"], rec["height"]), p["point"], p["box"], round(p["score"], 5)))
    assert answers[0] == answers[1]


# 3. unknown words: every model reports them and refuses an all-unknown phrase (the fix: i13's model contract)
@pytest.mark.parametrize("model", ["mlmcs", "dsve", "attnreg"])
def test_3_unknown_words_reported_and_all_unknown_refused(model, tiny_bench, tmp_path, capsys):
    from conftest import tiny_checkpoint

    ckpt = tiny_checkpoint(model, tiny_bench, tmp_path)
    image = str(tiny_bench / "images" / "000025.jpg")
    code, _, err = _run(capsys, "ground", image, "--phrase", "zzzz qqqq", "--checkpoint", str(ckpt),
                        "--out", str(tmp_path / "g"))
    assert _one_line_error(code, err) and "zzzz" in err
    assert not (tmp_path / "g").exists()
    code, _, err = _run(capsys, "ground", image, "--phrase", "a red zzzz", "--checkpoint", str(ckpt),
                        "--out", str(tmp_path / "g2"))
    assert code == 0, err
    record = json.loads((tmp_path / "g2" / "grounding.json").read_text())
    assert phrases_of(record)[0]["unknown_words"] == ["zzzz"]


# 5. train --out an existing file
def test_5_train_out_an_existing_file_is_one_line(tiny_bench, tmp_path, capsys):
    from conftest import tiny_overrides

    target = tmp_path / "notadir"
    target.write_text("keep me\n")
    sets = [a for kv in tiny_overrides(tiny_bench) for a in ("--set", kv)]
    code, _, err = _run(capsys, "train", *sets, "--out", str(target), "--quiet")
    assert _one_line_error(code, err) and "notadir" in err
    assert target.read_text() == "keep me\n"
    code, _, err = _run(capsys, "train", *sets, "--out", str(target / "sub"), "--quiet")
    assert _one_line_error(code, err)


# 6. config values type-checked when the config is loaded, with the key path (the fix: i13's typed loader)
@pytest.mark.parametrize("setting, key", [("train.epochs=abc", "train.epochs"), ("train.lr=1e-4", None),
                                          ("train.batch_size=2.5", "train.batch_size"),
                                          ("model_args.dim=big", "model_args.dim")])
def test_6_config_types_checked_at_load(setting, key, tiny_bench, tmp_path, capsys):
    from conftest import tiny_overrides

    from phraseground.errors import ConfigError
    from phraseground.train.config import load_config

    overrides = tiny_overrides(tiny_bench) + [setting]
    if key is None:  # YAML reads 1e-4 as a string: it must become the float 0.0001
        assert load_config(None, overrides).train.lr == pytest.approx(1e-4)
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)
    sets = [a for kv in overrides for a in ("--set", kv)]
    code, _, err = _run(capsys, "train", *sets, "--out", str(tmp_path / "r"), "--quiet")
    assert _one_line_error(code, err) and key in err
    assert not (tmp_path / "r").exists()  # refused before any data or features were prepared


# 4. path traversal: overlay names never come from a phrase-made path
@pytest.mark.parametrize("phrase", ["a red/../../star", "../../../../tmp/x", "/etc/passwd", "..", "a\\..\\..\\star",
                                    "star\x00.png", "a " * 200 + "star"])
def test_4_overlays_stay_inside_the_output_folder(phrase, tiny_run, tiny_bench, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "runs" / "s" / "x"
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = _run(capsys, "ground", str(tiny_bench / "images" / "000025.jpg"), "--phrase", phrase + " red",
                        "--checkpoint", str(run / "best.pt"), "--out", str(out))
    assert code == 0, err
    written = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents for p in written if p not in out.parents)
    assert all(p.parent == out and p.is_file() for p in out.iterdir())  # no sub-folders
    record = json.loads((out / "grounding.json").read_text())
    names = [p["overlay"] for p in phrases_of(record)]
    assert len(names) == 1 and "/" not in names[0] and "\\" not in names[0] and len(names[0]) <= 60
    assert names[0].endswith(".png") and not names[0].startswith(".")
    assert sorted(p.name for p in out.iterdir()) == sorted(["grounding.json", *names])


def test_4_an_existing_link_in_the_output_folder_is_replaced_not_followed(tiny_run, tiny_bench, tmp_path, capsys):
    from phraseground.io import safe_filename

    run, _ = tiny_run
    out, victim = tmp_path / "out", tmp_path / "victim.png"
    out.mkdir()
    victim.write_bytes(b"precious")
    (out / safe_filename("a red star", 0)).symlink_to(victim)
    code, _, err = _run(capsys, "ground", str(tiny_bench / "images" / "000025.jpg"), "--phrase", "a red star",
                        "--checkpoint", str(run / "best.pt"), "--out", str(out))
    assert code == 0, err
    assert victim.read_bytes() == b"precious" and not (out / safe_filename("a red star", 0)).is_symlink()


# 7. output folders that do not exist are created: the help says so
@pytest.mark.parametrize("command, option", [("evaluate", "--json"), ("ground", "--out"), ("train", "--out"),
                                             ("prepare", "--out")])
def test_7_help_says_missing_folders_are_created(command, option, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    line = text[text.rindex(option + " "):][:300]  # the options section, not the usage line
    assert "created" in line, line
