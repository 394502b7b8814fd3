"""Every config field is a `run.py train` flag, and the user's flags win over the preset's values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from run import build_parser
from tests.conftest import run_cli
from train.config import PRESETS, SECTIONS, RunConfig, config_flags, preset, reconcile


def _fields(cfg: RunConfig) -> set[str]:
    keys = {f.name for f in dataclasses.fields(cfg) if f.name not in SECTIONS}
    for section in SECTIONS:
        keys |= {f"{section}.{f.name}" for f in dataclasses.fields(getattr(cfg, section))}
    return keys


def test_every_config_field_has_a_flag_with_its_docstring_as_help():
    flags = config_flags()
    assert {f.key for f in flags} == _fields(RunConfig())
    assert len({f.flag for f in flags}) == len(flags)
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    helps = {opt: action.help for action in train._actions for opt in action.option_strings}
    for f in flags:
        assert f.help and f.help in helps[f.flag], f.flag


def test_dataclass_defaults_are_the_default_preset():
    assert preset("default") == RunConfig()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_needs_nothing_dropped(name):
    cfg = preset(name)
    cfg.validate()
    assert reconcile(cfg, set()) == []


def test_a_chosen_field_is_never_dropped():
    cfg = preset("default")
    cfg.model.core, cfg.model.learning = "lstm", "rtrl"
    assert reconcile(cfg, {"model.core", "model.learning"}) == ["store.prefetch: 'detector' -> 'lru' "
                                                                 "(cohort prefetch needs --core moe)"]
    assert cfg.model.learning == "rtrl"  # the user's choice stays, and validation refuses it


def test_core_lstm_trains_from_the_default_preset_and_says_what_it_dropped(tmp_path):
    run = tmp_path / "r"
    proc = run_cli("train", "--games", "Breakout", "--core", "lstm", "--frames-per-game", "1280",
                   "--eval-every", "0", "--episodes", "1", "--max-episode-steps", "50", "--num-envs", "4",
                   "--hidden-size", "32", "--run-dir", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "model.learning: 'rtrl' -> 'tbptt'" in proc.stdout and "store.prefetch: 'detector' -> 'lru'" in proc.stdout
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["core"], saved["model"]["learning"], saved["store"]["prefetch"]) == ("lstm", "tbptt", "lru")
    assert saved["env"]["games"] == ["Breakout"]
    assert (run / "checkpoints" / "stage_001.pt").exists()
