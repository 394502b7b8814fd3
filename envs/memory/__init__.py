"""DMLab-style memory tasks, re-implemented to run fast on a CPU, behind the Atari env interface.

DeepMind Lab cannot be installed here, so each task keeps what makes its level hard: a
first-person, partial 84 x 84 view, long episodes, and reward that depends on remembering.

| task | DMLab level | episode (steps at 15 Hz) | reward |
| --- | --- | --- | --- |
| ``watermaze`` | rooms_watermaze | 1800 | +10 per find of the hidden platform, then a random re-spawn |
| ``nonmatching`` | rooms_select_nonmatching_object | 180 | +10 new object, -10 the one seen before, per trial |
| ``goal_locations`` | explore_goal_locations_small | 1350 | +10 per reach of the goal in a labmaze 11x11 maze, then a re-spawn |
| ``minigrid_memory`` | (envpool MiniGrid-MemoryS7) | 245 | 1 - 0.9 t / 245 for the matching object (third-party check) |

Scores per episode (``score_bounds`` maps random -> 0 and oracle -> 1): ``random_score`` is a
uniform-random agent, ``oracle_score`` a scripted agent that knows the hidden state and walks a
shortest path (``envs/memory/oracle.py``), both measured with ``python -m envs.memory.oracle``
(seed 0, 64 episodes). DMLab's published random and human scores of the original levels
(``dmlab30.py`` of DeepMind's scalable_agent) are quoted for orientation only: the levels differ
in size and motion, so the numbers are not comparable one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from envs.memory import goal_locations, minigrid, nonmatching, watermaze
from envs.memory.base import NUM_MOVES, MemoryVecEnv


@dataclass(frozen=True)
class MemoryTask:
    """One registered task: how to build it and the scores that read its learning curves."""

    make: Callable[..., MemoryVecEnv]
    """``make(game, game_id, num_envs, seed, episode_steps)`` -> the vectorized env."""
    episode_steps: int
    """Episode length in agent steps (the DMLab level's length at 15 Hz)."""
    num_actions: int
    """Actions it takes: the first ``num_actions`` of the shared policy head."""
    random_score: float
    """Mean episode return of a uniform-random agent (our measurement)."""
    oracle_score: float
    """Mean episode return of the scripted oracle (our measurement)."""
    dmlab_level: str
    """The DeepMind Lab level it re-implements ('' for none)."""
    dmlab_random: float | None
    """DMLab's published random-agent score of that level."""
    dmlab_human: float | None
    """DMLab's published human score of that level."""


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
    }


MEMORY_TASKS: dict[str, MemoryTask] = _tasks()
"""The memory tasks by name, in the order their game ids follow the Atari games."""


def make_memory_env(game: str, game_id: int, num_envs: int, seed: int, max_episode_steps: int,
                    num_threads: int = 0) -> MemoryVecEnv:
    """``num_envs`` streams of task ``game``; episodes last its own length or ``max_episode_steps`` if shorter.

    ``num_threads`` is accepted for the env interface; the numpy tasks run on the calling thread.
    """
    task = MEMORY_TASKS[game]
    return task.make(game, game_id, num_envs, seed, min(task.episode_steps, max_episode_steps))
