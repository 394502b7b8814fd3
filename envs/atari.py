"""Vectorized Atari under the Machado et al. (2018) protocol, with two interchangeable backends.

Protocol: sticky actions (0.25), the full 18-action set for every game (one policy head serves
all games), no life-loss terminal, a 27,000 agent-step cap, 84x84 grayscale, frame skip 4, frame
stack 4, FIRE on reset. Rewards are returned raw; clipping is the learner's business. Each step
also reports which streams lost a life (``EnvStep.life_lost``), so that training may end the value
bootstrap there (``--life-loss``) while episodes stay whole games; and :func:`minimal_action_mask`
``envs/atari_data.py`` lists each game's minimal action set within the 18 (``--action-set minimal``
masks the rest).

Both backends (envpool, and ale-py's vector env for platforms without envpool) auto-reset in
"next step" mode: the step after a terminal observation returns the first observation of a new
episode, with reward 0, and the action sent for it is ignored. :class:`AtariVecEnv` marks that
observation with ``first=True`` so the learner can mask the transition that led to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.errors import UserError

NUM_ACTIONS = 18
OBS_SHAPE = (4, 84, 84)
FRAME_SKIP = 4
"""Emulator frames per agent step; run lengths are counted in frames, as in the literature."""


@dataclass
class EnvStep:
    """What one vectorized step returns; all arrays are [B] unless stated.

    obs: uint8 [B, 4, 84, 84] frames. reward: float32 raw game reward that arrived with ``obs``.
    terminated: the episode ended by the game's rules at ``obs``. truncated: it hit the step cap.
    first: ``obs`` is the first of a new episode (the action that "led" to it had no effect).
    game_id: int64 id of the game (``envs.registry``). finished: (raw return, length in agent
    steps) of the episodes that ended at this step, one tuple per ended stream. life_lost: the game
    took a life at ``obs`` without ending the episode (Atari games with lives; all False otherwise).
    allowed: bool [B, A_env] or None, the actions the policy may take at ``obs``, over the env's first
    A_env actions (a task whose choices change from step to step, e.g. the T-maze's corridor, where
    only action 0 is offered); None: every action the game takes (Atari, the grid tasks).
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    first: np.ndarray
    game_id: np.ndarray
    finished: list[tuple[float, int]]
    life_lost: np.ndarray = field(default=None)  # type: ignore[assignment]
    allowed: np.ndarray | None = None

    def __post_init__(self):
        if self.life_lost is None:
            self.life_lost = np.zeros(len(self.reward), dtype=bool)


class AtariVecEnv:
    """``num_envs`` synchronous streams of one Atari game; stream b is always the same emulator."""

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, backend: str = "envpool",
                 sticky_action_prob: float = 0.25, max_episode_steps: int = 27000, num_threads: int = 0):
        self.game = game
        self.num_envs = num_envs
        self.num_actions = NUM_ACTIONS
        self._game_id = np.full(num_envs, game_id, dtype=np.int64)
        self._pool = _make_pool(game, num_envs, seed, backend, sticky_action_prob, max_episode_steps, num_threads)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._ended = np.zeros(num_envs, dtype=bool)
        self._lives = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> EnvStep:
        obs, info = self._pool.reset()
        self._lives = np.asarray(info["lives"], dtype=np.int64)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._ended[:] = False
        zeros = np.zeros(self.num_envs, dtype=bool)
        return EnvStep(obs, np.zeros(self.num_envs, np.float32), zeros, zeros.copy(),
                       np.ones(self.num_envs, dtype=bool), self._game_id.copy(), [])

    def step(self, actions: np.ndarray) -> EnvStep:
        obs, reward, terminated, truncated, info = self._pool.step(np.asarray(actions, dtype=np.int32))
        reward = reward.astype(np.float32, copy=False)
        first = self._ended.copy()
        # Streams that just auto-reset start counting afresh.
        self._returns[first] = 0.0
        self._lengths[first] = 0
        self._returns += reward
        self._lengths += ~first
        ended = terminated | truncated
        finished = [(float(self._returns[b]), int(self._lengths[b])) for b in np.flatnonzero(ended)]
        self._ended = ended
        lives = np.asarray(info["lives"], dtype=np.int64)
        life_lost = (lives < self._lives) & ~first & ~ended
        self._lives = lives
        return EnvStep(obs, reward, terminated, truncated, first, self._game_id.copy(), finished, life_lost)

    def close(self) -> None:
        self._pool.close()


def _make_pool(game: str, num_envs: int, seed: int, backend: str, sticky: float, max_steps: int, num_threads: int):
    if backend == "envpool":
        import envpool

        return envpool.make(
            f"{game}-v5", env_type="gymnasium", num_envs=num_envs, batch_size=num_envs, seed=seed,
            num_threads=num_threads, repeat_action_probability=sticky, full_action_space=True,
            episodic_life=False, reward_clip=False, max_episode_steps=max_steps, noop_max=1,
            stack_num=OBS_SHAPE[0], frame_skip=FRAME_SKIP, img_height=OBS_SHAPE[1], img_width=OBS_SHAPE[2],
            gray_scale=True, use_fire_reset=True,
        )
    if backend == "gymnasium":
        return _AleVectorPool(game, num_envs, seed, sticky, max_steps, num_threads)
    raise UserError(f"unknown env backend {backend!r}; choose envpool or gymnasium")


class _AleVectorPool:
    """ale-py's C++ vector env configured like envpool, with envpool's (obs, info) reset."""

    def __init__(self, game: str, num_envs: int, seed: int, sticky: float, max_steps: int, num_threads: int):
        from ale_py.vector_env import AtariVectorEnv

        self._env = AtariVectorEnv(
            game=_ale_rom_name(game), num_envs=num_envs, num_threads=num_threads,
            repeat_action_probability=sticky, full_action_space=True, episodic_life=False,
            reward_clipping=False, max_num_frames_per_episode=max_steps * FRAME_SKIP, noop_max=1,
            stack_num=OBS_SHAPE[0], frameskip=FRAME_SKIP, img_height=OBS_SHAPE[1], img_width=OBS_SHAPE[2],
            grayscale=True, use_fire_reset=True, autoreset_mode="NextStep",
        )
        self._seed = seed

    def reset(self):
        return self._env.reset(seed=self._seed)

    def step(self, actions: np.ndarray):
        return self._env.step(actions)

    def close(self) -> None:
        self._env.close()


def _ale_rom_name(game: str) -> str:
    """envpool's CamelCase name -> ale-py's ROM id (``UpNDown`` -> ``up_n_down``), matched ignoring ``_``."""
    from ale_py.roms import get_all_rom_ids

    by_key = {rom.replace("_", ""): rom for rom in get_all_rom_ids()}
    try:
        return by_key[game.lower()]
    except KeyError:
        raise UserError(f"ale-py has no ROM for {game!r}; try --env-backend envpool") from None
