"""The actor-critic: encoder -> core (with clipped reward and previous action) -> policy and value heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.config import ModelConfig
from agent.cores import Collectives, Core, State, make_core
from agent.encoders import make_encoder
from envs.atari import OBS_SHAPE, EnvStep
from envs.registry import GAMES, action_masks, game_id, observation_shape


@dataclass
class Inputs:
    """One rollout's network inputs, time first.

    frames: uint8 [T, B, *obs_shape] observations ([T, B, 4, 84, 84] frame stacks, or the T-maze's
    [T, B, 1, K + 2] indicators). prev_action: int64 [T, B], the action taken before frame t
    (0 at an episode start). reward: float [T, B], the clipped reward that arrived with frame t.
    first: bool [T, B], frame t starts an episode (the core state is reset before it).
    game_id: int64 [T, B], the game of frame t (``envs.registry``): masks the actions that game
    does not take; None = all actions allowed. allowed: bool [T, B, A_env] (A_env <= A), the env's
    per-step mask over the first A_env actions (``EnvStep.allowed``, e.g. the T-maze's corridor);
    None = no per-step mask.
    """

    frames: torch.Tensor
    prev_action: torch.Tensor
    reward: torch.Tensor
    first: torch.Tensor
    game_id: torch.Tensor | None = None
    allowed: torch.Tensor | None = None


def step_inputs(step: EnvStep, prev_action: torch.Tensor, reward_clip: float, device: torch.device | str
                ) -> Inputs:
    """One env step as network inputs with T = 1, on ``device``; ``prev_action`` int64 [B], the
    reward clipped to [-reward_clip, reward_clip] (the actor's and the evaluation's acting passes)."""
    def put(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device).unsqueeze(0)

    return Inputs(frames=put(step.obs), prev_action=prev_action.to(device).unsqueeze(0),
                  reward=put(step.reward).clamp(-reward_clip, reward_clip), first=put(step.first),
                  game_id=put(step.game_id), allowed=None if step.allowed is None else put(step.allowed))


MASKED_LOGIT = -1e9
"""Logit of an action the current game does not take (its softmax probability underflows to 0)."""


class ActorCritic(nn.Module):
    def __init__(self, cfg: ModelConfig, num_actions: int, games: list[str] | None = None, action_set: str = "full",
                 collectives: Collectives | None = None):
        """``games``: the run's schedule (game names in stage order); the MoE core routes and counts by it,
        and its observation shape sizes the encoder's input (None: 4 x 84 x 84 frames).
        ``action_set``: ``full`` or ``minimal`` (``envs.registry.action_masks``): the actions each game's
        logits keep; the others are masked in acting, learning and evaluation alike. ``collectives``:
        the ranks of a data-parallel run, for the MoE core (None: this process alone)."""
        super().__init__()

        self.num_actions = num_actions
        obs_shape = OBS_SHAPE if games is None else observation_shape(games[0])
        self.encoder = make_encoder(cfg.encoder, cfg.hidden_size, obs_shape)
        schedule = None if games is None else [game_id(g) for g in games]
        self.core: Core = make_core(cfg, cfg.hidden_size + 1 + num_actions, schedule, len(GAMES), collectives)
        self.policy = nn.Linear(self.core.output_size, num_actions)
        self.value = nn.Linear(self.core.output_size, 1)
        # One head serves every game; each game keeps the logits of its own actions. Not persistent:
        # derived from the registry and the config, not learned.
        self.register_buffer("allowed_actions", torch.from_numpy(action_masks(action_set)), persistent=False)
        if cfg.init == "orthogonal":
            orthogonal_init(self)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return self.core.initial_state(batch_size, device)

    def core_inputs(self, inp: Inputs) -> torch.Tensor:
        """[T, B, hidden + 1 + A]: encoded frames, clipped reward, one-hot previous action."""
        T, B = inp.prev_action.shape
        features = self.encoder(inp.frames.flatten(0, 1)).view(T, B, -1)
        prev = F.one_hot(inp.prev_action, self.num_actions).to(features.dtype)
        return torch.cat([features, inp.reward.unsqueeze(-1).to(features.dtype), prev], dim=-1)

    def heads(self, core_out: torch.Tensor, game_id: torch.Tensor | None = None,
              allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """core outputs [T, B, H] -> (policy logits [T, B, A], values [T, B]).

        With ``game_id`` [T, B], the logits of actions the game does not take are set to
        :data:`MASKED_LOGIT`: their probability is exactly 0, and log-probabilities and the entropy
        stay finite (0 * -1e9 = 0, where -inf would give NaN). ``allowed`` [T, B, A_env] masks the
        first A_env actions further, step by step (:class:`Inputs`). A step with one action left
        has log-probability 0 and entropy 0 there, so it adds no policy gradient.
        """
        logits = self.policy(core_out)
        keep = None if game_id is None else self.allowed_actions[game_id]
        if allowed is not None:
            step = F.pad(allowed, (0, self.num_actions - allowed.shape[-1]), value=True)
            keep = step if keep is None else keep & step
        if keep is not None:
            logits = logits.masked_fill(~keep, MASKED_LOGIT)
        return logits, self.value(core_out).squeeze(-1)

    def forward(self, inp: Inputs, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Acting pass: -> (logits [T, B, A], values [T, B], state after the last step)."""
        out, state = self.core(self.core_inputs(inp), inp.first, state, inp.game_id)
        logits, values = self.heads(out, inp.game_id, inp.allowed)
        return logits, values, state

    def learner_forward(self, inp: Inputs, rollout_state: State, carry: Any, truncation: int
                        ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Learning pass through the core's learner hook: -> (logits, values, context for after_backward)."""
        out, context = self.core.learner_unroll(self.core_inputs(inp), inp.first, rollout_state, carry, truncation,
                                                inp.game_id)
        logits, values = self.heads(out, inp.game_id, inp.allowed)
        return logits, values, context


def orthogonal_init(model: "ActorCritic") -> None:
    """cleanrl's initialisation: orthogonal weights with gain sqrt(2) in the encoder, 0.01 in the
    policy head (a near-uniform first policy), 1 in the value head; zero biases. The core keeps its own."""
    layers = [(m, 2 ** 0.5) for m in model.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for module, gain in layers + [(model.policy, 0.01), (model.value, 1.0)]:
            # Into a contiguous copy: the encoder keeps its conv weights channels_last.
            module.weight.copy_(nn.init.orthogonal_(torch.empty(module.weight.shape), gain=gain))
            module.bias.zero_()
