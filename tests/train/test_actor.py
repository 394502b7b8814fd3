"""The actor/learner protocol: policy lag exactly one update, rollouts that overlap by one step."""

from __future__ import annotations

import copy
import queue

import numpy as np
import torch

from agent.model import ActorCritic
from envs.atari import NUM_ACTIONS
from envs.registry import make_env
from train.actor import Actor, ParamChannel
from train.config import preset
from train.learner import Learner


def _pieces(updates_to_run: int):
    cfg = preset("smoke")
    cfg.env.num_envs = 2
    cfg.learner.rollout_length = 5
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, NUM_ACTIONS)
    env = make_env("Breakout", cfg.env.num_envs, seed=3, max_episode_steps=30)
    rollouts: queue.Queue = queue.Queue(maxsize=1)
    params = ParamChannel()
    actor = Actor(env, copy.deepcopy(model), cfg.learner.rollout_length, 1.0, rollouts, params,
                  torch.device("cpu"), initial_version=0, seed=0)
    learner = Learner(model, cfg, torch.device("cpu"))
    return actor, learner, params, rollouts, env


def test_policy_lag_is_zero_for_the_first_update_and_exactly_one_after():
    actor, learner, params, rollouts, env = _pieces(8)
    actor.start()
    lags, got = [], []
    try:
        for _ in range(8):
            rollout = rollouts.get(timeout=30)
            got.append(rollout)
            lags.append(learner.update(rollout)["stats/policy_lag"])
            params.publish(learner.version, learner.model, actor.stop_event)
    finally:
        actor.stop()
        actor.join(timeout=10)
        env.close()
    assert lags == [0.0] + [1.0] * 7
    assert [r.param_version for r in got] == [0, 0, 1, 2, 3, 4, 5, 6]
    # Consecutive rollouts overlap by one step: the last frame of one is the first of the next.
    for a, b in zip(got, got[1:]):
        assert torch.equal(a.frames[-1], b.frames[0])
        assert torch.equal(a.action[-1], b.action[0])


def test_rollout_marks_auto_reset_steps_and_terminal_flags_consistently():
    actor, learner, params, rollouts, env = _pieces(1)
    actor.start()
    try:
        seen = []
        for _ in range(12):  # 60 steps of 30-step episodes: several ends inside rollouts
            r = rollouts.get(timeout=30)
            seen.append(r)
            params.publish(len(seen), learner.model, actor.stop_event)
    finally:
        actor.stop()
        actor.join(timeout=10)
        env.close()
    ends = 0
    for r in seen:
        # The frame after an episode's last frame starts a new episode, with no reward and prev action 0.
        assert torch.equal(r.first[1:], r.done[:-1])
        assert torch.all(r.reward[1:][r.first[1:]] == 0)
        assert torch.all(r.prev_action[r.first] == 0)
        assert torch.equal(r.prev_action[1:][~r.first[1:]], r.action[:-1][~r.first[1:]])
        ends += int(r.done[:-1].sum())
    assert ends > 0


def test_a_tmaze_rollout_carries_the_step_mask_and_acts_only_at_the_junction():
    """The actor keeps the env's per-step mask in the rollout and samples within it: action 0 in
    the corridor, both exits taken at the junction; the learner trains on the masked rollout."""
    cfg = preset("memory-rtrl")
    cfg.env.games, cfg.env.num_envs, cfg.learner.rollout_length = ["tmaze-3"], 16, 10
    cfg.model.encoder = "mlp"
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set)
    env = make_env("tmaze-3", cfg.env.num_envs, seed=4)
    rollouts: queue.Queue = queue.Queue(maxsize=1)
    actor = Actor(env, copy.deepcopy(model), cfg.learner.rollout_length, 1.0, rollouts, ParamChannel(),
                  torch.device("cpu"), initial_version=0, seed=0)
    actor.start()
    try:
        rollout = rollouts.get(timeout=30)
    finally:
        actor.stop()
        actor.join(timeout=10)
        env.close()
    assert rollout.allowed.shape == (11, 16, 2) and rollout.allowed.dtype == torch.bool
    junction = rollout.frames[:, :, 0, 3] == 1  # the T-maze's junction indicator
    torch.testing.assert_close(rollout.allowed[..., 1], junction, rtol=0, atol=0)
    assert (rollout.action[~junction] == 0).all()
    assert set(rollout.action[junction].tolist()) == {0, 1}
    probs = torch.softmax(rollout.behaviour_logits, -1)
    assert (probs[~junction][:, 0] == 1).all()
    stats = Learner(model, cfg, torch.device("cpu")).update(rollout)
    assert all(np.isfinite(v) for v in stats.values())
