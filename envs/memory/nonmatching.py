"""``nonmatching``: DMLab's rooms_select_nonmatching_object as a first-person grid task.

Two 3 x 3 rooms with different wall textures, out of sight of each other. A trial:
  1. the agent starts in the first room facing an object (one of 16 textures) on its far wall;
     touching it (a forward move into it) teleports the agent to the second room;
  2. the second room shows two objects on its far wall, in its two corners: the one just seen and
     a new one, on a random side. Touching the new one gives +10, the one seen before -10; either
     ends the trial and the next one starts in the first room with a fresh object.
The second room never shows which object was the first; only memory does. Episode: 180 agent
steps (12 s at 15 Hz) of repeated trials. Actions: forward, turn left, turn right.

Map (5 x 11; ``a`` the first room, ``b`` the second, ``0``/``1``/``2`` the object slots)::

    ##0####1#2#
    #aaa###bbb#
    #aaa###bbb#
    #aaa###bbb#
    ###########
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from envs.memory.base import GridWalker, MemoryVecEnv
from envs.memory.raycast import NUM_OBJECTS, SLOT0, ViewTable, pose_index, render, view_table

EPISODE_STEPS = 180
"""rooms_select_nonmatching_object: 180 agent steps (the brief's length; 12 s at 15 Hz)."""
REWARD = 10.0
"""+REWARD for the new object, -REWARD for the one seen in the first room."""
START_A = (3, 2)
"""Where each trial starts (facing north, the first room's object straight ahead)."""
START_B = (3, 8)
"""Where touching the first object teleports the agent (facing north, both objects in view)."""
SLOT_CELLS = ((0, 2), (0, 7), (0, 9))
"""Cells of slot 0 (the first room's object) and slots 1, 2 (the second room's pair)."""


@lru_cache(maxsize=1)
def rooms_map() -> np.ndarray:
    """int16 [5, 11]: walls coded 5 (first room) and 7 (second room), 0 open, slots SLOT0 + k."""
    m = np.full((5, 11), 5, dtype=np.int16)
    m[:, 5:] = 7
    m[1:4, 1:4] = 0
    m[1:4, 7:10] = 0
    for k, cell in enumerate(SLOT_CELLS):
        m[cell] = SLOT0 + k
    return m


@lru_cache(maxsize=1)
def _room_views() -> ViewTable:
    return view_table(rooms_map()[None])


class Nonmatching(MemoryVecEnv):
    """B streams of trials; hidden state: ``sample`` [B] (the first object) once the agent left the first room."""

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int = EPISODE_STEPS):
        super().__init__(game, game_id, num_envs, seed, episode_steps)
        self.map = rooms_map()
        self._table = _room_views()
        self._zeros = np.zeros(num_envs, dtype=np.int64)
        self.walker = GridWalker(num_envs)
        self.slot_objects = np.zeros((num_envs, len(SLOT_CELLS)), dtype=np.int64)
        self.sample = np.zeros(num_envs, dtype=np.int64)
        self.in_second_room = np.zeros(num_envs, dtype=bool)

    def _new_episodes(self, idx: np.ndarray) -> None:
        self._new_trials(idx)

    def _new_trials(self, idx: np.ndarray) -> None:
        """Fresh sample and new object (distinct), a random side for the new one, agent at the first room's start."""
        n = len(idx)
        sample = self.rng.integers(0, NUM_OBJECTS, size=n)
        new = (sample + self.rng.integers(1, NUM_OBJECTS, size=n)) % NUM_OBJECTS
        new_left = self.rng.random(n) < 0.5
        self.sample[idx] = sample
        self.slot_objects[idx] = np.stack([sample, np.where(new_left, new, sample), np.where(new_left, sample, new)], 1)
        self.in_second_room[idx] = False
        self.walker.place(idx, np.full(n, START_A[0]), np.full(n, START_A[1]), np.zeros(n, dtype=np.int64))

    def _apply(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        bumped, r, c = self.walker.move(actions, idx, lambda _, rr, cc: self.map[rr, cc] != 0)
        slot = np.where(bumped, self.map[r, c] - SLOT0, -1)  # walls give a negative slot
        to_second = (slot == 0) & ~self.in_second_room[idx]
        chose = (slot >= 1) & self.in_second_room[idx]
        reward = np.zeros(len(idx), dtype=np.float32)
        if chose.any():
            b = idx[chose]
            matched = self.slot_objects[b, slot[chose]] == self.sample[b]
            reward[chose] = np.where(matched, -REWARD, REWARD)
            self._new_trials(b)
        if to_second.any():
            b = idx[to_second]
            self.in_second_room[b] = True
            self.walker.place(b, np.full(len(b), START_B[0]), np.full(len(b), START_B[1]), np.zeros(len(b), np.int64))
        return reward

    def _views(self) -> np.ndarray:
        w = self.walker
        return render(self._table, self._zeros, pose_index(w.row, w.col, w.heading, self.map.shape[1]),
                      self.slot_objects)

    def oracle_problem(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(solid, target) of stream b: the first object, then the slot that holds the new one."""
        target = np.zeros(self.map.shape, dtype=bool)
        if not self.in_second_room[b]:
            target[SLOT_CELLS[0]] = True
        else:
            new_slot = 1 if self.slot_objects[b, 1] != self.sample[b] else 2
            target[SLOT_CELLS[new_slot]] = True
        return self.map != 0, target
