"""Mixture-of-Experts eLSTM whose experts are trained by exact, lazy RTRL out of the expert store.

Forward (x [B, D] the step's input; experts are the input projections):
    (idx, g) = router(x)                              top-k experts idx [B, k], gates g [B, k] (agent/router.py)
    f = sigmoid(sum_j g_j F_{idx_j} x + w_f * c_prev + b_f)      F_e, Z_e: [N, D]; w_*, b_*: [N] shared
    z = tanh   (sum_j g_j Z_{idx_j} x + w_z * c_prev + b_z)
    c = f * c_prev + (1 - f) * z;   h = sigmoid(O [x; c] + b_o) * c
The router reads x, never c_prev, so dc_t/dc_{t-1} stays diagonal (J as in ``agent/cores/elstm.py``)
and expert e's sensitivity S_e = dc/dF_e [B, N, D] obeys
    S_e <- J * S_e + fh (x) (G_e x),     G_e[b] = the gate of e in stream b (0 if not routed).

Lazy sensitivities (docs/design.md). An expert that no stream routes to only decays, S_e <- J * S_e, so
each expert keeps its stored (materialised) sensitivity S~_e in the expert store and two [B, N]
vectors here: the true sensitivity is rho_e * S~_e and its not-yet-applied gradient is
gamma_e . S~_e. Per rollout (segment form) an idle expert costs O(B N):
    gamma_e += rho_e * dL/dc_0;   rho_e *= dc_T/dc_0
and on activation (or a flush) it is materialised:
    grad_e += sum_b gamma_e[b, :, None] * S~_e[b];   S~_e <- rho_e[..., None] * S~_e;   rho_e <- 1;  gamma_e <- 0.
So a rollout costs O(E B N) for all experts plus O(k-ish B N T D) for the active ones, and cold
experts' parameters, optimizer state and sensitivities stay in dram or on NVMe. A cold expert's
pending gradient is applied at the update that next activates it (or at a flush before a
checkpoint, :meth:`MoEELSTMCore.pending_gradients`) in the segment form; in the per-step form the
steps after its last routing in a rollout stay pending into later updates (the totals are exact).
The delay in updates is the ``pending_delay`` of :meth:`MoEELSTMCore.learner_stats`. ``lazy=False`` (eager) materialises
every expert on every rollout: the same gradients in total, at a cost linear in E.

Segment form (training): autograd runs BPTT inside the rollout from a leaf c_0; the experts'
within-rollout gradient comes from dL/d(preactivation) [T, B, N] (kept by autograd) as
sum_{t,b} G_e[t,b] * dL/dpre[t,b] (x) x[t,b]; then :meth:`learner_after_backward` adds the carried
terms (dL/dc_0 . S) and advances every sensitivity over the whole rollout with the reverse
cumulative product of J (``segment_decay``; the shared update rules are ``agent/rtrl.py``'s). Per-step form (the
reference): the recurrence is cut after every step, autograd writes nothing into the experts or the
shared recurrent vectors, and the sensitivities are updated step by step with the same lazy rule
per step. The router and everything below the core get the within-rollout (segment) or
within-step (per-step) gradient; the output gate gets plain backprop.

Out of core. The forward pass (actor and learner) computes with the parameter replica, the buffers
``expert_F``/``expert_Z`` [E, N, D] (published to the actor thread with the rest of the state dict
after every update, and saved in checkpoints). Everything else about an expert lives in the store
(``storage/expert_store.py``; its record is ``train/experts.py``'s ``expert_spec``): ``F``, ``Z``,
their optimizer state (RMSprop's square averages ``sq_F``, ``sq_Z``, or Adam's moments and step
count) and the sensitivities ``S_F``, ``S_Z`` [B, N, D] of the learner's B streams, B + 2 (Adam:
B + 3) times the parameters. This core reads and writes only the
sensitivities; the expert optimizer (``train/expert_optimizer.py``) owns the rest and refreshes the
replica. After the backward pass the experts of the rollout stream through hbm in chunks of at
most the hbm capacity (:meth:`MoEELSTMCore.hbm_chunks`), twice per update: once here to fold in
their lazy vectors, form their gradients and advance their sensitivities, once in the optimizer
(after the global gradient-norm clip, which needs every gradient) for the optimizer step. So hbm need
not hold a rollout's experts at once; when it does, the second pass is all hits.

Data-parallel runs (``train/distributed.py``) hand the core a :class:`Collectives` at construction:
the ranks agree on the experts each pass materialises and sum the routing counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from agent.cores.base import Core, State, chrono_forget_bias
from agent.router import Router
from agent.rtrl import (VECTORS, contract, decay_stats, derivatives, immediates, last_cell, leaf_grad,
                        per_step_sensitivities, run, segment_decay, segment_sensitivities, step_update, unroll)
from storage.expert_store import ExpertStore

SENSITIVITIES = {"F": "S_F", "Z": "S_Z"}
"""The expert parameters and the keys of their sensitivities [B, N, D] in a store record."""


def _alone(ids: list[int]) -> list[int]:
    return sorted(set(ids))


def _no_reduce(tensors: list[torch.Tensor]) -> None:
    return None


@dataclass(frozen=True)
class Collectives:
    """How the ranks of a data-parallel run combine the MoE learner's figures (``train/distributed.py``'s
    World supplies them); the defaults are those of a process alone."""

    agree: Callable[[list[int]], list[int]] = _alone
    """Expert ids -> the sorted union of every rank's ids (all ranks then materialise and update these)."""
    all_reduce_sum: Callable[[list[torch.Tensor]], None] = _no_reduce
    """Sum the tensors over the ranks, in place (the same order on every rank)."""


@dataclass
class MoECarry:
    """Learner state per stream carried across rollouts.

    c [B, N]; S: dense sensitivities of the shared vectors, each [B, N]; rho, gamma [E, B, N]: the
    lazy decay and pending-gradient vectors of every expert (module docstring).
    """

    c: torch.Tensor
    S: dict[str, torch.Tensor]
    rho: torch.Tensor
    gamma: torch.Tensor


@dataclass
class _Pass:
    """One learner pass: what ``learner_after_backward`` needs (detached unless noted)."""

    x: torch.Tensor          # [T, B, D]
    c_prev: torch.Tensor     # [T, B, N] after resets
    f: torch.Tensor
    z: torch.Tensor
    keep: torch.Tensor       # [T, B, 1]
    G: torch.Tensor          # [T, B, E] gate of each expert (0 where not routed)
    routed: list[int]        # experts routed at some step 0..T-1
    experts: list[int]       # experts this pass materialises: routed on any rank (the agreed union), or all if eager
    carry: MoECarry
    c0: torch.Tensor | None  # autograd leaf (segment form)
    pre: tuple[torch.Tensor, torch.Tensor] | None  # preactivations [T+1, B, N] with grads kept (segment form)
    cells: list[torch.Tensor] = field(default_factory=list)  # c_t with retained grads (per-step form)
    aux: torch.Tensor | None = None
    grads: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # expert -> [grad F, grad Z]
    decay: torch.Tensor | None = None  # [T, B, N] prod_{t<s<T} J_s (segment_decay), set after backward
    total: torch.Tensor | None = None  # [B, N] dc_T/dc_0


class MoEELSTMCore(Core):
    def __init__(self, input_size: int, hidden_size: int, num_experts: int, top_k: int, routing: str,
                 schedule: list[int], num_games: int, rtrl_form: str = "segment", lazy: bool = True,
                 balance_cost: float = 0.01, collectives: Collectives = Collectives(), chrono_max: float = 0.0) -> None:
        """``schedule``: the run's game ids in stage order (game routing, per-game statistics);
        ``collectives``: the ranks of a data-parallel run (default: this process alone);
        ``chrono_max`` > 2: chrono initialisation of the forget bias (:func:`chrono_forget_bias`)."""
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.num_experts, self.top_k = num_experts, top_k
        self.rtrl_form, self.lazy, self.balance_cost = rtrl_form, lazy, balance_cost
        self.collectives = collectives
        N, D, E = hidden_size, input_size, num_experts
        bound = 1.0 / math.sqrt(D)
        self.w_f = nn.Parameter(torch.empty(N).uniform_(-1.0, 1.0))
        self.w_z = nn.Parameter(torch.empty(N).uniform_(-1.0, 1.0))
        self.b_f = nn.Parameter(chrono_forget_bias(N, chrono_max))
        self.b_z = nn.Parameter(torch.zeros(N))
        self.out = nn.Linear(D + N, N)
        self.router = Router(D, E, top_k, routing, schedule, num_games)
        self.register_buffer("expert_F", torch.empty(E, N, D).uniform_(-bound, bound))
        self.register_buffer("expert_Z", torch.empty(E, N, D).uniform_(-bound, bound))
        self.store: ExpertStore | None = None
        self.pin_reserve = 0
        # Experts idx [T, B, k] of the latest forward pass (evaluation demands them from the store).
        self.last_routing: torch.Tensor | None = None
        self.expert_grads: dict[int, list[torch.Tensor]] = {}
        """The latest pass's expert gradients {e: [grad F, grad Z]} [N, D] (for the expert optimizer)."""
        self.updates = 0  # learner passes so far: the clock of the pending gradients' delays
        self._pending_since = [-1] * E
        self._has_sensitivity = [False] * E
        self._delays: list[int] = []
        self._stats: dict[str, float] = {}
        # Routing counts [schedule games, E] of the learner's rollouts, decayed by 0.99 per update
        # (train/expert_metrics.py); a buffer so that checkpoints keep it.
        self.register_buffer("usage", torch.zeros(int(self.router.game_slot.max()) + 1, E, dtype=torch.float64))

    # ------------------------------------------------------------------------------------- store
    def attach_store(self, store: ExpertStore, pin_reserve: int = 0) -> None:
        """Learn with the experts' sensitivities in ``store`` (``train/experts.py`` creates and opens it).

        ``pin_reserve``: the hbm slots a prefetcher in another thread (the actor's) may pin at any
        moment, left free by :meth:`hbm_chunks`."""
        self.store, self.pin_reserve = store, pin_reserve

    def hbm_chunks(self, experts: list[int]) -> Iterator[tuple[list[int], list[dict[str, torch.Tensor]]]]:
        """(ids, hbm records) for consecutive chunks of ``experts`` that fit in hbm; the caller releases them.

        A chunk leaves room for every pin that may come while it is held: the pins now, or the
        ``pin_reserve`` a prefetcher in another thread may pin at any moment."""
        size = max(1, self.store.hbm_capacity - max(self.store.pinned_count, self.pin_reserve))
        for start in range(0, len(experts), size):
            ids = experts[start:start + size]
            yield ids, self.store.get(ids)

    # ------------------------------------------------------------------------------------- acting
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return (torch.zeros(batch_size, self.output_size, device=device, dtype=self.w_f.dtype),)

    def step(self, x: torch.Tensor, state: State, game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.forward(x.unsqueeze(0), torch.zeros(1, x.shape[0], dtype=torch.bool, device=x.device),
                                  state, None if game_id is None else game_id.unsqueeze(0))
        return out[0], state

    def forward(self, inputs: torch.Tensor, first: torch.Tensor, state: State,
                game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """inputs [T, B, D] -> outputs [T, B, N], acting with the replica ``expert_F``/``expert_Z``."""
        idx, gates, _ = self.router(inputs, game_id)
        self.last_routing = idx
        pre_F, pre_Z = self._preacts(inputs, idx, gates)
        keep = (~first).to(inputs.dtype).unsqueeze(-1)
        c = state[0]
        outputs = []
        for t in range(inputs.shape[0]):
            h, c, _, _ = self._cell(inputs[t], c * keep[t], pre_F[t], pre_Z[t], self.w_f, self.w_z, self.b_f, self.b_z)
            outputs.append(h)
        return torch.stack(outputs), (c,)

    def _preacts(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_j g_j F_{idx_j} x and the same for Z: x [..., D], idx/gates [..., k] -> two [..., N].

        One matmul per routed expert over just the rows routed to it, so the cost follows the
        routing slots, not the number of experts."""
        lead, D = x.shape[:-1], x.shape[-1]
        xf, idxf, gf = x.reshape(-1, D), idx.reshape(-1, idx.shape[-1]), gates.reshape(-1, idx.shape[-1])
        pre_F = xf.new_zeros(xf.shape[0], self.output_size)
        pre_Z = xf.new_zeros(xf.shape[0], self.output_size)
        for e in torch.unique(idxf).tolist():
            rows, slot = torch.nonzero(idxf == e, as_tuple=True)
            g, xr = gf[rows, slot].unsqueeze(-1), xf[rows]
            pre_F = pre_F.index_add(0, rows, g * (xr @ self.expert_F[e].T))
            pre_Z = pre_Z.index_add(0, rows, g * (xr @ self.expert_Z[e].T))
        return pre_F.reshape(*lead, -1), pre_Z.reshape(*lead, -1)

    def _cell(self, x, c_prev, pre_F, pre_Z, w_f, w_z, b_f, b_z):
        f = torch.sigmoid(pre_F + w_f * c_prev + b_f)
        z = torch.tanh(pre_Z + w_z * c_prev + b_z)
        c = f * c_prev + (1.0 - f) * z
        h = torch.sigmoid(self.out(torch.cat([x, c], dim=-1))) * c
        return h, c, f, z

    # ------------------------------------------------------------------------------------- learner hooks
    def learner_carry(self, batch_size: int, device: torch.device | str) -> MoECarry:
        B, N, E = batch_size, self.output_size, self.num_experts
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=self.w_f.dtype)  # noqa: E731
        return MoECarry(c=zeros(B, N), S={k: zeros(B, N) for k in VECTORS},
                        rho=torch.ones(E, B, N, device=device, dtype=self.w_f.dtype), gamma=zeros(E, B, N))

    def learner_unroll(self, inputs: torch.Tensor, first: torch.Tensor, rollout_state: State, carry: MoECarry,
                       truncation: int, game_id: torch.Tensor | None = None) -> tuple[torch.Tensor, _Pass]:
        if self.store is None:
            raise RuntimeError("the MoE core learns with its experts in a store: call attach_store first")
        per_step = self.rtrl_form == "step"
        T, B = inputs.shape[0] - 1, inputs.shape[1]
        idx, gates, probs = self.router(inputs, game_id)
        # The replica is a buffer: autograd reaches x and the gates, never the experts themselves.
        pre_F, pre_Z = self._preacts(inputs, idx, gates)
        pre = None if per_step else (_keep_grad(pre_F), _keep_grad(pre_Z))
        vec = [getattr(self, k).detach() if per_step else getattr(self, k) for k in VECTORS]
        c0 = None if per_step else carry.c.detach().requires_grad_(True)
        c = carry.c if per_step else c0
        keep = (~first).to(inputs.dtype).unsqueeze(-1)
        outputs, cells, rec = unroll(lambda t, c_prev: self._cell(inputs[t], c_prev, pre_F[t], pre_Z[t], *vec),
                                     c, keep, per_step)
        G = torch.zeros(T, B, self.num_experts, dtype=inputs.dtype, device=inputs.device)
        G.scatter_add_(-1, idx[:T], gates[:T].detach())
        routed = torch.unique(idx[:T]).tolist()
        aux = self.router.balance_loss(idx[:T].reshape(T * B, -1),
                                       None if probs is None else probs[:T].reshape(T * B, -1),
                                       None if game_id is None else game_id[:T].reshape(-1),
                                       self.collectives.all_reduce_sum)
        self._count_usage(idx[:T], None if game_id is None else game_id[:T])
        p = _Pass(x=inputs[:T].detach(), keep=keep[:T], G=G, routed=routed,
                  experts=self.collectives.agree(routed) if self.lazy else list(range(self.num_experts)),
                  carry=carry, c0=c0, pre=pre, cells=cells, aux=None if aux is None else self.balance_cost * aux, **rec)
        return outputs, p

    def learner_aux_loss(self, context: _Pass) -> torch.Tensor | None:
        return context.aux

    def learner_after_backward(self, p: _Pass) -> MoECarry:
        zh, fh, J = derivatives(p.f, p.z, p.c_prev, self.w_f, self.w_z)
        p.decay, p.total = segment_decay(J * p.keep)
        imms = immediates(zh, fh, p.c_prev)
        self._delays = []
        step = self._step_experts if self.rtrl_form == "step" else self._segment_experts
        with torch.no_grad():
            carry = self._vectors(p, J, imms)
            for ids, records in self.hbm_chunks(p.experts):
                for e, r in zip(ids, records):
                    pending = self._materialize(e, r, p.carry)
                    p.grads[e] = step(p, e, r, J, imms, pending)
                self.store.release(ids, dirty=True)
            self._idle_experts(p, J)
        for e in p.routed:
            self._has_sensitivity[e] = True
        if self.rtrl_form == "step":  # an expert can end the rollout with lazy vectors of its own
            lazy = ((carry.rho != 1.0).any((1, 2)) | (carry.gamma != 0.0).any((1, 2))).tolist()
        else:  # every expert not materialised by this pass
            done = set(p.experts)
            lazy = [e not in done for e in range(self.num_experts)]
        for e in range(self.num_experts):
            if lazy[e] and self._has_sensitivity[e] and self._pending_since[e] < 0:
                self._pending_since[e] = self.updates
        self._stats.update({**decay_stats(J), "active_experts": float(len(p.routed)),
                            "agreed_experts": float(len(p.experts)),
                            "pending_experts": float(len(self.pending_experts()))})
        if self._delays:  # mean wait, in updates, of the pending gradients this pass applied
            self._stats["pending_delay"] = sum(self._delays) / len(self._delays)
        self.expert_grads = p.grads
        self.updates += 1
        return carry

    def learner_grads(self) -> list[torch.Tensor]:
        """The experts' gradients of the latest pass, to be clipped (in place) with the dense ones."""
        return [g for pair in self.expert_grads.values() for g in pair]

    def pending_experts(self) -> list[int]:
        """The experts with a gradient not yet materialised (lazy vectors over a stored sensitivity)."""
        return [e for e in range(self.num_experts) if self._pending_since[e] >= 0]

    def pending_gradients(self, carry: MoECarry, experts: list[int] | None = None) -> dict[int, list[torch.Tensor]]:
        """Materialise ``experts`` (default: :meth:`pending_experts`) and return their pending
        gradients ``{e: [grad F, grad Z]}``; their sensitivities are then exact as stored."""
        todo = self.pending_experts() if experts is None else experts
        grads = {}
        with torch.no_grad():
            for ids, records in self.hbm_chunks(todo):
                for e, r in zip(ids, records):
                    grads[e] = list(self._materialize(e, r, carry))
                self.store.release(ids, dirty=True)
        return grads

    def learner_stats(self) -> dict[str, float]:
        """``max_abs_J``, ``frac_J_gt_1`` (the latest rollout's decays), ``active_experts`` (routed),
        ``agreed_experts`` (materialised), ``pending_experts`` and, when the latest pass applied
        pending gradients, their mean ``pending_delay`` in updates."""
        return dict(self._stats)

    # ------------------------------------------------------------------------------------- RTRL
    def _materialize(self, e: int, record: dict[str, torch.Tensor], carry: MoECarry) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold expert e's lazy vectors into its stored sensitivities; returns its pending gradient."""
        gamma, rho = carry.gamma[e], carry.rho[e]
        gF, gZ = (contract(gamma, record[key]) for key in SENSITIVITIES.values())
        for key in SENSITIVITIES.values():
            record[key].mul_(rho.unsqueeze(-1))
        rho.fill_(1.0)
        gamma.zero_()
        if self._pending_since[e] >= 0:
            self._delays.append(self.updates - self._pending_since[e])
            self._pending_since[e] = -1
        return gF, gZ

    def _vectors(self, p: _Pass, J: torch.Tensor, imms: dict[str, torch.Tensor]) -> MoECarry:
        """Gradients and sensitivities of the shared recurrent vectors (as the dense eLSTM); the new carry."""
        params = {k: getattr(self, k) for k in VECTORS}
        if self.rtrl_form == "step":
            per_step_sensitivities(params, p.carry.S, J * p.keep, imms, [c.grad for c in p.cells])
            c_T = p.cells[-1].detach()
        else:
            run(segment_sensitivities(params, p.carry.S, leaf_grad(p.c0), p.decay, p.total, imms, p.x))
            c_T = last_cell(p.f, p.z, p.c_prev)
        return MoECarry(c=c_T, S=p.carry.S, rho=p.carry.rho, gamma=p.carry.gamma)

    def _segment_experts(self, p: _Pass, e: int, r: dict[str, torch.Tensor], J: torch.Tensor,
                         imms: dict[str, torch.Tensor], pending: tuple[torch.Tensor, torch.Tensor]
                         ) -> list[torch.Tensor]:
        """Expert e's gradient for this rollout (pending + carried + within-rollout) and its sensitivities
        advanced to the rollout's end, in place in its record."""
        e0, decay, total = leaf_grad(p.c0), p.decay, p.total
        T = p.x.shape[0]
        gate = p.G[:, :, e]  # [T, B]
        grads = []
        for j, (name, key) in enumerate(SENSITIVITIES.items()):
            g = pending[j] + contract(e0, r[key])
            dpre = leaf_grad(p.pre[j])[:T]  # [T, B, N]
            if gate.any():
                rows = gate != 0
                g += (gate[rows].unsqueeze(-1) * dpre[rows]).T @ p.x[rows]
                gx = gate.T.unsqueeze(-1) * p.x.transpose(0, 1)  # [B, T, D]
                r[key].mul_(total.unsqueeze(-1)).baddbmm_((decay * imms[name]).permute(1, 2, 0), gx)
            else:
                r[key].mul_(total.unsqueeze(-1))
            grads.append(g)
        return grads

    def _step_experts(self, p: _Pass, e: int, r: dict[str, torch.Tensor], J: torch.Tensor,
                      imms: dict[str, torch.Tensor], pending: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """The per-step reference for expert e: lazy vectors on steps it is not routed (eager: never),
        materialise and update its sensitivities on steps it is."""
        grads = [pending[0].clone(), pending[1].clone()]
        rho, gamma = p.carry.rho[e], p.carry.gamma[e]
        for t in range(p.x.shape[0]):
            Jk, e_t, gate = J[t] * p.keep[t], leaf_grad(p.cells[t]), p.G[t, :, e]
            if self.lazy and not gate.any():
                rho.mul_(Jk)
                gamma.add_(e_t * rho)
                continue
            pend = self._materialize(e, r, p.carry)
            gx = gate.unsqueeze(-1) * p.x[t]  # [B, D]
            for j, (name, key) in enumerate(SENSITIVITIES.items()):
                step_update(r[key], Jk, imms[name][t], gx)
                grads[j] += pend[j] + contract(e_t, r[key])
        return grads

    def _idle_experts(self, p: _Pass, J: torch.Tensor) -> None:
        """Every expert the pass did not materialise: O(B N) per rollout (segment) or per step (reference)."""
        if self.rtrl_form == "step":
            done = set(p.experts)
            idle = [e for e in range(self.num_experts) if e not in done]
            rho, gamma = p.carry.rho[idle], p.carry.gamma[idle]
            for t in range(p.x.shape[0]):
                rho.mul_(J[t] * p.keep[t])
                gamma.add_(leaf_grad(p.cells[t]) * rho)
            p.carry.rho[idle], p.carry.gamma[idle] = rho, gamma
            return
        # In place over all experts (no gather/scatter of [E, B, N]), then the materialised ones,
        # whose sensitivities were advanced explicitly, go back to rho = 1, gamma = 0.
        p.carry.gamma.addcmul_(p.carry.rho, leaf_grad(p.c0))
        p.carry.rho.mul_(p.total)
        p.carry.rho[p.experts] = 1.0
        p.carry.gamma[p.experts] = 0.0

    # ------------------------------------------------------------------------------------- helpers
    def _count_usage(self, idx: torch.Tensor, game_id: torch.Tensor | None) -> None:
        slots = torch.zeros_like(idx[..., 0]) if game_id is None else self.router.game_slot[game_id].clamp(min=0)
        counts = torch.zeros_like(self.usage)
        counts.index_put_((slots.unsqueeze(-1).expand_as(idx).reshape(-1), idx.reshape(-1)),
                          torch.ones(idx.numel(), dtype=counts.dtype, device=counts.device), accumulate=True)
        # Every rank's streams: the usage stays the same on every rank.
        self.collectives.all_reduce_sum([counts])
        self.usage.mul_(0.99).add_(counts)


def _keep_grad(t: torch.Tensor) -> torch.Tensor:
    """Make autograd keep dL/dt (a leaf if nothing upstream needs a gradient)."""
    if t.requires_grad:
        t.retain_grad()
        return t
    return t.requires_grad_(True)
