"""The optimizer of the MoE core's experts: RMSprop on their records in the expert store.

The core (``agent/cores/moe_elstm.py``) computes each update's expert gradients (exact RTRL); the
learner clips them with the dense gradients (one global norm, summed over the ranks first) and
then :meth:`ExpertOptimizer.step` applies torch's RMSprop (no momentum, not centred) to each
expert's ``F``, ``Z`` with its square averages ``sq_F``, ``sq_Z`` in the store, and refreshes the
core's replica ``expert_F``/``expert_Z`` that the forward pass computes with. The square averages
start at 0 as torch's RMSprop or at 1 as TensorFlow's (``--optimizer rmsprop-tf``; :func:`square_init`).

Before a checkpoint, :meth:`ExpertOptimizer.flush` applies every pending gradient (the lazy
gradients of experts no rollout activated since), so that none is lost with the learner's carry.
"""

from __future__ import annotations

import torch

from agent.cores.moe_elstm import MoECarry, MoEELSTMCore
from train.config import LearnerConfig


def square_init(lc: LearnerConfig) -> float:
    """The experts' initial RMSprop square average: 1 for ``--optimizer rmsprop-tf``, else 0."""
    return 1.0 if lc.optimizer == "rmsprop-tf" else 0.0


class ExpertOptimizer:
    """RMSprop for the experts of ``core``'s store, with smoothing constant ``alpha`` and ``eps``."""

    def __init__(self, core: MoEELSTMCore, alpha: float, eps: float, evict_after_use: bool = False) -> None:
        """``evict_after_use`` (``--prefetch none``): no expert stays in hbm between updates. The
        ranks that agree on the pending experts and sum their gradients (:meth:`flush`) are the
        core's own ``collectives``, so the two cannot disagree."""
        self.core, self.alpha, self.eps = core, alpha, eps
        self.evict_after_use, self.collectives = evict_after_use, core.collectives

    def step(self, lr: float) -> None:
        """RMSprop on the latest pass's experts (``core.expert_grads``, clipped by the learner) in
        their hbm records; refresh the replica; release them dirty."""
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
        """RMSprop on the experts ``order`` (their gradients [grad F, grad Z] [N, D] in ``grads``),
        streamed through hbm in chunks."""
        core = self.core
        for ids, records in core.hbm_chunks(order):
            for e, r in zip(ids, records):
                for key, sq, g, replica in (("F", "sq_F", grads[e][0], core.expert_F),
                                            ("Z", "sq_Z", grads[e][1], core.expert_Z)):
                    r[sq].mul_(self.alpha).addcmul_(g, g, value=1.0 - self.alpha)
                    r[key].addcdiv_(g, r[sq].sqrt().add_(self.eps), value=-lr)
                    replica[e].copy_(r[key])
            core.store.release(ids, dirty=True)
