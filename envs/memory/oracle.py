"""Reference agents that make learning curves readable: uniform random, and a scripted oracle.

The oracle knows the hidden state (the platform, the goal, which object is new) and walks a
shortest path in pose space (cell x heading, actions forward / left / right) to its target; in the
T-maze it takes the cued exit (``TMaze.oracle_actions``). Its
score is the best a perfect memory can do, not what is achievable from the first view: the first
find of a watermaze episode needs a search that the oracle skips.

``python -m envs.memory.oracle [--episodes N] [--seed S]`` prints both agents' scores per task;
the numbers in ``envs/memory/__init__.py`` come from it (seed 0, 64 episodes).
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.memory import MEMORY_EXAMPLES, make_memory_env, memory_task
from envs.memory.base import FORWARD
from envs.memory.raycast import DC, DR

_UNREACHABLE = np.iinfo(np.int32).max // 2


def shortest_moves(solid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Best action per pose to reach a target cell: int8 [H * W * 4] (pose index of ``raycast.pose_index``).

    solid, target: bool [H, W]. A target is reached by a forward move into it, solid or not (a
    platform is walked onto, an object is touched). Value iteration over the 3 moves; poses that
    cannot reach a target get FORWARD.
    """
    H, W = solid.shape
    r, c, h = (a.ravel() for a in np.meshgrid(np.arange(H), np.arange(W), np.arange(4), indexing="ij"))
    nr, nc = np.clip(r + DR[h], 0, H - 1), np.clip(c + DC[h], 0, W - 1)
    reach = target[nr, nc]
    stay = solid[nr, nc] & ~reach
    pose = lambda rr, cc, hh: (rr * W + cc) * 4 + hh  # noqa: E731
    nxt = np.stack([np.where(stay, pose(r, c, h), pose(nr, nc, h)), pose(r, c, (h + 3) % 4), pose(r, c, (h + 1) % 4)])
    dist = np.full(H * W * 4, _UNREACHABLE, dtype=np.int64)
    while True:
        cost = np.minimum(1 + dist[nxt], _UNREACHABLE)
        cost[FORWARD] = np.where(reach, 1, cost[FORWARD])
        new = cost.min(axis=0)
        if np.array_equal(new, dist):
            return cost.argmin(axis=0).astype(np.int8)
        dist = new


class Oracle:
    """Acts for every stream of a task env that has ``oracle_problem(b)`` and a ``walker``.

    Policies are cached by the problem (solid and target maps), so a static arena is planned once.
    """

    def __init__(self, env):
        self.env = env
        self._plans: dict[bytes, np.ndarray] = {}

    def __call__(self) -> np.ndarray:
        w = self.env.walker
        actions = np.empty(self.env.num_envs, dtype=np.int64)
        for b in range(self.env.num_envs):
            solid, target = self.env.oracle_problem(b)
            key = solid.tobytes() + target.tobytes() + bytes(solid.shape)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = shortest_moves(solid, target)
            actions[b] = plan[(w.row[b] * solid.shape[1] + w.col[b]) * 4 + w.heading[b]]
        return actions


def episode_scores(game: str, agent: str, episodes: int, seed: int) -> np.ndarray:
    """Returns [episodes] of ``agent`` (``random`` or ``oracle``) on memory task ``game``, one episode per stream."""
    task = memory_task(game)
    env = make_memory_env(game, 0, episodes, seed, task.episode_steps)  # the game id plays no part in a score
    rng = np.random.default_rng(seed)
    if agent == "oracle":
        act = env.oracle_actions if hasattr(env, "oracle_actions") else Oracle(env)
    else:
        act = lambda: rng.integers(0, env.num_actions, env.num_envs)  # noqa: E731
    returns = np.full(episodes, np.nan)
    env.reset()
    while np.isnan(returns).any():
        step = env.step(act())
        for b, (ret, _) in zip(np.flatnonzero(step.terminated | step.truncated), step.finished):
            if np.isnan(returns[b]):
                returns[b] = ret
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=64, help="episodes per task and agent")
    parser.add_argument("--seed", type=int, default=0, help="env and random-agent seed")
    args = parser.parse_args()
    for game in MEMORY_EXAMPLES:
        make = memory_task(game).make
        env_class = getattr(make, "func", make)  # a T-maze's make is a functools.partial
        for agent in ("random", "oracle"):
            if agent == "oracle" and not any(hasattr(env_class, a) for a in ("oracle_problem", "oracle_actions")):
                continue
            s = episode_scores(game, agent, args.episodes, args.seed)
            print(f"{game:<16} {agent:<7} mean {s.mean():8.2f}  std {s.std():7.2f}  (n={len(s)})", flush=True)


if __name__ == "__main__":
    main()
