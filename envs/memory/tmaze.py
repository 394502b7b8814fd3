"""``tmaze-D``: the delayed-cue T-maze of Bakker (2002), a pure memory-span probe with small observations.

An episode, for a delay D >= 1 and K >= 2 exits (one of K cues drawn per episode):

    step t:       0        1 .. D          D + 1         (the episode's last step)
    position:     start    corridor 1..D   junction      -> exit (terminated)
    observation:  cue      corridor        junction

  * t = 0, the start: the only observation that shows the cue (one of K).
  * t = 1 .. D, the corridor: D observations that look the same whatever the cue. Every action
    moves the agent one cell on, so the delay is exactly D steps, whatever the policy does.
  * t = D + 1, the junction: the action taken here picks the exit (action k = exit k); +1 if it is
    the cued exit, 0 otherwise, and the episode ends (``terminated``) at the exit's observation.

So an episode is exactly D + 2 agent steps (actions), and the choice comes D + 1 steps after the
cue was seen. Actions: the first K of the shared policy head (the others are masked). The junction
is the only step with a choice, and the task says so: its per-step mask (``EnvStep.allowed``)
offers all K actions at the junction and only action 0 elsewhere. Without it the policy gradient
scores D sampled corridor actions per episode that change nothing, noise carried into the core's
parameters against the one junction term (docs/results.md, the T-maze diagnosis). The env itself
still takes any of the K actions at any step, so the delay stays exactly D whatever is sent.

Observation: uint8 [B, 1, K + 2] (one view, no frame stack, so the cue is never repeated): K cue
indicators (one-hot at the start, zero after), then a corridor and a junction indicator; the exit's
observation is all zeros. Values are 0/1, read as they are by ``--encoder mlp``.

Names: ``tmaze-D`` (K = 2, Bakker's) and ``tmaze-D-kK`` (K exits, 2 <= K <= :data:`MAX_EXITS`).
Each K holds one game id (the delay is a parameter of the task, like an episode cap), so a schedule
``tmaze-10,tmaze-100`` trains one game id at two delays. Random play scores 1/K, the oracle 1.
"""

from __future__ import annotations

import re

import numpy as np

from common.errors import UserError
from envs.memory.base import MemoryVecEnv

MAX_EXITS = 4
"""Largest K: one game id is reserved per K in 2..MAX_EXITS."""
EXITS = tuple(range(2, MAX_EXITS + 1))
"""The numbers of exits a T-maze may have."""
PREFIX = "tmaze"
START, CORRIDOR, JUNCTION, EXIT = range(4)
"""The kinds of position an agent can be at, in episode order."""
_NAME = re.compile(r"-(\d+)(?:-k(\d+))?")
_USAGE = (f"write tmaze-D or tmaze-D-kK, with a delay D >= 1 (corridor steps) and K in 2..{MAX_EXITS} exits, "
          "e.g. tmaze-100 or tmaze-100-k4")


def name(delay: int, exits: int = 2) -> str:
    """The canonical name of the T-maze with ``delay`` corridor steps and ``exits`` exits."""
    return f"{PREFIX}-{delay}{_exits_suffix(exits)}"


def family(exits: int) -> str:
    """The name that holds the game id (and the scores) of every T-maze with ``exits`` exits: ``tmaze-D[-kK]``."""
    return f"{PREFIX}-D{_exits_suffix(exits)}"


def _exits_suffix(exits: int) -> str:
    return "" if exits == 2 else f"-k{exits}"


def parse(game: str) -> tuple[int, int] | None:
    """``(delay, exits)`` of a T-maze name (case and ``-``/``_`` insensitive); None for a name that is not one.

    A name that starts with ``tmaze`` but is not of the form ``tmaze-D[-kK]`` with D >= 1 and K in
    :data:`EXITS` raises UserError (``tmaze-0``, ``tmaze-abc``, ``tmaze-10-k1``, the families' ``tmaze-D``).
    """
    key = game.strip().lower().replace("_", "-")
    if not key.startswith(PREFIX):
        return None
    m = _NAME.fullmatch(key[len(PREFIX):])
    delay, exits = (int(m[1]), int(m[2] or 2)) if m else (0, 0)
    if m is None or delay < 1 or exits not in EXITS:
        why = "" if m is None else f" (delay {delay})" if delay < 1 else f" ({exits} exits)"
        raise UserError(f"bad T-maze name {game!r}{why}: {_USAGE}")
    return delay, exits


class TMaze(MemoryVecEnv):
    """B streams of the T-maze; hidden state: ``cue`` [B] (the cued exit), seen only at the start.

    ``position`` [B]: 0 the start, 1..D the corridor, D + 1 the junction, D + 2 the exit.
    """

    def __init__(self, game: str, game_id: int, num_envs: int, seed: int, episode_steps: int, *,
                 delay: int, exits: int = 2):
        super().__init__(game, game_id, num_envs, seed, episode_steps, view_shape=(exits + 2,), stack=1)
        self.delay, self.num_actions = delay, exits
        self.cue = np.zeros(num_envs, dtype=np.int64)
        self.position = np.zeros(num_envs, dtype=np.int64)
        # [kind, cue] -> the view (START shows the cue; the others look the same for every cue).
        table = np.zeros((4, exits, exits + 2), dtype=np.uint8)
        table[START, np.arange(exits), np.arange(exits)] = 1
        table[CORRIDOR, :, exits] = 1
        table[JUNCTION, :, exits + 1] = 1
        self._table = table

    def _new_episodes(self, idx: np.ndarray) -> None:
        self.cue[idx] = self.rng.integers(0, self.num_actions, size=len(idx))
        self.position[idx] = 0

    def _apply(self, actions: np.ndarray, idx: np.ndarray) -> np.ndarray:
        chose = self.position[idx] == self.delay + 1
        self.position[idx] += 1
        return (chose & (actions == self.cue[idx])).astype(np.float32)

    def _terminated(self) -> np.ndarray:
        return self.position > self.delay + 1

    def _kind(self) -> np.ndarray:
        """int64 [B]: START, CORRIDOR, JUNCTION or EXIT of each stream's position."""
        p = self.position
        return (p > 0).astype(np.int64) + (p > self.delay) + (p > self.delay + 1)

    def _allowed(self) -> np.ndarray:
        """bool [B, K]: all K exits at the junction, only action 0 at every other step."""
        allowed = np.zeros((self.num_envs, self.num_actions), dtype=bool)
        allowed[:, 0] = True
        allowed[self._kind() == JUNCTION] = True
        return allowed

    def _views(self) -> np.ndarray:
        """uint8 [B, K + 2]: cue one-hot (start only), corridor, junction."""
        return self._table[self._kind(), self.cue]

    def oracle_actions(self) -> np.ndarray:
        """int64 [B]: the scripted oracle's actions, the cued exit at every step (in the corridor any action moves on)."""
        return self.cue.copy()
