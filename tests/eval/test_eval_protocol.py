"""Evaluations keep the Machado protocol (sticky actions 0.25) whatever sticky-action probability training uses."""

from __future__ import annotations

import numpy as np
import torch

from agent.config import ModelConfig
from agent.model import ActorCritic
from envs.config import EnvConfig
from eval.config import EvalConfig
from eval.evaluate import evaluate_game


def _returns(train_sticky: float, eval_sticky: float) -> np.ndarray:
    torch.manual_seed(0)
    model = ActorCritic(ModelConfig(hidden_size=32, core="lstm", learning="tbptt"), 18)
    env = EnvConfig(games=["Breakout"], sticky_action_prob=train_sticky, max_episode_steps=2000)
    return evaluate_game(model, "Breakout", env, EvalConfig(episodes=4, sticky_action_prob=eval_sticky),
                         torch.device("cpu"))


def test_training_sticky_actions_do_not_change_an_evaluation():
    assert np.array_equal(_returns(0.0, 0.25), _returns(0.5, 0.25))


def test_the_evaluation_sticky_probability_does_change_it():  # the negative control
    assert not np.array_equal(_returns(0.0, 0.25), _returns(0.0, 0.0))
