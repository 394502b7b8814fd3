"""``minigrid_memory``: envpool's MiniGrid-MemoryS7 behind the memory-task interface (a third-party check).

The agent sees an object (key or ball) in a small room, walks down a corridor and must step next
to the matching one of the two objects at its end: reward 1 - 0.9 t / 245 for the match (t the
steps taken), 0 for the other; either ends the episode (``terminated``), as does the 245-step limit
(``truncated``). MiniGrid's egocentric 7 x 7 symbolic view [x, y, (object, colour, state)] is drawn
as an 84 x 84 gray image, 12 x 12 pixels per cell with a glyph per object type, agent at the bottom
centre facing up. Actions: forward, turn left, turn right (MiniGrid's 2, 0, 1; the others do
nothing in this task). envpool auto-resets on the step after an end, as this interface does.
"""

from __future__ import annotations

import numpy as np

from envs.memory.base import FORWARD, LEFT, RIGHT, MemoryVecEnv
from envs.memory.raycast import VIEW

ENV_ID = "MiniGrid-MemoryS7-v0"
EPISODE_STEPS = 245
"""envpool's (and MiniGrid's) step limit for MemoryS7."""
CELL = VIEW // 7
"""Pixels per view cell."""
_TO_MINIGRID = np.zeros(3, dtype=np.int32)
_TO_MINIGRID[[FORWARD, LEFT, RIGHT]] = [2, 0, 1]
"""Our action -> MiniGrid's (forward 2, left 0, right 1)."""


def _glyphs() -> np.ndarray:
    """uint8 [11 * 6, CELL, CELL]: the picture of each (object index, colour index) of MiniGrid."""
    y, x = np.mgrid[:CELL, :CELL] - (CELL - 1) / 2
    disk = (x * x + y * y) <= (CELL / 2 - 1) ** 2
    bar = (np.abs(y) <= 1) | ((np.abs(x - 2) <= 1) & (y > 0))  # a key: shaft and bit
    full = np.ones((CELL, CELL), dtype=bool)
    shape = {0: ~full, 1: ~full, 2: full, 5: bar, 6: disk}  # unseen, empty, wall, key, ball
    atlas = np.zeros((11, 6, CELL, CELL), dtype=np.uint8)
    for obj in range(11):
        for colour in range(6):
            level = 0 if obj == 0 else 30 if obj == 1 else 110 + 24 * colour
            atlas[obj, colour] = np.where(shape.get(obj, full), level, 30 if obj else 0)
    return atlas.reshape(66, CELL, CELL)


_GLYPHS = _glyphs()


class MiniGridMemory(MemoryVecEnv):
    """B envpool streams of MiniGrid-MemoryS7; the hidden state lives inside envpool."""

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int = EPISODE_STEPS):
        import envpool

        super().__init__(game, game_id, num_envs, seed, episode_steps)
        self._pool = envpool.make(ENV_ID, env_type="gymnasium", num_envs=num_envs, batch_size=num_envs, seed=seed,
                                  max_episode_steps=episode_steps)
        self._image = np.zeros((num_envs, 7, 7, 3), dtype=np.uint8)
        self._rule_end = np.zeros(num_envs, dtype=bool)

    def _new_episodes(self, idx: np.ndarray) -> None:
        # Only reset() asks for every stream at once; later episodes start inside envpool (_advance).
        obs, _ = self._pool.reset()
        self._image = obs["image"]
        self._rule_end[:] = False

    def _advance(self, actions: np.ndarray, first: np.ndarray) -> np.ndarray:
        obs, reward, terminated, _, _ = self._pool.step(_TO_MINIGRID[actions])
        self._image = obs["image"]
        self._rule_end = terminated & ~first
        return np.where(first, 0.0, reward).astype(np.float32)

    def _terminated(self) -> np.ndarray:
        return self._rule_end.copy()

    def _views(self) -> np.ndarray:
        code = self._image[..., 0].astype(np.int64) * 6 + self._image[..., 1]  # [B, x, y]
        cells = _GLYPHS[code.transpose(0, 2, 1)]  # [B, y, x, CELL, CELL]
        return cells.transpose(0, 1, 3, 2, 4).reshape(self.num_envs, VIEW, VIEW)

    def close(self) -> None:
        self._pool.close()
