"""``watermaze``: DMLab's rooms_watermaze (Morris water maze) as a first-person grid task.

A square arena of ``size`` x ``size`` open cells whose four walls carry different textures (the
distal cues that make places tell apart). Each episode hides a platform under one random cell,
fixed for the whole episode and never drawn: the floor looks the same everywhere. Stepping onto
it gives +10 with the view from the platform, and the next step re-spawns the agent at a random
point of another cell with a random heading. The first find of an episode is a search; every
later one is fast only for an agent that remembers where the platform was, relative to the walls.

Episode: 1800 agent steps (DMLab: 120 s at 15 Hz). Actions: forward (half a cell), turn left, turn
right (90 degrees). View: 84 x 84 gray, 90-degree field of view. The arena (5 x 5 cells, the agent
on a 10 x 10 lattice) is smaller than DMLab's and motion is by half cells and right angles, so a
CPU-sized agent can learn it; what makes it a memory task is kept. A find takes the oracle 8 steps
on average (2223 per episode = 222 finds in 1800 steps) and a learning agent longer, so the steps
of a return trip often lie more than M = 10 steps after the find that they depend on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from envs.memory.base import FindAndRespawn
from envs.memory.raycast import ViewTable, pose_index, render, view_table

EPISODE_STEPS = 1800
"""rooms_watermaze: 120 s at 15 agent steps per second."""
ARENA = 5
"""Open cells per side of the default arena."""
SUB = 2
"""Forward steps per cell."""


@lru_cache(maxsize=4)
def arena_map(size: int) -> np.ndarray:
    """int8 [size + 2, size + 2]: 0 open, the border walls coded 3 (north), 4 (east), 1 (south), 2 (west)."""
    m = np.zeros((size + 2, size + 2), dtype=np.int8)
    m[:, 0], m[:, -1] = 2, 4
    m[0, :], m[-1, :] = 3, 1
    return m


@lru_cache(maxsize=4)
def _arena_views(size: int, sub: int) -> ViewTable:
    return view_table(arena_map(size)[None], sub)


class Watermaze(FindAndRespawn):
    """B streams of the water maze; ``platform`` (row, col) [B, 2] in cells is the hidden state.

    ``sub``: steps per cell (the agent stands on a lattice of ``sub`` x ``sub`` points per cell and a
    forward step moves one point), so crossing the arena takes ``size * sub`` steps. The walker's
    coordinates are lattice points; cell = point // sub.
    """

    reward = 10.0
    """Per platform find (DMLab's published human 54 / random 4.1 per episode read as finds x 10)."""

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int = EPISODE_STEPS,
                 size: int = ARENA, sub: int = SUB):
        super().__init__(game, game_id, num_envs, seed, episode_steps)
        self.size, self.sub = size, sub
        self.map = arena_map(size)
        self._table = _arena_views(size, sub)
        self._zeros = np.zeros(num_envs, dtype=np.int64)
        self.platform = np.zeros((num_envs, 2), dtype=np.int64)

    def _new_episodes(self, idx: np.ndarray) -> None:
        cells = self.rng.integers(0, self.size * self.size, size=len(idx))
        self.platform[idx] = np.stack([cells // self.size + 1, cells % self.size + 1], axis=1)
        self.at_target[idx] = False
        self._respawn(idx)

    def _respawn(self, idx: np.ndarray) -> None:
        """Random lattice point outside the platform's cell, random heading."""
        k, n = self.sub, self.size * self.sub
        row, col = self._skip_platform(idx, self.rng.integers(0, n * n - k * k, size=len(idx)))
        self.walker.place(idx, row, col, self.rng.integers(0, 4, size=len(idx)))

    def _skip_platform(self, idx: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map draws in [0, n*n - k*k) to lattice points of the open area that are not on the platform cell."""
        k, n = self.sub, self.size * self.sub
        # Enumerate open-area points row by row; the platform's k points per row in its k rows are skipped.
        top, left = (self.platform[idx, 0] - 1) * k, (self.platform[idx, 1] - 1) * k
        before = top * n  # points in the rows above the platform's cell rows
        in_band = (points >= before) & (points < before + k * (n - k))
        band = points - before
        band_row, band_col = band // (n - k), band % (n - k)
        band_col = band_col + k * (band_col >= left)
        after = points + k * k * (points >= before + k * (n - k))
        row = np.where(in_band, top + band_row, after // n)
        col = np.where(in_band, band_col, after % n)
        return row + k, col + k

    def _reach(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        k = self.sub
        self.walker.move(actions, idx, lambda _, r, c: self.map[r // k, c // k] != 0)
        return (self.walker.row[idx] // k == self.platform[idx, 0]) & (self.walker.col[idx] // k == self.platform[idx, 1])

    def _views(self) -> np.ndarray:
        w = self.walker
        return render(self._table, self._zeros, pose_index(w.row, w.col, w.heading, (self.size + 2) * self.sub))

    def oracle_problem(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(solid, target) on the lattice for the scripted oracle, which knows the platform."""
        target = np.zeros(self.map.shape, dtype=bool)
        target[tuple(self.platform[b])] = True
        block = np.ones((self.sub, self.sub), dtype=bool)
        return np.kron(self.map != 0, block), np.kron(target, block)
