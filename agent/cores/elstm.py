"""Element-wise LSTM (Irie et al., ICLR 2024) and its exact Real-Time Recurrent Learning.

Forward (x [B, D] the step's input, c [B, N] the cell):
    f = sigmoid(x F^T + w_f * c_prev + b_f)          F, Z: [N, D];  w_f, w_z, b_f, b_z: [N]
    z = tanh   (x Z^T + w_z * c_prev + b_z)
    c = f * c_prev + (1 - f) * z
    h = sigmoid(O [x; c] + b_o) * c                  output gate: plain backprop, no sensitivity

The recurrence is element-wise, so dc_t/dc_{t-1} is diagonal,
    J = f + w_z * zh + w_f * fh,   zh = (1 - f)(1 - z^2),   fh = (c_prev - z) f (1 - f),
and the sensitivities dc/dtheta of the recurrent parameters cost O(N * D) per stream:
    S_F <- J * S_F + fh (x) x      S_Z <- J * S_Z + zh (x) x
    S_wf <- J * S_wf + fh * c_prev   S_wz <- J * S_wz + zh * c_prev   S_bf <- J * S_bf + fh   S_bz <- J * S_bz + zh
A stream's c and sensitivities are zeroed when its episode starts. The update rules (shared with
the MoE core) live in ``agent/rtrl.py``.

Learning rules (``learning``):
  ``tbptt``: the default hooks of :class:`Core` (BPTT through the rollout, cut every M steps).
  ``rtrl``: the learner carries c and the sensitivities per env stream across rollouts, so the
  recurrent parameters get the exact gradient of each rollout's loss through the whole episode so
  far (untruncated), at memory that does not grow with its length. Two exact implementations:

  ``segment`` (what training uses): autograd runs BPTT inside the rollout from a leaf c_0 (the
  carried cell), then ``learner_after_backward`` adds the carried term sum_b dL/dc_0[b] * S_0[b]
  and advances the sensitivities over the whole rollout at once,
      S_T = (prod_t J_t) * S_0 + sum_t R_t * imm_t,   R_t = prod_{t<s<T} J_s  (reverse cumprod),
  the sum over t being one batched matrix product [B, N, T] x [B, T, D]. The encoder below the
  core gets the within-rollout gradient (BPTT from every loss in the rollout back to its start).

  ``step`` (the reference): the recurrence is cut after every step and the recurrent parameters
  are detached, so autograd writes nothing into them; ``learner_after_backward`` runs the
  per-step sensitivity update and adds e_t * S_t with e_t = dL_t/dc_t through the heads only.
  The encoder gets the within-step gradient only.

Rollout convention (shared with the learner): inputs have T + 1 steps, the last of which is step 0
of the next rollout (its output only bootstraps); the carry after a rollout is the state after
step T - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from agent.cores.base import Core, State, chrono_forget_bias
from agent.rtrl import (VECTORS, decay_stats, derivatives, immediates, last_cell, leaf_grad, per_step_sensitivities,
                        run, segment_decay, segment_sensitivities, unroll)

RECURRENT = ("F", "Z", *VECTORS)
"""The parameters whose gradient RTRL computes (the output gate is plain backprop)."""


@dataclass
class RTRLCarry:
    """Per-stream learner state carried across rollouts: c [B, N] and dc/dtheta for each recurrent parameter.

    The segment form updates ``S`` in place: a carry is consumed by the rollout it is passed to.

    S["F"], S["Z"]: [B, N, D]; S["w_f"], S["w_z"], S["b_f"], S["b_z"]: [B, N].
    """

    c: torch.Tensor
    S: dict[str, torch.Tensor]


@dataclass
class _Record:
    """What ``learner_after_backward`` needs from the forward pass over steps 0..T-1 (all detached).

    x [T, B, D]; c_prev [T, B, N] (after resets); f, z [T, B, N]; keep [T, B, 1] (0 where the
    stream's episode starts at t); c0 the autograd leaf [B, N] (segment form); cells: the
    per-step c_t with retained grads (step form).
    """

    x: torch.Tensor
    c_prev: torch.Tensor
    f: torch.Tensor
    z: torch.Tensor
    keep: torch.Tensor
    carry: RTRLCarry
    c0: torch.Tensor | None
    cells: list[torch.Tensor]


class ELSTMCore(Core):
    def __init__(self, input_size: int, hidden_size: int, learning: str = "tbptt", rtrl_form: str = "segment",
                 chrono_max: float = 0.0):
        """``chrono_max`` > 2: chrono initialisation of the forget bias (:func:`chrono_forget_bias`)."""
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.learning, self.rtrl_form = learning, rtrl_form
        N, D = hidden_size, input_size
        bound = 1.0 / math.sqrt(D)
        self.F = nn.Parameter(torch.empty(N, D).uniform_(-bound, bound))
        self.Z = nn.Parameter(torch.empty(N, D).uniform_(-bound, bound))
        self.w_f = nn.Parameter(torch.empty(N).uniform_(-1.0, 1.0))
        self.w_z = nn.Parameter(torch.empty(N).uniform_(-1.0, 1.0))
        self.b_f = nn.Parameter(chrono_forget_bias(N, chrono_max))
        self.b_z = nn.Parameter(torch.zeros(N))
        self.out = nn.Linear(D + N, N)
        self._stats: dict[str, float] = {}

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """(c,) with c [batch_size, N]."""
        return (torch.zeros(batch_size, self.output_size, device=device, dtype=self.F.dtype),)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c, _, _ = self._cell(x, state[0], self.F, self.Z, self.w_f, self.w_z, self.b_f, self.b_z)
        return h, (c,)

    def _cell(self, x, c_prev, F, Z, w_f, w_z, b_f, b_z):
        f = torch.sigmoid(x @ F.T + w_f * c_prev + b_f)
        z = torch.tanh(x @ Z.T + w_z * c_prev + b_z)
        c = f * c_prev + (1.0 - f) * z
        h = torch.sigmoid(self.out(torch.cat([x, c], dim=-1))) * c
        return h, c, f, z

    # Learner hooks --------------------------------------------------------------------------------

    def learner_carry(self, batch_size: int, device: torch.device | str) -> RTRLCarry | None:
        if self.learning != "rtrl":
            return None
        B, N, D = batch_size, self.output_size, self.input_size
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=self.F.dtype)  # noqa: E731
        S = {"F": zeros(B, N, D), "Z": zeros(B, N, D)}
        S.update({k: zeros(B, N) for k in VECTORS})
        return RTRLCarry(c=zeros(B, N), S=S)

    def learner_unroll(self, inputs: torch.Tensor, first: torch.Tensor, rollout_state: State, carry: Any,
                       truncation: int, game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if self.learning != "rtrl":
            return super().learner_unroll(inputs, first, rollout_state, carry, truncation)
        per_step = self.rtrl_form == "step"
        # The step form keeps autograd out of the recurrent parameters: RTRL alone writes their grads.
        params = [getattr(self, k).detach() if per_step else getattr(self, k) for k in RECURRENT]
        c0 = None if per_step else carry.c.detach().requires_grad_(True)
        c = carry.c if per_step else c0
        T = inputs.shape[0] - 1
        keep = (~first).to(inputs.dtype).unsqueeze(-1)
        outputs, cells, rec = unroll(lambda t, c_prev: self._cell(inputs[t], c_prev, *params), c, keep, per_step)
        record = _Record(x=inputs[:T].detach(), keep=keep[:T], carry=carry, c0=c0, cells=cells, **rec)
        return outputs, record

    def learner_after_backward(self, record: Any) -> Any:
        if self.learning != "rtrl":
            return None
        if self.rtrl_form == "step":
            return self._per_step_rtrl(record)
        return self._segment_rtrl(record)

    def learner_stats(self) -> dict[str, float]:
        return dict(self._stats)

    def _segment_rtrl(self, r: _Record) -> RTRLCarry:
        run(self.segment_phases(r))
        return RTRLCarry(c=last_cell(r.f, r.z, r.c_prev), S=r.carry.S)

    def segment_phases(self, r: _Record) -> Iterator[str]:
        """Segment-form RTRL after the backward pass of rollout ``r``: the carried gradient into the
        recurrent parameters, the sensitivities advanced in place over the rollout (a reset at step s
        zeroes everything before s) and the telemetry; yields each phase's name once it is done
        (``bench/rtrl.py`` times them)."""
        zh, fh, J = derivatives(r.f, r.z, r.c_prev, self.w_f, self.w_z)
        yield "derivatives"
        decay, total = segment_decay(J * r.keep)
        yield "decay_cumprod"
        # Every operand is detached (no_grad would stay on in the caller between the yields).
        yield from segment_sensitivities(self._params(), r.carry.S, leaf_grad(r.c0), decay, total,
                                         immediates(zh, fh, r.c_prev), r.x)
        self._telemetry(J, r.carry.S)
        yield "telemetry"

    def _per_step_rtrl(self, r: _Record) -> RTRLCarry:
        zh, fh, J = derivatives(r.f, r.z, r.c_prev, self.w_f, self.w_z)
        with torch.no_grad():
            S = {k: v.clone() for k, v in r.carry.S.items()}
            per_step_sensitivities(self._params(), S, J * r.keep, immediates(zh, fh, r.c_prev),
                                   [c.grad for c in r.cells], r.x)
            c_T = r.cells[-1].detach()
        self._telemetry(J, S)
        return RTRLCarry(c=c_T, S=S)

    def _params(self) -> dict[str, nn.Parameter]:
        return {k: getattr(self, k) for k in RECURRENT}

    def _telemetry(self, J: torch.Tensor, S: dict[str, torch.Tensor]) -> None:
        self._stats = {**decay_stats(J),
                       "max_abs_S": max(t.abs().item() for k in ("F", "Z") for t in torch.aminmax(S[k]))}
