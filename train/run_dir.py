"""Starting a new run in a run directory, or resuming one: the saved config and what may change.

The layout itself is ``storage/run_dir.py``.
"""

from __future__ import annotations

from common.errors import UserError
from storage.atomic import atomic_write_text, check_writable
from storage.checkpoint import CheckpointManager
from storage.run_dir import RunDir
from train.config import RunConfig
from train.expert_optimizer import expert_rule

STRUCTURAL = ("model.", "env.games:", "env.num_envs:")
"""Config fields that --allow-config-change cannot change: network shapes, the schedule, the streams."""


def read_config(rd: RunDir) -> RunConfig:
    """The run's saved config; UserError if it is missing, unreadable or from another version."""
    return RunConfig.from_dict(rd.read_config_json())


def holds_run(rd: RunDir) -> bool:
    """Whether ``rd`` holds a run: at least one checkpoint (valid or not). A start that failed before its
    first checkpoint (``stage_000``, saved first) leaves only its config, and the next start, with or
    without ``--resume``, replaces it. UserError when there are checkpoints but no config: nothing can
    resume them, and a new start would overwrite them."""
    if not CheckpointManager(rd.root).has_checkpoints():
        return False
    if not rd.exists():
        raise UserError(f"{rd.checkpoints} holds checkpoints but {rd.config.name} is missing; restore it from "
                        "a backup, or choose another --run-dir")
    return True


def start(rd: RunDir, cfg: RunConfig, resume: bool, allow_config_change: bool = False) -> None:
    """Prepare the directory for training with ``cfg``.

    A directory that already holds a run (:func:`holds_run`) is refused unless ``resume``; a resumed
    run must have the same config, unless ``allow_config_change`` (the new config is then saved).
    ``resume`` on a directory without a run starts a new one, so scripts can always pass it.
    """
    check_writable(rd.root)  # a read-only or unwritable run dir fails here, not at the first checkpoint
    if holds_run(rd):
        if not resume:
            raise UserError(f"{rd.root} already holds a run; pass --resume to continue it or choose another --run-dir")
        saved = read_config(rd)
        if saved == cfg:
            return
        changes = _differences(saved.to_dict(), cfg.to_dict())
        structural = [line for line in changes if line.startswith(STRUCTURAL)]
        if structural:
            raise UserError(f"a resumed run cannot change {'; '.join(structural)}: the checkpoint and the "
                            "evaluation history depend on it; start a new run dir")
        if type(expert_rule(saved.learner)) is not type(expert_rule(cfg.learner)):
            raise UserError(f"a resumed run cannot change --optimizer from {saved.learner.optimizer} to "
                            f"{cfg.learner.optimizer}: its checkpoint (and a MoE run's expert store) holds "
                            f"{saved.learner.optimizer}'s state; start a new run dir")
        if not allow_config_change:
            raise UserError(f"config differs from the saved run ({'; '.join(changes)}); "
                            "drop those flags, or pass --allow-config-change to accept it")
    atomic_write_text(rd.config, cfg.to_json())


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``section.field: old -> new`` for every field that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
