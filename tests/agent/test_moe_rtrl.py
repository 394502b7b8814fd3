"""Exact lazy RTRL of the MoE eLSTM core (agent/cores/moe_elstm.py) against full BPTT, in float64.

The reference re-implements the MoE eLSTM forward of docs/design.md from scratch over all steps, with the
routing of the core's own router (indices depend on x only, so they are the same in every method),
so autograd through it is full, untruncated BPTT. The router reads two input features that the data
sets per rollout, so that expert 0 is chosen at every step and expert 4 at none; expert 3 only in
rollout 0 (then idle with a non-zero sensitivity: the lazy path); expert 1 in rollout 1, idle in 2,
back in 3 (a pending gradient applied on re-activation); experts 1 and 2 alternating from step to
step in rollout 3. Episodes reset inside segments and on a
segment boundary, and the carried cell starts non-zero. The experts live in a real expert store,
with an hbm tier smaller than the experts a rollout routes to, so they cycle through the tiers
during the checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.cores.moe_elstm import VECTORS, MoEELSTMCore
from train.expert_optimizer import ExpertOptimizer, RMSprop
from train.experts import create_store

D, N, B, T, E, K = 4, 5, 4, 5, 5, 2
SEGMENTS = 4
DT = torch.float64


def _core(tmp_path: Path, form: str, lazy: bool, hbm: int = 2, dram: int = 3, seed: int = 0
          ) -> tuple[MoEELSTMCore, ExpertOptimizer]:
    core = MoEELSTMCore(D, N, E, K, "learned", schedule=[0], num_games=1, rtrl_form=form, lazy=lazy).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in sorted(list(core.named_parameters()) + [("expert_F", core.expert_F), ("expert_Z", core.expert_Z)]):
            t.copy_(torch.rand(t.shape, generator=g, dtype=DT) * 2.0 - 1.0)
        # logits: e0 = 3, e1 = 1.5 x3, e2 = -1.5 x3, e3 = 2 x2, e4 = -3 (with x2, x3 = +-1)
        core.router.linear.weight.zero_()
        core.router.linear.weight[1, 3], core.router.linear.weight[2, 3], core.router.linear.weight[3, 2] = 1.5, -1.5, 2.0
        core.router.linear.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0, -3.0], dtype=DT))
    rule = RMSprop(0.99, 0.01)
    core.attach_store(create_store(core, tmp_path / f"experts-{form}-{lazy}-{hbm}", B, hbm, dram, "cpu", rule))
    return core, ExpertOptimizer(core, rule)


def _data(steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps + 1, B, D, generator=g, dtype=DT)
    x[..., 2] = -1.0
    x[:T, :, 2] = 1.0  # expert 3 in rollout 0 only
    x[..., 3] = torch.randint(0, 2, (steps + 1, B), generator=g).to(DT) * 2 - 1
    x[T:2 * T, :, 3], x[2 * T:3 * T, :, 3] = 1.0, -1.0  # rollout 1: e1; rollout 2: e2
    x[3 * T:4 * T, :, 3] = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0], dtype=DT).unsqueeze(-1)  # rollout 3: by step
    W = torch.randn(steps, B, N, generator=g, dtype=DT)
    c_init = torch.rand(B, N, generator=g, dtype=DT) * 2.0 - 1.0
    first = torch.zeros(steps + 1, B, dtype=torch.bool)
    for t, b in ((T + 2, 1), (2 * T, 2), (0, 3), (steps - 2, 3)):
        first[t, b] = True
    return x, W, first, c_init


def _bptt(core: MoEELSTMCore, x, W, first, c) -> dict[str, torch.Tensor]:
    """Full BPTT of sum_t <W_t, h_t> from the constant c_init, experts as one [E, N, D] leaf each."""
    Fall = core.expert_F.clone().requires_grad_(True)
    Zall = core.expert_Z.clone().requires_grad_(True)
    steps = W.shape[0]
    idx, gates, _ = core.router(x[:steps], None)
    gates = gates.detach()
    pre_F = torch.einsum("tbjnd,tbd,tbj->tbn", Fall[idx], x[:steps], gates)
    pre_Z = torch.einsum("tbjnd,tbd,tbj->tbn", Zall[idx], x[:steps], gates)
    hs = []
    for t in range(steps):
        c_prev = torch.where(first[t].unsqueeze(-1), torch.zeros_like(c), c)
        f = torch.sigmoid(pre_F[t] + core.w_f * c_prev + core.b_f)
        z = torch.tanh(pre_Z[t] + core.w_z * c_prev + core.b_z)
        c = f * c_prev + (1.0 - f) * z
        hs.append(torch.sigmoid(x[t] @ core.out.weight[:, :D].T + c @ core.out.weight[:, D:].T + core.out.bias) * c)
    tensors = [Fall, Zall] + [getattr(core, k) for k in VECTORS] + [core.out.weight, core.out.bias]
    grads = torch.autograd.grad((W * torch.stack(hs)).sum(), tensors)
    out = {f"F{e}": grads[0][e] for e in range(E)} | {f"Z{e}": grads[1][e] for e in range(E)}
    out.update(zip(list(VECTORS) + ["out.weight", "out.bias"], grads[2:]))
    return out, idx


def _rtrl(core: MoEELSTMCore, opt: ExpertOptimizer, x, W, first, c_init, segments: int = SEGMENTS):
    """Total gradient over ``segments`` rollouts: what each update applied plus what is still pending."""
    carry = core.learner_carry(B, "cpu")
    carry.c = c_init.clone()
    experts = {f"{n}{e}": torch.zeros(N, D, dtype=DT) for n in "FZ" for e in range(E)}
    for k in range(segments):
        sl = slice(k * T, k * T + T + 1)
        outputs, context = core.learner_unroll(x[sl], first[sl], (), carry, 0)
        (W[k * T:k * T + T] * outputs[:T]).sum().backward()
        carry = core.learner_after_backward(context)
        for e, (gF, gZ) in context.grads.items():
            experts[f"F{e}"] += gF
            experts[f"Z{e}"] += gZ
        opt.step(0.0)
    for e, (gF, gZ) in core.pending_gradients(carry, list(range(E))).items():
        experts[f"F{e}"] += gF
        experts[f"Z{e}"] += gZ
    experts.update({k: getattr(core, k).grad.clone() for k in VECTORS})
    experts["out.weight"], experts["out.bias"] = core.out.weight.grad.clone(), core.out.bias.grad.clone()
    return experts, carry


def _sensitivities(core: MoEELSTMCore) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for e in range(E):
        with core.store.use([e]) as (r,):
            out[e] = {k: r[k].clone() for k in ("S_F", "S_Z")}
    return out


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])
@pytest.mark.parametrize("form", ["segment", "step"])
def test_moe_rtrl_equals_full_bptt_for_experts_always_sometimes_and_never_routed(tmp_path, form, lazy):
    x, W, first, c_init = _data(SEGMENTS * T)
    core, opt = _core(tmp_path, form, lazy)
    ref, idx = _bptt(core, x, W, first, c_init)
    routed = [[(idx[k * T:(k + 1) * T] == e).any().item() for k in range(SEGMENTS)] for e in range(E)]
    assert routed[0] == [True] * 4 and routed[4] == [False] * 4 and routed[3] == [True, False, False, False]
    assert routed[1] == [False, True, False, True] and routed[2] == [False, False, True, True]
    assert 0 < (idx[3 * T:] == 1).any(-1).any(-1).sum() < T  # steps of rollout 3 without expert 1
    got, _ = _rtrl(core, opt, x, W, first, c_init)
    for name, want in ref.items():
        assert torch.allclose(got[name], want, rtol=0, atol=1e-9), (name, (got[name] - want).abs().max().item())
    assert ref["F2"].abs().max() > 1e-3 and ref["F4"].abs().max() == 0  # non-trivial, and zero when never routed
    assert core.store.stats()["evictions_hbm"] > 0  # the experts did cycle through the tiers


def test_truncating_the_carried_sensitivities_breaks_the_match(tmp_path):
    """Negative control: dropping the carried term (TBPTT over each rollout) misses the target."""
    x, W, first, c_init = _data(SEGMENTS * T)
    core, opt = _core(tmp_path, "segment", True)
    ref, _ = _bptt(core, x, W, first, c_init)
    with torch.no_grad():
        core.learner_carry  # noqa: B018 (documentation: the carry below is replaced every rollout)
    carry_grads = {f"F{e}": torch.zeros(N, D, dtype=DT) for e in range(E)}
    for k in range(SEGMENTS):
        carry = core.learner_carry(B, "cpu")  # fresh sensitivities: truncated
        carry.c = c_init.clone() if k == 0 else carry.c
        sl = slice(k * T, k * T + T + 1)
        outputs, context = core.learner_unroll(x[sl], first[sl], (), carry, 0)
        (W[k * T:k * T + T] * outputs[:T]).sum().backward()
        core.learner_after_backward(context)
        for e, (gF, _) in context.grads.items():
            carry_grads[f"F{e}"] += gF
        opt.step(0.0)
    assert max((carry_grads[f"F{e}"] - ref[f"F{e}"]).abs().max().item() for e in range(E)) > 1e-3


@pytest.mark.parametrize("form", ["segment", "step"])
def test_lazy_and_eager_give_the_same_gradients_and_sensitivities(tmp_path, form):
    x, W, first, c_init = _data(SEGMENTS * T)
    (lazy, lazy_opt), (eager, eager_opt) = _core(tmp_path, form, True), _core(tmp_path, form, False, hbm=E, dram=E)
    g_lazy, _ = _rtrl(lazy, lazy_opt, x, W, first, c_init)
    g_eager, _ = _rtrl(eager, eager_opt, x, W, first, c_init)
    for name in g_lazy:
        assert torch.allclose(g_lazy[name], g_eager[name], rtol=0, atol=1e-12), name
    s_lazy, s_eager = _sensitivities(lazy), _sensitivities(eager)
    for e in range(E):
        for k in ("S_F", "S_Z"):
            assert torch.allclose(s_lazy[e][k], s_eager[e][k], rtol=0, atol=1e-12), (e, k)
    assert s_lazy[2]["S_F"].abs().max() > 1e-3


def test_learning_out_of_core_equals_learning_with_every_expert_in_hbm(tmp_path):
    """Same seed and data, RMSprop steps with lr > 0: a store with hbm 2 of 5 experts (cycling
    through dram and NVMe) and one with all 5 in hbm end with identical parameters."""
    x, W, first, c_init = _data(SEGMENTS * T)
    cores = [_core(tmp_path, "segment", True, hbm=h, dram=d) for h, d in ((2, 3), (E, E))]
    for core, opt in cores:
        carry = core.learner_carry(B, "cpu")
        carry.c = c_init.clone()
        for k in range(SEGMENTS):
            sl = slice(k * T, k * T + T + 1)
            outputs, context = core.learner_unroll(x[sl], first[sl], (), carry, 0)
            (W[k * T:k * T + T] * outputs[:T]).sum().backward()
            carry = core.learner_after_backward(context)
            opt.step(0.05)
        opt.flush(carry, 0.05, clip=40.0)
    (small, _), (big, _) = cores
    assert small.store.stats()["bytes_dram_to_nvme"] > 0  # written back through every tier
    assert torch.equal(small.expert_F, big.expert_F) and torch.equal(small.expert_Z, big.expert_Z)
    assert not torch.equal(small.expert_F, _core(tmp_path / "fresh", "segment", True)[0].expert_F)  # it learned
    for e in range(E):
        with small.store.use([e]) as (a,), big.store.use([e]) as (b,):
            assert all(torch.equal(a[k], b[k]) for k in a), e
