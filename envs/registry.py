"""Game names -> environments: the one place that knows which games exist and their ids.

A game's id is its index in :data:`GAMES`, the same in every run, so a checkpoint's game ids (and
later the detector's labels) mean the same thing everywhere. The 57 Atari games come first (ids
0-56), the memory tasks of :mod:`envs.memory` after them, so adding tasks never renumbers a game.
Parametrised names (``tmaze-100``, ``tmaze-100-k4``) are games too: each takes the id of its family's
entry (``tmaze-D``, ``tmaze-D-k4``), so every delay of a K-exit T-maze shares one id.
"""

from __future__ import annotations

import difflib

import numpy as np

from common.errors import UserError
from envs.atari import NUM_ACTIONS, OBS_SHAPE, AtariVecEnv
from envs.atari_data import ATARI_GAMES, HUMAN_SCORES, MINIMAL_ACTIONS, RANDOM_SCORES
from envs.memory import MEMORY_TASKS, id_name, make_memory_env, memory_task, tmaze
from envs.memory.base import MemoryVecEnv

GAMES: tuple[str, ...] = ATARI_GAMES + tuple(MEMORY_TASKS)
"""Every trainable game, in id order: the 57 Atari games, then the memory tasks."""


def game_id(game: str) -> int:
    """The stable integer id of a canonical game name (a T-maze's: its family's)."""
    return GAMES.index(id_name(game))


def resolve_game(name: str) -> str:
    """Canonical name for ``name`` (case and ``-``/``_`` insensitive); UserError with suggestions otherwise.

    T-maze names are parsed (``tmaze-0``, ``tmaze-abc`` or a family name ``tmaze-D`` are refused).
    """
    spec = tmaze.parse(name)
    if spec is not None:
        return tmaze.name(*spec)
    key = _key(name)
    for game in GAMES:
        if _key(game) == key:
            return game
    close = difflib.get_close_matches(key, [_key(g) for g in GAMES], n=3, cutoff=0.6)
    names = [g for g in GAMES if _key(g) in close]
    hint = f"; did you mean {', '.join(names)}?" if names else "; `python run.py games` lists them"
    raise UserError(f"unknown game {name!r}{hint}")


def resolve_games(names: list[str]) -> list[str]:
    """Canonical names for a schedule, in order."""
    return [resolve_game(n) for n in names]


def score_bounds(game: str) -> tuple[float, float]:
    """``(low, high)`` scores that a game's normalised score maps to 0 and 1.

    Atari: the published random and human scores (DQN Zoo). Memory tasks: our uniform-random agent's
    and scripted oracle's scores (``envs/memory/__init__.py``), since DMLab's human scores were
    measured on the original levels. Every normalised score in the project (``eval/hns/<game>``,
    the forgetting matrix) is ``(score - low) / (high - low)``.
    """
    if game in RANDOM_SCORES:
        return RANDOM_SCORES[game], HUMAN_SCORES[game]
    task = memory_task(game)
    if task is not None:
        return task.random_score, task.oracle_score
    raise ValueError(f"no score bounds for {game!r}")


def normalized_score(game: str, score: float) -> float:
    """``(score - low) / (high - low)`` with the bounds of :func:`score_bounds`; NaN stays NaN."""
    low, high = score_bounds(game)
    return (score - low) / (high - low)


def num_actions(game: str) -> int:
    """Actions ``game`` takes: the first ``num_actions(game)`` of the shared policy head (18 for Atari)."""
    task = memory_task(game)
    return NUM_ACTIONS if task is None else task.num_actions


def observation_shape(game: str) -> tuple[int, ...]:
    """One stream's uint8 observation shape in ``game``: (4, 84, 84) frame stacks, or a T-maze's (1, K + 2)."""
    task = memory_task(game)
    return OBS_SHAPE if task is None else task.obs_shape


def min_episode_steps(game: str) -> int:
    """The shortest ``--max-episode-steps`` with which ``game`` stays solvable (1 for most; a T-maze's D + 2)."""
    task = memory_task(game)
    return 1 if task is None else task.min_episode_steps


ACTION_SETS = ("full", "minimal")
"""``--action-set`` choices: every game takes all 18 actions (Machado et al.), or its minimal set."""


def action_masks(action_set: str = "full") -> np.ndarray:
    """bool [len(GAMES), NUM_ACTIONS]: which actions of the shared policy head each game takes.

    Memory tasks take their first ``num_actions(game)`` either way; Atari games take all 18 with
    ``full`` and their minimal set (ale-py's, e.g. Breakout's NOOP, FIRE, RIGHT, LEFT) with ``minimal``.
    """
    if action_set not in ACTION_SETS:
        raise UserError(f"--action-set {action_set!r} is not supported; choose one of {', '.join(ACTION_SETS)}")
    masks = np.zeros((len(GAMES), NUM_ACTIONS), dtype=bool)
    for i, game in enumerate(GAMES):
        if game in MINIMAL_ACTIONS and action_set == "minimal":
            masks[i, list(MINIMAL_ACTIONS[game])] = True
        else:
            masks[i, :num_actions(game)] = True
    return masks


def make_env(game: str, num_envs: int, seed: int, backend: str = "envpool", sticky_action_prob: float = 0.25,
             max_episode_steps: int = 27000, num_threads: int = 0) -> AtariVecEnv | MemoryVecEnv:
    """A vectorized env of ``num_envs`` streams of ``game`` (canonical name).

    Memory tasks ignore ``backend`` and ``sticky_action_prob`` (DMLab has no sticky actions) and
    run episodes of their own length, cut to ``max_episode_steps`` when that is shorter.
    """
    if memory_task(game) is not None:
        return make_memory_env(game, game_id(game), num_envs, seed, max_episode_steps, num_threads)
    return AtariVecEnv(game, game_id(game), num_envs, seed, backend, sticky_action_prob, max_episode_steps, num_threads)


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "").removesuffix("v5")
