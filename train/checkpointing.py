"""What a training checkpoint holds, and restoring a run from one.

A checkpoint (``storage/checkpoint.py`` writes it atomically) holds the config, the run's counters
(:class:`Progress`, the evaluation history included), the model, the learner's optimizer and LR
schedule and every RNG state, plus (``train/loop.py`` adds them) the MoE store's snapshot name, the
game detector and each rank's replica checksum. Env streams are not saved: a resumed run restarts
every episode.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.model import ActorCritic
from common.errors import UserError
from train.config import RunConfig
from train.learner import Learner


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    stage: int = 0
    """Index of the stage being trained (== number of games when the run is complete)."""
    stage_frames: int = 0
    """Frames trained in the current stage."""
    total_frames: int = 0
    """Frames trained in the whole run (the TensorBoard step)."""
    evaluations: list[dict] = field(default_factory=list)
    """Every evaluation so far, in order: points ``{"frames", "stage", "kind", "returns", "episodes",
    "wall_s"}`` (``eval/curves.py``; ``episodes`` and ``wall_s`` are missing from points saved by
    older versions)."""
    train_seconds: float = 0.0
    """Wall seconds spent in training segments (``train/loop.py``: from a segment's env start-up to
    its envs' close, periodic checkpoints included, its periodic evaluations excluded), summed over
    resumes; what a killed attempt trained after its last checkpoint is not counted (it is trained
    again). NaN = unknown: the run was resumed from a checkpoint written before the field existed."""
    eval_seconds: float = 0.0
    """Wall seconds spent in evaluations (playing every game's episodes; writing the evaluation
    files and logging them are not counted), summed over resumes like :attr:`train_seconds`; NaN =
    unknown, as there."""


def replica(model: ActorCritic) -> dict[str, torch.Tensor]:
    """What every rank must hold identically: the parameters and buffers (the MoE experts' replica,
    equal to the experts' parameters in the store after the checkpoint's commit, and routing counts)."""
    return {f"param/{k}": p for k, p in model.named_parameters()} | \
        {f"buffer/{k}": b for k, b in model.named_buffers()}


def checkpoint_state(cfg: RunConfig, model: ActorCritic, learner: Learner, progress: Progress) -> dict:
    """What a checkpoint holds besides the store's snapshot and the detector: config, counters,
    model, optimizer and LR schedule, and every RNG state."""
    return {
        "config": cfg.to_dict(),
        "progress": dataclasses.asdict(progress),
        "model": model.state_dict(),
        "learner": learner.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def restore(state: dict, model: ActorCritic, learner: Learner) -> Progress:
    """Load ``state`` (a :func:`checkpoint_state`) into ``model`` and ``learner`` and the RNGs; -> its counters."""
    if "eval_returns" in state["progress"]:
        raise UserError("the checkpoint was written by an older version (no before-training evaluation "
                        "history); start a new run dir")
    model.load_state_dict(state["model"])
    learner.load_state_dict(state["learner"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    # A checkpoint written before the wall clocks existed: the time trained so far is unknown, and
    # counting from 0 would pass the resumed part off as the whole run's.
    clocks = {"train_seconds": math.nan, "eval_seconds": math.nan}
    return Progress(**{**clocks, **state["progress"]})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
