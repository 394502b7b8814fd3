"""Top-k routing of the MoE core's input to its experts, and the per-game load-balancing loss.

The router reads the core input x (encoder features, reward, previous action), never the cell
c_prev: routing on c would make every expert's sensitivity depend on every other's and break the
element-wise recurrence that makes RTRL affordable.

``learned`` (default): logits = W x + b [.., E]; the k largest are chosen and their gates are a
softmax over those k logits (renormalised top-k, as in Shazeer et al. 2017 without noise). The
router learns through the gates only (the choice itself is discrete; with k = 1 the one gate is the constant 1, so the task loss gives it no gradient and only the balance loss trains it): within the rollout in the
segment RTRL form (autograd), within the step in the per-step form.

``game``: hard routing by the schedule's game, the baseline: the i-th distinct game of the
schedule uses experts ``[i*k, (i+1)*k)`` with equal gates 1/k (needs ``k * games <= E``).

Balance loss (learned routing), computed per game so that it spreads each game's load over the
experts without pulling different games onto the same experts (a global term over a mixed batch
would fight specialisation): for each game g in the batch, with f_e the share of g's routing slots
that went to expert e and P_e g's mean router probability of e,
    L_g = E * sum_e f_e * P_e        (Switch Transformer; 1 when perfectly uniform),
and the loss is the mean over the games present of L_g times the number of steps (so it weighs
like the summed V-trace losses).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError

ROUTINGS = ("learned", "game")


class Router(nn.Module):
    def __init__(self, input_size: int, num_experts: int, top_k: int, routing: str, schedule: list[int],
                 num_games: int) -> None:
        """``schedule``: the run's game ids (``envs.registry.game_id``) in stage order;
        ``num_games``: how many game ids exist (size of the id -> schedule-slot table)."""
        super().__init__()
        if routing not in ROUTINGS:
            raise UserError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
        if not 0 < top_k <= num_experts:
            raise UserError(f"--top-k must be in [1, --num-experts={num_experts}], got {top_k}")
        distinct = list(dict.fromkeys(schedule))
        if routing == "game" and top_k * len(distinct) > num_experts:
            raise UserError(f"--routing game gives each of the {len(distinct)} games its own {top_k} experts: "
                            f"needs --num-experts >= {top_k * len(distinct)}, got {num_experts}")
        self.num_experts, self.top_k, self.routing = num_experts, top_k, routing
        self.linear = nn.Linear(input_size, num_experts) if routing == "learned" else None
        if self.linear is not None:
            nn.init.normal_(self.linear.weight, std=0.01)
            nn.init.zeros_(self.linear.bias)
        slot = torch.full((num_games,), -1, dtype=torch.long)
        slot[torch.tensor(distinct, dtype=torch.long)] = torch.arange(len(distinct))
        self.register_buffer("game_slot", slot, persistent=False)

    def forward(self, x: torch.Tensor, game_id: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x [..., D], game_id [...] -> (expert ids [..., k] long, gates [..., k], router probabilities
        [..., E] or None for game routing)."""
        if self.linear is None:
            if game_id is None:
                raise ValueError("game routing needs the game id of every step")
            slot = self.game_slot[game_id]
            if (slot < 0).any():
                raise UserError("--routing game cannot route a game that is not in the run's schedule")
            idx = slot.unsqueeze(-1) * self.top_k + torch.arange(self.top_k, device=x.device)
            gates = torch.full(idx.shape, 1.0 / self.top_k, dtype=x.dtype, device=x.device)
            return idx, gates, None
        logits = self.linear(x)
        top, idx = logits.topk(self.top_k, dim=-1)
        return idx, F.softmax(top, dim=-1), F.softmax(logits, dim=-1)

    def balance_loss(self, idx: torch.Tensor, probs: torch.Tensor | None, game_id: torch.Tensor | None,
                     sum_over_ranks: Callable[[list[torch.Tensor]], None] | None = None) -> torch.Tensor | None:
        """The per-game Switch balance loss (module docstring) over idx [M, k], probs [M, E], game_id [M].

        ``sum_over_ranks`` (data-parallel training) sums, in place, the routing counts and step counts
        over the ranks, so that f_e, the games present and the step count are the global batch's and
        the ranks' losses add up to the loss of the whole batch (it is linear in the probabilities)."""
        if probs is None:
            return None
        S, E, k = int(self.game_slot.max()) + 1, self.num_experts, self.top_k
        slots = torch.zeros(idx.shape[0], dtype=torch.long, device=idx.device) if game_id is None else \
            self.game_slot[game_id].clamp(min=0)
        counts = torch.zeros(S, E, dtype=probs.dtype, device=probs.device)
        counts.index_put_((slots.unsqueeze(-1).expand_as(idx).reshape(-1), idx.reshape(-1)),
                          torch.ones(idx.numel(), dtype=probs.dtype, device=probs.device), accumulate=True)
        rows = torch.bincount(slots, minlength=S).to(probs.dtype)
        if sum_over_ranks is not None:
            sum_over_ranks([counts, rows])
        prob_sums = torch.zeros(S, E, dtype=probs.dtype, device=probs.device).index_add(0, slots, probs)
        present = rows > 0
        share = counts[present] / (rows[present, None] * k)
        per_game = E * (share * prob_sums[present] / rows[present, None]).sum(-1)
        return per_game.mean() * rows.sum()
