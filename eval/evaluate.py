"""Evaluation episodes: full games, raw (unclipped) returns, sticky actions, fixed seeds.

K episodes of a game run as K parallel streams, each contributing its first complete episode, so
an evaluation costs about as long as its longest episode (at most the 27,000-step cap). The env
seed depends only on the evaluation seed and the game, so every stage of a run (and every run)
meets the same start states and sticky-action draws for the same actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from agent.model import ActorCritic, step_inputs
from envs.registry import game_id, make_env, normalized_score
from eval.curves import normalized_matrix
from eval.forgetting import write_forgetting
from envs.config import EnvConfig
from eval.config import EvalConfig


@torch.inference_mode()
def evaluate_game(model: ActorCritic, game: str, env_cfg: EnvConfig, eval_cfg: EvalConfig,
                  device: torch.device, on_step: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """Raw returns [episodes] of ``game`` played by ``model`` (sampled or greedy per ``eval_cfg``).

    ``on_step(game, frames)``, if given, is called after the policy acted on each step's frames
    [episodes, 4, 84, 84] (a MoE run's expert traffic, ``train/detection.py``)."""
    K = eval_cfg.episodes
    env = make_env(game, K, seed=eval_cfg.seed + game_id(game), backend=env_cfg.backend,
                   sticky_action_prob=eval_cfg.sticky_action_prob, max_episode_steps=env_cfg.max_episode_steps,
                   num_threads=env_cfg.num_threads)
    generator = torch.Generator(device=device).manual_seed(eval_cfg.seed)
    returns = np.full(K, np.nan)
    try:
        step = env.reset()
        state = model.initial_state(K, device)
        prev_action = torch.zeros(K, dtype=torch.int64, device=device)
        while np.isnan(returns).any():
            logits, _, state = model(step_inputs(step, prev_action, env_cfg.reward_clip, device), state)
            if on_step is not None:
                on_step(game, step.obs)
            if eval_cfg.greedy:
                action = logits[0].argmax(-1)
            else:
                action = torch.multinomial(torch.softmax(logits[0], -1), 1, generator=generator).squeeze(-1)
            step = env.step(action.cpu().numpy())
            prev_action = action.masked_fill(torch.from_numpy(step.first).to(device), 0)
            ended = np.flatnonzero(step.terminated | step.truncated)
            for b, (ret, _) in zip(ended, step.finished):
                if np.isnan(returns[b]):
                    returns[b] = ret
    finally:
        env.close()
    return returns


class GameResult(NamedTuple):
    """One game's evaluation."""

    mean: float
    """Mean raw return over the episodes (NaN if an episode failed)."""
    hns: float
    """Its normalised score, ``envs.registry.normalized_score(game, mean)`` (Atari: human-normalised)."""
    episodes: list[float]
    """``[K]`` the raw return of each episode, in stream order."""


def evaluate_games(model: ActorCritic, games: list[str], env_cfg: EnvConfig, eval_cfg: EvalConfig,
                   device: torch.device, on_step: Callable[[str, np.ndarray], None] | None = None
                   ) -> dict[str, GameResult]:
    """``{game: GameResult}`` for each of ``games``, in order (``on_step`` as in :func:`evaluate_game`).

    A failed episode (NaN return) makes the game's mean NaN, which every metric skips.
    """
    was_training = model.training
    model.eval()
    try:
        results = {}
        for game in games:
            episodes = evaluate_game(model, game, env_cfg, eval_cfg, device, on_step)
            mean = float(np.mean(episodes))
            results[game] = GameResult(mean, normalized_score(game, mean), [float(r) for r in episodes])
        return results
    finally:
        model.train(was_training)


def record_returns(eval_dir: Path, games: list[str], stage_games: list[str], returns: np.ndarray,
                   episode_returns: Sequence[Sequence[Sequence[float] | None]] | None = None,
                   forward_transfer: dict[str, float | None] | None = None,
                   reference_runs: list[str] | None = None,
                   wall_seconds: dict[str, float | None] | None = None) -> dict:
    """Write the forgetting files for mean ``returns`` ``[S + 1, G]`` (row 0 before training, NaN = not evaluated).

    ``games`` are the columns, ``stage_games[i - 1]`` the game trained in stage ``i``;
    ``episode_returns`` ``[S + 1][G]`` each cell's per-episode raw returns ``[K]`` (``None`` where
    not kept); the scores are normalised with ``envs.registry.normalized_score``; ``wall_seconds``
    ``{"train", "eval"}`` the run's wall seconds (``None`` = unknown). Returns the JSON document
    (:func:`eval.forgetting.write_forgetting`).
    """
    return write_forgetting(eval_dir, games, stage_games, returns, normalized_matrix(games, returns),
                            episode_returns, forward_transfer, reference_runs, wall_seconds)
