"""Options every command shares: help with defaults, -q/-v, --device; prepare's dataset list; the
library logs and never prints."""
from __future__ import annotations

import argparse
import inspect

import pytest
import torch

import phraseground.app.cli as cli  # the CLI itself is what these tests test
from phraseground.app.cli import main
from phraseground.device import resolve_device
from phraseground.errors import ConfigError


def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help_with_its_default_and_q_v(name):
    command = _commands()[name]
    fmt = cli.HelpFormatter(name)
    for action in command._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = fmt._get_help_string(action)
        assert action.help and "default" in text, (name, action.option_strings, text)
    options = command._option_string_actions
    assert "-q" in options and "--quiet" in options and "-v" in options and "--verbose" in options
    if name in cli.DEVICE_COMMANDS:
        assert "--device" in options


def test_device_on_the_model_commands():
    assert {"train", "evaluate", "ground", "demo"} <= set(_commands())
    for name in ("train", "evaluate", "ground", "demo"):
        assert "--device" in _commands()[name]._option_string_actions


def test_prepare_help_lists_datasets_files_and_option_keys(capsys):
    from phraseground.data.index import DATASETS

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = capsys.readouterr().out
    for name, reader in DATASETS.items():
        assert f"\n  {name}\n" in text
        for p in inspect.signature(reader).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                assert f"{p.name}=" in text
    assert "Sentences/<id>.txt" in text and "region_descriptions.json" in text and "dataset_coco.json" in text


def test_resolve_device(monkeypatch):
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda:1") and resolve_device("auto") == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="2 GPU"):
        resolve_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_library_logs_and_never_prints(tiny_bench, tmp_path, capsys, caplog):
    import logging

    from conftest import tiny_overrides
    from phraseground import Grounder
    from phraseground.predict.export import export_checkpoint
    from phraseground.train.config import load_config
    from phraseground.train.loop import train

    with caplog.at_level(logging.INFO, logger="phraseground"):
        train(load_config(None, tiny_overrides(tiny_bench, **{"train.epochs": 1})), tmp_path / "r", progress=False)
        export_checkpoint(tmp_path / "r" / "best.pt", tmp_path / "e")
        Grounder.from_pretrained(tmp_path / "e", device="cpu")(tiny_bench / "images" / "000025.jpg", "a red star")
    out, _ = capsys.readouterr()
    assert out == ""
    assert any("validation score" in r.getMessage() for r in caplog.records)


def test_quiet_and_verbose_set_the_log_level(tiny_bench, tmp_path, capsys):
    import logging

    levels = []
    real = cli.cmd_synth
    cli_parser = cli.build_parser

    def spy(args):
        levels.append(logging.getLogger("phraseground").level)
        return real(args)

    def parser():
        p = cli_parser()
        p._subparsers._group_actions[0].choices["synth"].set_defaults(func=spy)
        return p

    import unittest.mock as mock

    with mock.patch.object(cli, "build_parser", parser):
        for flag in ("-q", "-vv", "-v"):
            assert main(["synth", str(tmp_path / "s"), "--images", "5", flag]) == 0
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert logging.getLogger("phraseground").level == logging.NOTSET  # main leaves the library as it found it
