"""The evaluation settings of a run (``RunConfig.eval``)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError


@dataclass
class EvalConfig:
    episodes: int = 4
    """Full evaluation episodes per game after each stage."""
    greedy: bool = False
    """Act greedily (argmax) in evaluation instead of sampling from the policy (true or false)."""
    seed: int = 10_000
    """Base seed of the evaluation envs; the same for every stage, so stages are comparable."""
    sticky_action_prob: float = 0.25
    """Sticky-action probability of every evaluation (Machado et al. 2018), whatever training uses: evaluations of every run stay comparable."""
    every: int = 200_000
    """Frames between periodic evaluations of every game during training (0 = only before training and after each stage); they feed eval/curves.csv|.png."""

    def validate(self) -> None:
        """Raise UserError on impossible evaluation settings."""
        if not 0.0 <= self.sticky_action_prob < 1.0:
            raise UserError(f"--eval-sticky-action-prob must be in [0, 1), got {self.sticky_action_prob}")
        if self.every < 0:
            raise UserError(f"--eval-every must be >= 0 frames (0 = off), got {self.every}")
