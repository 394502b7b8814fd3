"""``goal_locations``: DMLab's explore_goal_locations_small as a first-person grid task.

Every episode builds a new 11 x 11 maze with ``labmaze`` (the generator DMLab uses), with
explore_goal_locations_small's parameters: up to 4 rooms of 3-5 cells, corridors between them.
The goal (a pillar with its own texture, the same in every episode) stands on one of labmaze's
object cells; the agent starts on one of its spawn cells with a random heading. Touching the goal
(a forward move into it) gives +10 with the view of the goal, and the next step re-spawns the agent
on a random spawn cell; the goal and the maze stay for the whole episode, so after the first find
an agent that remembers the way is faster. Walls carry one of 8 textures by 4 x 4 block of the
maze, so places can be told apart. Episode: 1350 agent steps (90 s at 15 Hz).
Actions: forward, turn left, turn right.
"""

from __future__ import annotations

import labmaze
import numpy as np

from envs.memory.base import FindAndRespawn
from envs.memory.raycast import SLOT0, ViewTable, pose_index, render, view_table

EPISODE_STEPS = 1350
"""explore_goal_locations_small: 90 s at 15 agent steps per second."""
SIZE = 11
"""Maze height and width in cells, border walls included (DMLab's mazeHeight / mazeWidth)."""
GOAL_OBJECT = 0
"""Row of ``raycast.OBJECT_TEX`` that the goal pillar shows (fixed, so the goal is recognisable)."""


def generate_maze(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One labmaze layout -> (map int16 [11, 11] with the goal as slot 0, spawn cells int [n, 2], goal cell int [2]).

    ``seed`` fixes the layout and the goal's choice among labmaze's object cells.
    """
    maze = labmaze.RandomMaze(height=SIZE, width=SIZE, max_rooms=4, room_min_size=3, room_max_size=5,
                              spawns_per_room=1, objects_per_room=1, random_seed=seed)
    grid = np.array([list(line) for line in str(maze.entity_layer).splitlines() if line], dtype="<U1")
    rng = np.random.default_rng(seed)
    free = np.argwhere(grid != "*")
    goals = np.argwhere(grid == "G")
    goal = goals[rng.integers(len(goals))] if len(goals) else free[rng.integers(len(free))]
    spawns = np.argwhere(grid == "P")
    spawns = spawns[(spawns != goal).any(axis=1)]
    if len(spawns) == 0:  # a maze without rooms: any free cell but the goal's
        spawns = free[(free != goal).any(axis=1)]
    rows, cols = np.indices(grid.shape)
    m = np.where(grid == "*", 1 + (rows // 4 * 3 + cols // 4) % 8, 0).astype(np.int16)
    m[tuple(goal)] = SLOT0
    return m, spawns, goal


class GoalLocations(FindAndRespawn):
    """B streams, each with its own maze; hidden state: the maze beyond view and the goal cell ``goal`` [B, 2]."""

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int = EPISODE_STEPS):
        super().__init__(game, game_id, num_envs, seed, episode_steps)
        self.maps = np.zeros((num_envs, SIZE, SIZE), dtype=np.int16)
        self.goal = np.zeros((num_envs, 2), dtype=np.int64)
        self.spawns: list[np.ndarray] = [np.zeros((0, 2), dtype=np.int64)] * num_envs
        shape = (num_envs, SIZE * SIZE * 4, 84)
        self._table = ViewTable(*(np.zeros(shape, dtype=t) for t in (np.uint8, np.uint8, np.int8, np.uint8)))
        self._goal_object = np.full((num_envs, 1), GOAL_OBJECT, dtype=np.int64)
        self._streams = np.arange(num_envs)

    def _new_episodes(self, idx: np.ndarray) -> None:
        for b in idx:
            self.maps[b], self.spawns[b], self.goal[b] = generate_maze(int(self.rng.integers(2**31 - 1)))
            views = view_table(self.maps[b][None])
            for name in ("h2", "shade", "slot", "u"):
                getattr(self._table, name)[b] = getattr(views, name)[0]
        self.at_target[idx] = False
        self._respawn(idx)

    def _respawn(self, idx: np.ndarray) -> None:
        for b in idx:
            r, c = self.spawns[b][self.rng.integers(len(self.spawns[b]))]
            self.walker.place(np.array([b]), np.array([r]), np.array([c]), self.rng.integers(0, 4, size=1))

    def _reach(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        bumped, r, c = self.walker.move(actions, idx, lambda b, rr, cc: self.maps[b, rr, cc] != 0)
        return bumped & (r == self.goal[idx, 0]) & (c == self.goal[idx, 1])

    def _views(self) -> np.ndarray:
        w = self.walker
        return render(self._table, self._streams, pose_index(w.row, w.col, w.heading, SIZE), self._goal_object)

    def oracle_problem(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(solid, target) of stream b: the maze and its goal cell."""
        target = np.zeros((SIZE, SIZE), dtype=bool)
        target[tuple(self.goal[b])] = True
        return self.maps[b] != 0, target
