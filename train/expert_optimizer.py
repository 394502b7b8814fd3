"""The optimizer of the MoE core's experts: RMSprop or Adam on their records in the expert store.

The core (``agent/cores/moe_elstm.py``) computes each update's expert gradients (exact RTRL); the
learner clips them with the dense gradients (one global norm, summed over the ranks first) and
then :meth:`ExpertOptimizer.step` applies the run's ``--optimizer`` (:func:`expert_rule`) to each
expert's ``F``, ``Z`` [N, D] with that optimizer's state in the expert's store record, and refreshes
the core's replica ``expert_F``/``expert_Z`` that the forward pass computes with. The state kinds
of a record (its rule's :meth:`RMSprop.state` or :meth:`Adam.state`):

- :class:`RMSprop` (``rmsprop``, ``rmsprop-tf``), torch's (no momentum, not centred): the square
  averages ``sq_F``, ``sq_Z`` [N, D], started at 0 as torch's RMSprop or at 1 as TensorFlow's
  (``--optimizer rmsprop-tf``).
- :class:`Adam` (``adam``), torch's (bias-corrected, eps outside the square root, no weight decay,
  no amsgrad): the first moments ``m_F``, ``m_Z`` [N, D], the second moments ``sq_F``, ``sq_Z``
  [N, D] and the expert's own step count ``step`` (a 0-d int64). An expert is stepped only at the
  updates that apply a gradient of its (lazy RTRL), so its bias correction follows its own count,
  as torch's Adam does for a parameter that has no gradient at some steps.

Before a checkpoint, :meth:`ExpertOptimizer.flush` applies every pending gradient (the lazy
gradients of experts no rollout activated since) with the same rule, so that none is lost with the
learner's carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.cores.moe_elstm import MoECarry, MoEELSTMCore
from storage.slab import Record
from train.config import ADAM_BETAS, ADAM_EPS, LearnerConfig


@dataclass(frozen=True)
class RMSprop:
    """torch's RMSprop with smoothing constant ``alpha`` and ``eps`` (outside the square root), its
    square averages started at ``square_init``."""

    alpha: float
    eps: float
    square_init: float = 0.0

    def state(self, shape: tuple[int, int], dtype: torch.dtype) -> Record:
        """An expert's initial state: ``sq_F``, ``sq_Z`` of ``shape`` [N, D], all ``square_init``."""
        return {key: torch.full(shape, self.square_init, dtype=dtype) for key in ("sq_F", "sq_Z")}

    def update(self, r: Record, grads: list[torch.Tensor], lr: float) -> None:
        """One step of ``r``'s ``F``, ``Z`` [N, D] by their gradients ``grads`` [grad F, grad Z], in place."""
        for key, g in zip("FZ", grads):
            sq = r[f"sq_{key}"]
            sq.mul_(self.alpha).addcmul_(g, g, value=1.0 - self.alpha)
            r[key].addcdiv_(g, sq.sqrt().add_(self.eps), value=-lr)


@dataclass(frozen=True)
class Adam:
    """torch's Adam (``torch.optim.Adam`` with ``betas``, ``eps``, no weight decay, no amsgrad), with
    one step count per expert."""

    betas: tuple[float, float] = ADAM_BETAS
    eps: float = ADAM_EPS

    def state(self, shape: tuple[int, int], dtype: torch.dtype) -> Record:
        """An expert's initial state: zero moments ``m_F``, ``m_Z``, ``sq_F``, ``sq_Z`` of ``shape``
        [N, D] and a zero step count ``step`` (0-d int64)."""
        moments = {key: torch.zeros(shape, dtype=dtype) for key in ("m_F", "m_Z", "sq_F", "sq_Z")}
        return {**moments, "step": torch.zeros((), dtype=torch.int64)}

    def update(self, r: Record, grads: list[torch.Tensor], lr: float) -> None:
        """One step of ``r``'s ``F``, ``Z`` [N, D] by their gradients ``grads`` [grad F, grad Z], in
        place; the expert's count ``r["step"]`` goes up by one and sets the bias corrections (the
        operations of torch's single-tensor Adam)."""
        beta1, beta2 = self.betas
        step = int(r["step"].add_(1))
        step_size = lr / (1.0 - beta1 ** step)
        bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
        for key, g in zip("FZ", grads):
            m, v = r[f"m_{key}"], r[f"sq_{key}"]
            m.lerp_(g, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            r[key].addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(self.eps), value=-step_size)


ExpertRule = RMSprop | Adam
"""An expert update rule: its record state (``state``) and its in-place step (``update``)."""


def expert_rule(lc: LearnerConfig) -> ExpertRule:
    """The experts' rule for ``--optimizer``: the dense weights' optimizer (``train/learner.py``'s
    ``make_optimizer``) with the same constants."""
    if lc.optimizer == "adam":
        return Adam()
    return RMSprop(lc.rmsprop_alpha, lc.rmsprop_eps, square_init=1.0 if lc.optimizer == "rmsprop-tf" else 0.0)


class ExpertOptimizer:
    """``rule`` (:class:`RMSprop` or :class:`Adam`) for the experts of ``core``'s store."""

    def __init__(self, core: MoEELSTMCore, rule: ExpertRule, evict_after_use: bool = False) -> None:
        """``evict_after_use`` (``--prefetch none``): no expert stays in hbm between updates. The
        ranks that agree on the pending experts and sum their gradients (:meth:`flush`) are the
        core's own ``collectives``, so the two cannot disagree."""
        self.core, self.rule = core, rule
        self.evict_after_use, self.collectives = evict_after_use, core.collectives

    def step(self, lr: float) -> None:
        """The rule's step on the latest pass's experts (``core.expert_grads``, clipped by the
        learner) in their hbm records; refresh the replica; release them dirty."""
        grads = self.core.expert_grads
        with torch.no_grad():
            # Reverse order: the chunk the core's pass brought in last is still in hbm.
            self._apply(list(reversed(grads)), grads, lr)
        if self.evict_after_use:
            self.core.store.evict(list(grads))

    def flush(self, carry: MoECarry, lr: float, clip: float) -> int:
        """Apply every pending gradient now (before a checkpoint, so none is lost with the carry),
        summed over the ranks and clipped to ``clip`` global norm like an update. Returns how many
        experts had one."""
        grads = self.core.pending_gradients(carry, self.collectives.agree(self.core.pending_experts()))
        flat = [g for pair in grads.values() for g in pair]
        with torch.no_grad():
            self.collectives.all_reduce_sum(flat)
            if flat:
                scale = min(1.0, clip / (float(torch.nn.utils.get_total_norm(flat)) + 1e-6))
                for g in flat:
                    g.mul_(scale)
            self._apply(list(grads), grads, lr)
        return len(grads)

    def _apply(self, order: list[int], grads: dict[int, list[torch.Tensor]], lr: float) -> None:
        """The rule's step on the experts ``order`` (their gradients [grad F, grad Z] [N, D] in
        ``grads``), streamed through hbm in chunks."""
        core = self.core
        for ids, records in core.hbm_chunks(order):
            for e, r in zip(ids, records):
                self.rule.update(r, grads[e], lr)
                core.expert_F[e].copy_(r["F"])
                core.expert_Z[e].copy_(r["Z"])
            core.store.release(ids, dirty=True)
