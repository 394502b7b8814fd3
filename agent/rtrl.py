"""The sensitivity mathematics of exact RTRL for element-wise recurrences (the eLSTM and MoE eLSTM cores).

Both cores share the cell (``agent/cores/elstm.py``'s docstring has the equations): its decay
J = dc_t/dc_{t-1} [B, N] is diagonal, so every sensitivity S = dc/dtheta of a recurrent parameter
obeys, per step,
    S <- J * S + imm                       vector parameters (w_f, w_z, b_f, b_z): S [B, N]
    S <- J * S + imm (x) x                 matrix parameters (F, Z or one expert's): S [B, N, D]
with ``imm`` the immediate dc/dtheta [B, N] (:func:`immediates`) and x [B, D] the step's input
(gate-weighted for an expert). A reset zeroes J at the step where a stream's episode starts
(``Jk = J * keep``). A gradient is a contraction sum_b e[b] * S[b] (:func:`contract`) with e = dL/dc.

Two forms of the same update:
  segment: over a whole rollout at once from the reverse cumulative product of Jk (:func:`segment_decay`),
      S_T = (prod_t Jk_t) * S_0 + sum_t (prod_{t<s<T} Jk_s) * imm_t (x) x_t,
    after adding the carried gradient e_0 . S_0 (:func:`segment_sensitivities`);
  per step: the step rule above with e_t . S_t added after every step (:func:`per_step_sensitivities`).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

VECTORS = ("w_f", "w_z", "b_f", "b_z")
"""The recurrent vector parameters [N] whose sensitivities are [B, N] (both cores have them)."""


def unroll(cell: Callable[[int, torch.Tensor], tuple[torch.Tensor, ...]], c: torch.Tensor, keep: torch.Tensor,
           per_step: bool) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    """The learner's pass over a rollout of T + 1 steps for both RTRL forms.

    ``cell(t, c_prev) -> (h, c, f, z)``; ``c`` [B, N] the carried cell (the autograd leaf c_0 in the
    segment form); ``keep`` [T + 1, B, 1] zero where a stream's episode starts. Returns the outputs
    [T + 1, B, N], the per-step cells with retained grads (per-step form, steps 0..T-1) and the
    detached ``c_prev``, ``f``, ``z`` [T, B, N] that the sensitivity update needs. In the per-step
    form a fresh leaf per step cuts the recurrence and makes c_t part of the graph, so autograd
    yields e_t = dL_t/dc_t through the heads only.
    """
    T = keep.shape[0] - 1
    outputs, cells, rec = [], [], {"c_prev": [], "f": [], "z": []}
    for t in range(T + 1):
        c_prev = (c.detach().requires_grad_() if per_step else c) * keep[t]
        h, c, f, z = cell(t, c_prev)
        outputs.append(h)
        if t < T:
            if per_step:
                c.retain_grad()
                cells.append(c)
            for k, v in (("c_prev", c_prev), ("f", f), ("z", z)):
                rec[k].append(v.detach())
    return torch.stack(outputs), cells, {k: torch.stack(v) for k, v in rec.items()}


def derivatives(f: torch.Tensor, z: torch.Tensor, c_prev: torch.Tensor, w_f: torch.Tensor, w_z: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """zh, fh (immediate dc/d(preactivation)) and the decay J = dc/dc_prev, each shaped like ``f``."""
    with torch.no_grad():
        zh = (1.0 - f) * (1.0 - z ** 2)
        fh = (c_prev - z) * f * (1.0 - f)
        J = f + w_z * zh + w_f * fh
    return zh, fh, J


def last_cell(f: torch.Tensor, z: torch.Tensor, c_prev: torch.Tensor) -> torch.Tensor:
    """The cell after the rollout's last step, c = f * c_prev + (1 - f) * z, from its [T, B, N] records: [B, N]."""
    return f[-1] * c_prev[-1] + (1.0 - f[-1]) * z[-1]


def immediates(zh: torch.Tensor, fh: torch.Tensor, c_prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """The immediate dc/dtheta per parameter, each [..., B, N] like ``zh``: ``F`` and ``Z`` (to be taken
    outer with the input x) and the four :data:`VECTORS`."""
    return {"F": fh, "Z": zh, "w_f": fh * c_prev, "w_z": zh * c_prev, "b_f": fh, "b_z": zh}


def segment_decay(Jk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jk [T, B, N] (J with resets as zeros) -> (decay [T, B, N], total [B, N]):
    ``decay[t] = prod_{t < s < T} Jk[s]`` (reverse cumulative product, never a division) and
    ``total = prod_t Jk[t] = dc_T/dc_0``."""
    decay = torch.ones_like(Jk)
    if Jk.shape[0] > 1:
        decay[:-1] = torch.flip(torch.cumprod(torch.flip(Jk[1:], [0]), 0), [0])
    return decay, Jk.prod(0)


def contract(e: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """sum_b e[b] * S[b]: e [B, N], S [B, N, D] -> [N, D] or S [B, N] -> [N] (a gradient from dL/dc)."""
    return torch.einsum("bn,bnd->nd", e, S) if S.dim() == 3 else (e * S).sum(0)


def step_update(S: torch.Tensor, Jk: torch.Tensor, imm: torch.Tensor, x: torch.Tensor | None = None) -> None:
    """One step, in place: S <- Jk * S + imm, or with ``x`` [B, D] (S [B, N, D]) S <- Jk * S + imm (x) x."""
    if x is None:
        S.mul_(Jk).add_(imm)
    else:
        S.mul_(Jk.unsqueeze(-1)).add_(imm.unsqueeze(-1) * x.unsqueeze(1))


def segment_sensitivities(params: dict[str, torch.Tensor], S: dict[str, torch.Tensor], e0: torch.Tensor,
                          decay: torch.Tensor, total: torch.Tensor, imms: dict[str, torch.Tensor],
                          x: torch.Tensor) -> Iterator[str]:
    """Segment form over one rollout: add the carried gradient e0 . S_0 to each ``params[k].grad``, then
    advance every ``S[k]`` in place to the rollout's end.

    ``S`` [B, N] (vectors) or [B, N, D] (matrices); ``e0`` [B, N] dL/dc_0; ``decay`` [T, B, N] and
    ``total`` [B, N] from :func:`segment_decay`; ``imms[k]`` [T, B, N]; ``x`` [T, B, D]. A generator
    that yields the name of each phase once it is done, so that ``bench/rtrl.py`` times the phases of
    this very code; :func:`run` drains it."""
    for k, s in S.items():
        add_grad(params[k], contract(e0, s))
    yield "carried_grad"
    matrices = [k for k, s in S.items() if s.dim() == 3]
    for k in matrices:
        S[k].mul_(total.unsqueeze(-1))
    yield "S_decay"
    x_btd = x.transpose(0, 1)
    for k in matrices:  # [B, N, T] x [B, T, D], added in place: a fresh [B, N, D] per rollout costs more
        S[k].baddbmm_((decay * imms[k]).permute(1, 2, 0), x_btd)
    yield "S_bmm"
    for k, s in S.items():
        if s.dim() == 2:
            s.mul_(total).add_((decay * imms[k]).sum(0))
    yield "vector_S"


def run(phases: Iterator[str]) -> None:
    """Run a phase generator (:func:`segment_sensitivities`) to its end."""
    for _ in phases:
        pass


def per_step_sensitivities(params: dict[str, torch.Tensor], S: dict[str, torch.Tensor], Jk: torch.Tensor,
                           imms: dict[str, torch.Tensor], cell_grads: Sequence[torch.Tensor | None],
                           x: torch.Tensor | None = None) -> None:
    """Per-step form over one rollout: S advanced in place step by step, and sum_t e_t . S_t added to
    each ``params[k].grad``.

    ``S``, ``imms`` as in :func:`segment_sensitivities` (matrices need ``x`` [T, B, D]); ``Jk`` [T, B, N];
    ``cell_grads[t]`` e_t = dL_t/dc_t [B, N] through the heads only, None where no loss reached c_t."""
    grads = {k: torch.zeros_like(params[k]) for k in S}
    for t in range(Jk.shape[0]):
        for k, s in S.items():
            step_update(s, Jk[t], imms[k][t], x[t] if s.dim() == 3 else None)
        e = cell_grads[t]
        if e is None:
            continue
        for k, s in S.items():
            grads[k] += contract(e, s)
    for k, g in grads.items():
        add_grad(params[k], g)


def decay_stats(J: torch.Tensor) -> dict[str, float]:
    """Stability figures of a rollout's decays J: the largest |J| and the share of |J| above 1."""
    return {"max_abs_J": J.abs().max().item(), "frac_J_gt_1": (J.abs() > 1.0).float().mean().item()}


def leaf_grad(t: torch.Tensor) -> torch.Tensor:
    """dL/dt of a tensor whose grad autograd kept (zeros if no loss reached it)."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def add_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Accumulate ``grad`` into ``param.grad`` as autograd would."""
    if param.grad is None:
        param.grad = grad.clone()
    else:
        param.grad.add_(grad)
