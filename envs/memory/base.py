"""What every memory task shares: the Atari env's step protocol, frame stacking and grid movement.

:class:`MemoryVecEnv` follows :class:`envs.atari.AtariVecEnv` exactly, so the actor, learner and
evaluation run unchanged: ``reset()`` / ``step(actions)`` return an :class:`envs.atari.EnvStep`
with uint8 [B, 4, 84, 84] observations (the last 4 views, oldest first; an episode's first
observation repeats its first view; a task may choose other views and stack depth, e.g. the T-maze's
uint8 [B, 1, K + 2] indicators), raw rewards, ``terminated`` / ``truncated``, ``first`` and the
finished episodes' (return, length). Auto-reset is envpool's "next step" mode: the step after an
episode's end returns the first observation of a new episode with reward 0, ignoring its action.

Time: one agent step is one action at DMLab's 15 Hz (60 Hz frames, action repeat 4). Run budgets
count frames = agent steps x ``FRAME_SKIP`` (4), the Atari convention, which is also DMLab's own
frame count, so ``--frames-per-game`` means the same for every game. Episode lengths are in steps.
An episode that reaches its task's length ends with ``truncated`` (the value bootstraps there, as
at Atari's step cap); ``terminated`` is only set by tasks whose rules end an episode (MiniGrid).

Movement (the grid tasks): actions 0 forward one cell, 1 turn left, 2 turn right (90 degrees),
so a task has :data:`NUM_MOVES` actions; the policy head's other actions are masked off
(``envs.registry.num_actions``).
"""

from __future__ import annotations

import numpy as np

from envs.atari import EnvStep
from envs.memory.raycast import DC, DR, VIEW

NUM_MOVES = 3
"""Actions of the grid tasks: forward, turn left, turn right."""
FORWARD, LEFT, RIGHT = 0, 1, 2
STACK = 4
"""Views per observation (the encoder's 4 input channels, as Atari's frame stack)."""


class MemoryVecEnv:
    """Base of the vectorized memory tasks: B streams stepped in one call, numpy throughout.

    Subclasses implement :meth:`_new_episodes` (start episodes in the given streams),
    :meth:`_apply` (take the actions of the given streams, return their rewards) and
    :meth:`_views` (uint8 [B, *view_shape] current views, [B, 84, 84] by default), or override :meth:`_advance` to step all
    streams at once (a wrapped envpool). They draw randomness only from ``self.rng``,
    so a seed fixes every episode given the same actions. Observations are uint8
    [B, stack, *view_shape] (:attr:`obs_shape` per stream): the last ``stack`` views, oldest first.
    """

    num_actions: int = NUM_MOVES

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int,
                 view_shape: tuple[int, ...] = (VIEW, VIEW), stack: int = STACK):
        self.game = game
        self.obs_shape = (stack, *view_shape)
        """Shape of one stream's observation: ``stack`` views of ``view_shape``."""
        self.num_envs = num_envs
        self.episode_steps = episode_steps
        self.rng = np.random.default_rng(seed)
        self._game_id = np.full(num_envs, game_id, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._ended = np.zeros(num_envs, dtype=bool)
        self._obs = np.zeros((num_envs, *self.obs_shape), dtype=np.uint8)

    # The protocol -------------------------------------------------------------------------------

    def reset(self) -> EnvStep:
        B = self.num_envs
        everyone = np.arange(B)
        self._new_episodes(everyone)
        self._t[:] = 0
        self._returns[:] = 0.0
        self._ended[:] = False
        self._obs = np.repeat(self._views()[:, None], self.obs_shape[0], axis=1)
        zeros = np.zeros(B, dtype=bool)
        return EnvStep(self._obs, np.zeros(B, np.float32), zeros, zeros.copy(), np.ones(B, dtype=bool),
                       self._game_id.copy(), [], allowed=self._allowed())

    def step(self, actions: np.ndarray) -> EnvStep:
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.num_envs,) or (actions < 0).any() or (actions >= self.num_actions).any():
            raise ValueError(f"{self.game} takes actions [B={self.num_envs}] in 0..{self.num_actions - 1}, "
                             f"got {actions!r}")
        first = self._ended.copy()
        reward = self._advance(actions, first)
        restart = np.flatnonzero(first)
        self._t[restart] = 0
        self._returns[restart] = 0.0
        self._t[~first] += 1
        self._returns += reward
        terminated = self._terminated()
        truncated = (self._t >= self.episode_steps) & ~terminated
        ended = terminated | truncated
        finished = [(float(self._returns[b]), int(self._t[b])) for b in np.flatnonzero(ended)]
        self._ended = ended
        # A fresh array every step: the actor keeps the observations of a whole rollout.
        obs = np.empty_like(self._obs)
        obs[:, :-1] = self._obs[:, 1:]
        obs[:, -1] = self._views()
        obs[restart] = obs[restart, -1:]
        self._obs = obs
        return EnvStep(obs, reward, terminated, truncated, first, self._game_id.copy(), finished,
                       allowed=self._allowed())

    def close(self) -> None:
        """Nothing to release (numpy only); kept for the env interface."""

    # Task hooks ---------------------------------------------------------------------------------

    def _advance(self, actions: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Rewards float32 [B] of one step: streams marked ``first`` start new episodes, the others act."""
        reward = np.zeros(self.num_envs, dtype=np.float32)
        live = np.flatnonzero(~first)
        if live.size:
            reward[live] = self._apply(actions[live], live)
        restart = np.flatnonzero(first)
        if restart.size:
            self._new_episodes(restart)
        return reward

    def _new_episodes(self, idx: np.ndarray) -> None:
        raise NotImplementedError

    def _apply(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _views(self) -> np.ndarray:
        raise NotImplementedError

    def _terminated(self) -> np.ndarray:
        """bool [B]: episodes that the task's rules ended at this step (none for the DMLab-style tasks)."""
        return np.zeros(self.num_envs, dtype=bool)

    def _allowed(self) -> np.ndarray | None:
        """bool [B, num_actions]: the actions offered at the current observations (``EnvStep.allowed``);
        None (the default): all of them at every step."""
        return None


class GridWalker:
    """Poses of B agents on grid maps: cell (row, col) and heading, moved by forward / left / right.

    ``solid(idx, row, col)`` (from the task) says which cells block; bumping into one leaves the
    agent in place and reports the blocked cell, which is how tasks let an agent touch an object.
    """

    def __init__(self, num_envs: int):
        self.row = np.zeros(num_envs, dtype=np.int64)
        self.col = np.zeros(num_envs, dtype=np.int64)
        self.heading = np.zeros(num_envs, dtype=np.int64)

    def move(self, actions: np.ndarray, idx: np.ndarray, is_solid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``actions`` [n] to streams ``idx`` [n]; -> (bumped [n], bumped row [n], bumped col [n]).

        ``is_solid(idx, row, col)`` -> bool [n]. A turn never bumps; a forward move into a solid cell does.
        """
        h = self.heading[idx]
        h = np.where(actions == LEFT, (h + 3) % 4, np.where(actions == RIGHT, (h + 1) % 4, h))
        self.heading[idx] = h
        fwd = actions == FORWARD
        r, c = self.row[idx] + DR[h] * fwd, self.col[idx] + DC[h] * fwd
        blocked = fwd & is_solid(idx, r, c)
        self.row[idx] = np.where(blocked, self.row[idx], r)
        self.col[idx] = np.where(blocked, self.col[idx], c)
        return blocked, r, c

    def place(self, idx: np.ndarray, row: np.ndarray, col: np.ndarray, heading: np.ndarray) -> None:
        self.row[idx], self.col[idx], self.heading[idx] = row, col, heading


class FindAndRespawn(MemoryVecEnv):
    """Tasks where reaching a target pays ``reward`` and re-spawns the agent (watermaze, goal_locations).

    The reward arrives with the view at the target (DMLab shows the raised platform, the reached
    goal); the next step re-spawns the agent, whatever it chose, so memory can bind the reward to
    the place. Subclasses implement :meth:`_respawn` and :meth:`_reach` (move, report reaching).
    """

    reward: float = 10.0

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int):
        super().__init__(game, game_id, num_envs, seed, episode_steps)
        self.walker = GridWalker(num_envs)
        self.at_target = np.zeros(num_envs, dtype=bool)
        """bool [B]: the stream reached its target at the last step and is re-spawned at the next."""

    def _apply(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        leaving = self.at_target[idx]
        self._respawn(idx[leaving])
        self.at_target[idx[leaving]] = False
        moving = idx[~leaving]
        found = self._reach(actions[~leaving], moving)
        self.at_target[moving[found]] = True
        reward = np.zeros(len(idx), dtype=np.float32)
        reward[np.flatnonzero(~leaving)[found]] = self.reward
        return reward

    def _respawn(self, idx: np.ndarray) -> None:
        raise NotImplementedError

    def _reach(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Move streams ``idx`` [n] by ``actions`` [n]; -> bool [n], which reached the target."""
        raise NotImplementedError
