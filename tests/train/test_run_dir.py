"""Starting and resuming in a run dir: a dir whose start failed before its first checkpoint is no trap."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UserError
from run import build_parser, resolve_train_config
from storage.checkpoint import CheckpointManager
from storage.run_dir import RunDir
from train import run_dir as run_dirs
from train.config import preset


def _failed_start(root: Path, **changes) -> RunDir:
    """A run dir as a start that failed before its first checkpoint leaves it: config.json alone."""
    cfg = preset("smoke")
    for key, value in changes.items():
        setattr(cfg.env, key, value)
    rd = RunDir(root)
    run_dirs.start(rd, cfg, resume=False)
    return rd


def test_a_dir_without_a_checkpoint_does_not_block_a_corrected_start(tmp_path):
    rd = _failed_start(tmp_path / "run", num_envs=3)
    assert not run_dirs.holds_run(rd)
    cfg = preset("smoke")
    run_dirs.start(rd, cfg, resume=False)  # the corrected command: no "already holds a run"
    assert run_dirs.read_config(rd) == cfg


def test_resume_of_a_dir_without_a_checkpoint_uses_the_flags_not_the_failed_config(tmp_path):
    rd = _failed_start(tmp_path / "run", num_envs=3)
    args = build_parser().parse_args(["train", "--preset", "smoke", "--run-dir", str(rd.root), "--resume"])
    cfg, _, _ = resolve_train_config(args)
    assert cfg == preset("smoke")


def test_a_dir_with_a_checkpoint_holds_a_run(tmp_path):
    rd = _failed_start(tmp_path / "run")
    CheckpointManager(rd.root).save({"step": 0}, "stage_000", keep=True)
    assert run_dirs.holds_run(rd)
    with pytest.raises(UserError, match="already holds a run"):
        run_dirs.start(rd, preset("smoke"), resume=False)


def test_a_config_that_is_not_utf8_is_a_user_error(tmp_path):
    rd = _failed_start(tmp_path / "run")
    rd.config.write_bytes(b'{"env": "\xff\xfe"}')
    with pytest.raises(UserError, match="config.json"):
        run_dirs.read_config(rd)


def test_a_path_component_longer_than_a_file_system_takes_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="300 bytes"):
        RunDir(tmp_path / ("r" * 300) / "run")


@pytest.mark.parametrize("resume", [False, True])
def test_checkpoints_without_a_config_are_refused_not_overwritten(tmp_path, resume):
    rd = RunDir(tmp_path / "run")
    stage = CheckpointManager(rd.root).save({"step": 0}, "stage_000", keep=True)
    before = stage.read_bytes()
    with pytest.raises(UserError, match="config.json is missing"):
        run_dirs.start(rd, preset("smoke"), resume=resume)
    assert stage.read_bytes() == before and not rd.config.exists()


@pytest.mark.parametrize("saved, new", [("rmsprop", "adam"), ("adam", "rmsprop-tf")])
def test_a_resume_cannot_switch_between_adam_and_rmsprop(tmp_path, saved, new):
    """The checkpoint (and a MoE run's expert records) hold one optimizer's state; rmsprop and
    rmsprop-tf share theirs and may be switched with --allow-config-change."""
    rd = RunDir(tmp_path / "run")
    cfg = preset("smoke")
    cfg.learner.optimizer = saved
    run_dirs.start(rd, cfg, resume=False)
    CheckpointManager(rd.root).save({"step": 0}, "stage_000", keep=True)
    before = rd.config.read_bytes()
    cfg.learner.optimizer = new
    with pytest.raises(UserError, match=f"cannot change --optimizer from {saved} to {new}"):
        run_dirs.start(rd, cfg, resume=True, allow_config_change=True)
    assert rd.config.read_bytes() == before
    cfg.learner.optimizer = "rmsprop-tf" if saved == "rmsprop" else saved
    run_dirs.start(rd, cfg, resume=True, allow_config_change=True)
