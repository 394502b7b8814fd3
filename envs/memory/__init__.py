"""DMLab-style memory tasks, re-implemented to run fast on a CPU, behind the Atari env interface.

DeepMind Lab cannot be installed here, so each task keeps what makes its level hard: a
first-person, partial 84 x 84 view, long episodes, and reward that depends on remembering.

| task | DMLab level | episode (steps at 15 Hz) | reward |
| --- | --- | --- | --- |
| ``watermaze`` | rooms_watermaze | 1800 | +10 per find of the hidden platform, then a random re-spawn |
| ``nonmatching`` | rooms_select_nonmatching_object | 180 | +10 new object, -10 the one seen before, per trial |
| ``goal_locations`` | explore_goal_locations_small | 1350 | +10 per reach of the goal in a labmaze 11x11 maze, then a re-spawn |
| ``minigrid_memory`` | (envpool MiniGrid-MemoryS7) | 245 | 1 - 0.9 t / 245 for the matching object (third-party check) |
| ``tmaze-D[-kK]`` | (Bakker 2002's T-maze) | D + 2 | +1 for the exit cued D + 1 steps before the choice (small observations) |

Scores per episode (``score_bounds`` maps random -> 0 and oracle -> 1): ``random_score`` is a
uniform-random agent, ``oracle_score`` a scripted agent that knows the hidden state and walks a
shortest path (``envs/memory/oracle.py``), both measured with ``python -m envs.memory.oracle``
(seed 0, 64 episodes). DMLab's published random and human scores of the original levels
(``dmlab30.py`` of DeepMind's scalable_agent) are quoted for orientation only: the levels differ
in size and motion, so the numbers are not comparable one to one.

The T-maze is a family: its table entries ``tmaze-D`` and ``tmaze-D-kK`` (one per number of exits K)
hold the game id and scores of every delay D, and :func:`memory_task` gives the task of a concrete
name such as ``tmaze-100``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from envs.memory import goal_locations, minigrid, nonmatching, tmaze, watermaze
from envs.memory.base import NUM_MOVES, STACK, MemoryVecEnv
from envs.memory.raycast import VIEW


@dataclass(frozen=True)
class MemoryTask:
    """One registered task: how to build it and the scores that read its learning curves."""

    make: Callable[..., MemoryVecEnv]
    """``make(game, game_id, num_envs, seed, episode_steps)`` -> the vectorized env."""
    episode_steps: int
    """Episode length in agent steps (the DMLab level's length at 15 Hz; a T-maze's D + 2, 0 in a family entry)."""
    num_actions: int
    """Actions it takes: the first ``num_actions`` of the shared policy head."""
    random_score: float
    """Mean episode return of a uniform-random agent (our measurement; the T-maze's exact 1/K)."""
    oracle_score: float
    """Mean episode return of the scripted oracle (our measurement)."""
    dmlab_level: str
    """The DeepMind Lab level it re-implements ('' for none)."""
    dmlab_random: float | None
    """DMLab's published random-agent score of that level."""
    dmlab_human: float | None
    """DMLab's published human score of that level."""
    obs_shape: tuple[int, ...] = (STACK, VIEW, VIEW)
    """One stream's uint8 observation: 4 stacked 84 x 84 views, or the T-maze's 1 x (K + 2) indicators."""
    min_episode_steps: int = 1
    """The shortest episode cap (``--max-episode-steps``) that leaves the task solvable (the T-maze: D + 2)."""


def _tasks() -> dict[str, MemoryTask]:
    return {
        "watermaze": MemoryTask(watermaze.Watermaze, watermaze.EPISODE_STEPS, NUM_MOVES, 47.3, 2222.7,
                                "rooms_watermaze", 4.065, 54.0),
        "nonmatching": MemoryTask(nonmatching.Nonmatching, nonmatching.EPISODE_STEPS, NUM_MOVES, 0.16, 200.0,
                                  "rooms_select_nonmatching_object", 0.312, 65.9),
        "goal_locations": MemoryTask(goal_locations.GoalLocations, goal_locations.EPISODE_STEPS, NUM_MOVES, 22.3, 1473.6,
                                     "explore_goal_locations_small", 7.66, 267.5),
        "minigrid_memory": MemoryTask(minigrid.MiniGridMemory, minigrid.EPISODE_STEPS, NUM_MOVES, 0.20, 1.0,
                                      "", None, None),
        **{tmaze.family(k): MemoryTask(partial(tmaze.TMaze, exits=k), 0, k, 1 / k, 1.0, "", None, None, (1, k + 2))
           for k in tmaze.EXITS},
    }


MEMORY_TASKS: dict[str, MemoryTask] = _tasks()
"""The memory tasks by name, in the order their game ids follow the Atari games (T-maze families last)."""

MEMORY_EXAMPLES: tuple[str, ...] = tuple(g for g in MEMORY_TASKS if not g.startswith(tmaze.PREFIX)) + (tmaze.name(100),)
"""A concrete name of every task (the T-maze at delay 100): the oracle's and the speed bench's list."""


def memory_task(game: str) -> MemoryTask | None:
    """The task of canonical name ``game`` (``tmaze-100`` included), None for a game that is not a memory task.

    A family name (``tmaze-D``) gives its table entry: the id's scores and actions, no env to make.
    """
    if game in MEMORY_TASKS:
        return MEMORY_TASKS[game]
    spec = tmaze.parse(game)
    if spec is None:
        return None
    delay, exits = spec
    return replace(MEMORY_TASKS[tmaze.family(exits)], make=partial(tmaze.TMaze, delay=delay, exits=exits),
                   episode_steps=delay + 2, min_episode_steps=delay + 2)


def id_name(game: str) -> str:
    """The :data:`MEMORY_TASKS` name that holds the game id of memory task ``game`` (a T-maze's family)."""
    spec = None if game in MEMORY_TASKS else tmaze.parse(game)
    return game if spec is None else tmaze.family(spec[1])


def make_memory_env(game: str, game_id: int, num_envs: int, seed: int, max_episode_steps: int,
                    num_threads: int = 0) -> MemoryVecEnv:
    """``num_envs`` streams of task ``game``; episodes last its own length or ``max_episode_steps`` if shorter.

    ``num_threads`` is accepted for the env interface; the numpy tasks run on the calling thread.
    """
    task = memory_task(game)
    return task.make(game, game_id, num_envs, seed, min(task.episode_steps, max_episode_steps))
