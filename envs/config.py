"""The environment settings of a run (``RunConfig.env``)."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class EnvConfig:
    games: list[str] = field(default_factory=lambda: ["Pong", "Breakout", "SpaceInvaders"])
    """Games trained in sequence, one stage each (Atari names as in `python run.py games`)."""
    backend: str = "envpool"
    """Vectorized env backend: `envpool` (fast C++ pool) or `gymnasium` (ale-py's vector env)."""
    num_envs: int = 8
    """Parallel env streams B; each stream is the same environment in every rollout."""
    num_threads: int = 0
    """Env worker threads (0 = one per core)."""
    sticky_action_prob: float = 0.25
    """Training's probability of repeating the previous action (Machado et al. 2018: 0.25); evaluations use --eval-sticky-action-prob."""
    max_episode_steps: int = 27000
    """Agent-step cap per episode (108,000 frames at frame skip 4)."""
    reward_clip: float = 1.0
    """Training rewards are clipped to [-x, x]; evaluation and logged returns are raw."""
    action_set: str = "full"
    """Actions each Atari game's policy takes: `full` (all 18, Machado et al.) or `minimal` (the game's own minimal set, e.g. 4 in Breakout; the one 18-way head stays and the other logits are masked in acting, learning and evaluation)."""
    life_loss: bool = False
    """Training only: a lost life ends the value bootstrap (discount 0) without resetting the game, as cleanrl's and torchbeast's episodic-life wrappers do; logged returns and every evaluation stay whole game-over episodes."""
