"""How much the policy looks at the screen: the KL between its policy on a rollout's real frames and
on the same rollout with the frames shuffled among its steps and streams.

Everything else the core sees (previous action, reward, episode starts, the initial state) stays,
so a policy that ignores the screen scores 0 and one that reads it scores well above 0. A learner
that has only learned action frequencies or reward timing shows up here as a flat 0 while its
return creeps up. Logged as ``policy/screen_kl`` (nats per step, mean over the rollout's steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agent.model import ActorCritic, Inputs
from train.actor import Rollout


@torch.no_grad()
def screen_kl(model: ActorCritic, rollout: Rollout, reward_clip: float, generator: torch.Generator) -> float:
    """Mean over the rollout's [T+1, B] steps of KL(pi(. | real frames) || pi(. | shuffled frames)), nats.

    ``generator`` draws the permutation (the learner's RNG stays untouched, so runs with and without
    the diagnostic train alike). The acting pass is used: it changes no parameter or buffer.
    """
    frames = rollout.frames
    steps = frames.shape[0] * frames.shape[1]
    perm = torch.randperm(steps, generator=generator)
    shuffled = frames.flatten(0, 1)[perm].view_as(frames)
    reward = rollout.reward.clamp(-reward_clip, reward_clip)
    device = next(model.parameters()).device
    state = tuple(s.to(device) for s in rollout.initial_state)

    def log_pi(f: torch.Tensor) -> torch.Tensor:
        inp = Inputs(frames=f.to(device), prev_action=rollout.prev_action.to(device), reward=reward.to(device),
                     first=rollout.first.to(device), game_id=rollout.game_id.to(device),
                     allowed=None if rollout.allowed is None else rollout.allowed.to(device))
        return F.log_softmax(model(inp, state)[0], dim=-1)

    real, other = log_pi(frames), log_pi(shuffled)
    return float((real.exp() * (real - other)).sum(-1).mean())
