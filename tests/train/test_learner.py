"""The learner's loss has the right signs: on a bandit it learns the rewarded action within a few updates."""

from __future__ import annotations

import pytest
import torch

from agent.model import ActorCritic, Inputs
from train.actor import Rollout
from train.config import preset
from train.learner import Learner

T, B, REWARDED = 10, 4, 3


def _bandit_rollout(model: ActorCritic, frames: torch.Tensor) -> Rollout:
    """Acting with the current policy; reward 1 for action REWARDED, no episode ends."""
    no = torch.zeros(T + 1, B, dtype=torch.bool)
    zeros = torch.zeros(T + 1, B, dtype=torch.long)
    with torch.no_grad():
        state = model.initial_state(B)
        logits, _, _ = model(Inputs(frames, zeros, torch.zeros(T + 1, B), no), state)
        action = torch.multinomial(torch.softmax(logits.flatten(0, 1), -1), 1).view(T + 1, B)
    reward = torch.zeros(T + 1, B)
    reward[1:] = (action[:-1] == REWARDED).float()
    return Rollout(frames=frames, reward=reward, first=no, terminated=no, done=no, life_lost=no, prev_action=zeros, action=action,
                   behaviour_logits=logits, game_id=zeros, initial_state=state)


def _prob_of_rewarded_action(model: ActorCritic, frames: torch.Tensor) -> float:
    with torch.no_grad():
        no = torch.zeros(T + 1, B, dtype=torch.bool)
        zeros = torch.zeros(T + 1, B, dtype=torch.long)
        logits, _, _ = model(Inputs(frames, zeros, torch.zeros(T + 1, B), no), model.initial_state(B))
    return torch.softmax(logits, -1)[..., REWARDED].mean().item()


def _setup():
    """A small config, a fresh model and learner, and fixed random frames."""
    cfg = preset("smoke")
    cfg.env.num_envs, cfg.learner.rollout_length = B, T
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, 18)
    frames = torch.randint(0, 255, (T + 1, B, 4, 84, 84), dtype=torch.uint8)
    return cfg, model, Learner(model, cfg, torch.device("cpu")), frames


def _train_on_bandit(reward_sign: float, updates: int = 30) -> tuple[float, float]:
    """Probability of the REWARDED action before and after ``updates`` learner updates."""
    _, model, learner, frames = _setup()
    before = _prob_of_rewarded_action(model, frames)
    for _ in range(updates):
        rollout = _bandit_rollout(model, frames)
        rollout.reward = reward_sign * rollout.reward
        learner.update(rollout)
    return before, _prob_of_rewarded_action(model, frames)


def test_learner_learns_the_rewarded_action_of_a_bandit():
    before, after = _train_on_bandit(+1.0)
    assert after > 4 * before, (before, after)  # 0.06 -> 0.43 with this seed


def test_learner_with_a_sign_flipped_reward_unlearns_the_action():
    """Negative control: punishing the action drives its probability down, not up."""
    before, after = _train_on_bandit(-1.0)
    assert after < before, (before, after)


def test_resumed_learner_follows_the_configured_learning_rate_schedule():
    """Loading a checkpoint keeps the schedule's position but takes the (possibly changed) config's LR."""
    cfg, model, learner, frames = _setup()
    for _ in range(3):
        learner.update(_bandit_rollout(model, frames))
    saved = learner.state_dict()

    cfg.learner.learning_rate = 1e-5
    resumed = Learner(model, cfg, torch.device("cpu"))
    resumed.load_state_dict(saved)
    factor = 1.0 - 3 / cfg.total_updates()
    assert resumed.version == 3
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 * factor)
    resumed.update(_bandit_rollout(model, frames))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 * (1.0 - 4 / cfg.total_updates()))


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_learning_rate_schedule_decays_only_when_linear(schedule):
    cfg, model, _, frames = _setup()
    cfg.learner.lr_schedule = schedule
    learner = Learner(model, cfg, torch.device("cpu"))
    for _ in range(3):
        learner.update(_bandit_rollout(model, frames))
    expected = cfg.learner.learning_rate * ((1.0 - 3 / cfg.total_updates()) if schedule == "linear" else 1.0)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert (expected < cfg.learner.learning_rate) == (schedule == "linear")
