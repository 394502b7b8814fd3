"""The recurrent-core interface that every core (LSTM, eLSTM, MoE eLSTM) implements.

A core maps per-step inputs x_t [B, D] to outputs h_t [B, H] while carrying a state (a tuple of
[B, ...] tensors). The actor calls :meth:`Core.forward` one step at a time; the learner calls the
three ``learner_*`` hooks, which let a core that computes its own gradients (RTRL) carry per-stream
learner state across rollouts and write gradients after ``loss.backward()`` without any change to
the learner's control flow. The defaults implement truncated BPTT from the rollout's initial state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


def chrono_forget_bias(size: int, chrono_max: float) -> torch.Tensor:
    """[size] forget-gate biases: zeros for ``chrono_max`` <= 2, else chrono initialisation
    b_f ~ log U(1, chrono_max - 1) (Tallec & Ollivier 2018).

    A cell with f = sigmoid(b_f) keeps a fraction f of its content per step, a time constant of
    about 1 / (1 - f) = 1 + e^b_f steps: zeros give f = 0.5 (about 2 steps, so a cue 100 steps back
    has decayed by 2^-100 and so has every gradient to it); chrono gives time constants spread
    uniformly over 2..chrono_max steps."""
    if chrono_max <= 2:
        return torch.zeros(size)
    return torch.log(torch.empty(size).uniform_(1.0, chrono_max - 1.0))


class Core(nn.Module, ABC):
    input_size: int
    output_size: int

    @abstractmethod
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """The state at an episode start, each tensor [batch_size, ...]."""

    @abstractmethod
    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step without resets: x [B, D] -> (h [B, H], new state)."""

    def reset(self, state: State, first: torch.Tensor) -> State:
        """Zero the state of the streams where ``first`` [B] (bool) marks an episode start."""
        keep = (~first).to(state[0].dtype)
        return tuple(s * keep.view(-1, *([1] * (s.dim() - 1))) for s in state)

    def forward(self, inputs: torch.Tensor, first: torch.Tensor, state: State,
                game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """inputs [T, B, D], first [T, B] (state reset before step t where set) -> (outputs [T, B, H], state).

        ``game_id`` [T, B]: the game of each step, for cores that route by it (others ignore it)."""
        outputs = []
        for t in range(inputs.shape[0]):
            out, state = self.step(inputs[t], self.reset(state, first[t]))
            outputs.append(out)
        return torch.stack(outputs), state

    # Learner hooks -------------------------------------------------------------------------------

    def learner_carry(self, batch_size: int, device: torch.device | str) -> Any:
        """Per-stream state the learner keeps across rollouts (None: the rollout's own initial state is used)."""
        return None

    def learner_unroll(self, inputs: torch.Tensor, first: torch.Tensor, rollout_state: State, carry: Any,
                       truncation: int, game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Learner pass over a rollout: inputs [T, B, D] -> (outputs [T, B, H], context for after_backward).

        Default: backprop through time from ``rollout_state`` (the actor's state before step 0),
        with the gradient cut every ``truncation`` steps (0 = never inside the rollout).
        """
        T = inputs.shape[0]
        span = truncation or T
        outputs, state = [], rollout_state
        for start in range(0, T, span):
            state = tuple(s.detach() for s in state)
            out, state = self(inputs[start:start + span], first[start:start + span], state,
                              None if game_id is None else game_id[start:start + span])
            outputs.append(out)
        return torch.cat(outputs), None

    def learner_after_backward(self, context: Any) -> Any:
        """Called after ``loss.backward()`` and before the optimizer step; returns the new carry."""
        return None

    def learner_aux_loss(self, context: Any) -> torch.Tensor | None:
        """An extra loss term of the core (e.g. the router's balance loss), added to the total; None: none."""
        return None

    def learner_grads(self) -> list[torch.Tensor]:
        """Gradients the core holds outside ``parameters()`` (e.g. experts in a store), clipped in place
        together with the parameters' gradients after :meth:`learner_after_backward` (the learner's
        optimizer for them, e.g. ``train/expert_optimizer.py``, applies them)."""
        return []

    def learner_stats(self) -> dict[str, float]:
        """Scalars about the latest learner pass under plain names (e.g. RTRL stability telemetry);
        ``train/logger.py`` maps them to their TensorBoard tags."""
        return {}
