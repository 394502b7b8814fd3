"""Restoring checkpoint states (train/checkpointing.py): the run's wall clocks, and checkpoints
written before they existed."""

from __future__ import annotations

import dataclasses
import math

import torch

from agent.model import ActorCritic
from envs.atari import NUM_ACTIONS
from train.checkpointing import Progress, checkpoint_state, restore
from train.config import preset
from train.learner import Learner


def _model_and_learner():
    cfg = preset("smoke")
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set)
    return cfg, model, Learner(model, cfg, torch.device("cpu"))


def test_wall_clocks_round_trip_and_an_older_checkpoint_restores_with_them_unknown():
    cfg, model, learner = _model_and_learner()
    progress = Progress(stage=1, stage_frames=320, total_frames=4480, train_seconds=12.5, eval_seconds=3.25)
    state = checkpoint_state(cfg, model, learner, progress)
    assert restore(state, model, learner) == progress
    # A checkpoint written before the clocks existed restores; the time it trained is unknown (NaN:
    # the evaluation files then say null), not 0, which would pass the resumed part off as the whole run.
    old = dict(state, progress={k: v for k, v in state["progress"].items()
                                if k not in ("train_seconds", "eval_seconds")})
    restored = restore(old, model, learner)
    assert dataclasses.replace(restored, train_seconds=12.5, eval_seconds=3.25) == progress
    assert math.isnan(restored.train_seconds) and math.isnan(restored.eval_seconds)
    assert Progress().train_seconds == Progress().eval_seconds == 0.0  # a new run starts at 0
