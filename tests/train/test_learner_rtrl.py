"""The V-trace learner driving an RTRL eLSTM through the core's learner hooks, and the RTRL config rules."""

from __future__ import annotations

import copy

import pytest
import torch

from agent.cores.elstm import RECURRENT
from agent.model import ActorCritic, Inputs
from train.actor import Rollout
from agent.config import ModelConfig
from envs.config import EnvConfig
from storage.config import StoreConfig
from train.config import RunConfig
from common.errors import UserError
from train.learner import Learner

T, B, A, H = 4, 2, 18, 16


def _rollout(g: torch.Generator, frames0: torch.Tensor | None = None, action0: torch.Tensor | None = None) -> Rollout:
    """T + 1 random steps; stream 1's episode ends by the game's rules at step 1, so step 2 starts a new one."""
    frames = torch.randint(0, 256, (T + 1, B, 4, 84, 84), generator=g, dtype=torch.uint8)
    action = torch.randint(0, A, (T + 1, B), generator=g)
    if frames0 is not None:  # consecutive rollouts overlap by one step
        frames[0], action[0] = frames0, action0
    prev_action = torch.cat([torch.zeros(1, B, dtype=torch.int64), action[:-1]])
    first = torch.zeros(T + 1, B, dtype=torch.bool)
    terminated = torch.zeros(T + 1, B, dtype=torch.bool)
    terminated[1, 1], first[2, 1] = True, True
    prev_action[2, 1] = 0
    return Rollout(
        frames=frames, reward=torch.rand(T + 1, B, generator=g) * 2 - 1, first=first, terminated=terminated,
        done=terminated.clone(), life_lost=torch.zeros_like(terminated), prev_action=prev_action, action=action,
        behaviour_logits=torch.randn(T + 1, B, A, generator=g), game_id=torch.zeros(T + 1, B, dtype=torch.int64),
        initial_state=(torch.zeros(B, H),),
    )


def _learner(form: str) -> Learner:
    cfg = RunConfig(env=EnvConfig(num_envs=B), store=StoreConfig(prefetch="lru"),
                    model=ModelConfig(core="elstm", learning="rtrl", hidden_size=H, rtrl_form=form))
    cfg.validate()
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, A)
    return Learner(model, cfg, torch.device("cpu"))


@pytest.mark.parametrize("form", ["segment", "step"])
def test_two_rtrl_updates_advance_the_carried_cell_to_the_state_after_step_T_minus_1_with_finite_losses(form):
    learner = _learner(form)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(learner.carry.c, torch.zeros(B, H))
    first = _rollout(g)
    before = copy.deepcopy(learner.model)
    stats1 = learner.update(first)
    carry1 = learner.carry.c.clone()
    second = _rollout(g, first.frames[-1], first.action[-1])
    stats2 = learner.update(second)

    for stats in (stats1, stats2):
        assert all(torch.isfinite(torch.tensor(stats[k])) for k in
                   ("losses/policy", "losses/value", "losses/entropy", "losses/total", "losses/grad_norm"))
        assert {"rtrl/max_abs_J", "rtrl/frac_J_gt_1", "rtrl/max_abs_S"} <= set(stats)
    assert learner.carry.c.shape == (B, H)
    assert carry1.abs().max() > 0 and not torch.equal(learner.carry.c, carry1)
    assert learner.carry.S["F"].shape == (B, H, learner.model.core.input_size)
    for k in RECURRENT:  # the recurrent weights were trained
        assert not torch.equal(getattr(learner.model.core, k), getattr(before.core, k)), k

    # The carry after update 1 is the acting network's cell after steps 0..T-1 of rollout 1 (from zero).
    inp = Inputs(frames=first.frames[:T], prev_action=first.prev_action[:T], reward=first.reward[:T],
                 first=first.first[:T])
    with torch.no_grad():
        _, _, (c_after,) = before(inp, before.initial_state(B))
    torch.testing.assert_close(carry1, c_after, rtol=1e-5, atol=1e-6)


def test_rtrl_with_the_lstm_core_is_a_user_error_that_points_to_elstm():
    cfg = RunConfig(model=ModelConfig(core="lstm", learning="rtrl"))
    with pytest.raises(UserError, match="elstm"):
        cfg.validate()


def test_rtrl_with_a_truncation_length_is_a_user_error():
    cfg = RunConfig(model=ModelConfig(core="elstm", learning="rtrl", unroll=5))
    with pytest.raises(UserError, match="unroll"):
        cfg.validate()
