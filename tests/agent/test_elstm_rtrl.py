"""Exact RTRL of the eLSTM core (agent/cores/elstm.py) checked against an independent float64 reference.

The reference below re-implements the eLSTM forward of docs/design.md from scratch (it does not call the
core's own cell), so autograd through it is full, untruncated BPTT, and ``torch.func.jvp`` through it
is forward-mode differentiation. All parameters are drawn uniform(-1, 1) so that every gradient
is non-trivial, the carried cell starts non-zero, and episodes reset inside segments and exactly
on a segment boundary.

Learner hook protocol used throughout: a rollout's inputs have T + 1 steps (the last one is step 0
of the next rollout and only bootstraps), the loss is built from ``outputs[:T]``, then
``learner_after_backward`` adds the RTRL gradient and returns the carry for the next rollout.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

from agent.cores.elstm import RECURRENT, ELSTMCore

D, N, B, T = 4, 5, 4, 5
K = 4  # segments (rollouts) in the multi-segment tests
FORMS = ("segment", "step")
DT = torch.float64


# Fixtures and the independent reference ----------------------------------------------------------


def _core(form: str = "segment", learning: str = "rtrl", seed: int = 0) -> ELSTMCore:
    """A float64 eLSTM with every parameter uniform(-1, 1) (same values for the same seed, any form)."""
    core = ELSTMCore(D, N, learning=learning, rtrl_form=form).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(core.named_parameters()):
            p.copy_(torch.rand(p.shape, generator=g, dtype=DT) * 2.0 - 1.0)
    return core


def _data(steps: int, seed: int = 1):
    """x [steps+1, B, D], loss weights W [steps, B, N], first [steps+1, B], initial cell c_init [B, N].

    Resets: stream 0 never; stream 1 inside segment 1 (global step T + 2); stream 2 on the boundary
    between segments 1 and 2 (global step 2T: the last, bootstrap-only, step of rollout 1 and step 0
    of rollout 2); stream 3 at global step 0 (drops the initial cell) and inside the last segment.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps + 1, B, D, generator=g, dtype=DT)
    W = torch.randn(steps, B, N, generator=g, dtype=DT)
    c_init = torch.rand(B, N, generator=g, dtype=DT) * 2.0 - 1.0
    first = torch.zeros(steps + 1, B, dtype=torch.bool)
    for t, b in ((T + 2, 1), (2 * T, 2), (0, 3), (steps - 2, 3)):
        if t <= steps:
            first[t, b] = True
    return x, W, first, c_init


def _params(core: ELSTMCore) -> dict[str, torch.Tensor]:
    return {k: getattr(core, k) for k in RECURRENT}


def _reference(core: ELSTMCore, P: dict[str, torch.Tensor], x: torch.Tensor, first: torch.Tensor,
               c: torch.Tensor):
    """Plain eLSTM forward over all steps of x (resets before step t where first[t]).

    Returns h [S, B, N], the cell after each step [S, B, N], the cell before each step after its
    reset [S, B, N], and J = dc_t/dc_{t-1} (before the reset mask) [S, B, N].
    """
    hs, cs, c_prevs, Js = [], [], [], []
    for t in range(x.shape[0]):
        c_prev = torch.where(first[t].unsqueeze(-1), torch.zeros_like(c), c)
        f = torch.sigmoid(x[t] @ P["F"].T + P["w_f"] * c_prev + P["b_f"])
        z = torch.tanh(x[t] @ P["Z"].T + P["w_z"] * c_prev + P["b_z"])
        c = f * c_prev + (1.0 - f) * z
        h = torch.sigmoid(x[t] @ core.out.weight[:, :D].T + c @ core.out.weight[:, D:].T + core.out.bias) * c
        zh, fh = (1.0 - f) * (1.0 - z ** 2), (c_prev - z) * f * (1.0 - f)
        Js.append(f + P["w_z"] * zh + P["w_f"] * fh)
        hs.append(h), cs.append(c), c_prevs.append(c_prev)
    return torch.stack(hs), torch.stack(cs), torch.stack(c_prevs), torch.stack(Js)


def _bptt_grads(core: ELSTMCore, x, W, first, c_init) -> dict[str, torch.Tensor]:
    """Full BPTT of sum_t <W_t, h_t> over all len(W) steps from the constant c_init."""
    steps = W.shape[0]
    h, *_ = _reference(core, _params(core), x[:steps], first[:steps], c_init)
    names = list(RECURRENT) + ["out.weight", "out.bias"]
    tensors = [getattr(core, k) for k in RECURRENT] + [core.out.weight, core.out.bias]
    grads = torch.autograd.grad((W * h).sum(), tensors)
    return dict(zip(names, grads))


def _core_grads(core: ELSTMCore) -> dict[str, torch.Tensor]:
    out = {}
    for k in RECURRENT:
        g = getattr(core, k).grad
        out[k] = torch.zeros_like(getattr(core, k)) if g is None else g.clone()
    out["out.weight"], out["out.bias"] = core.out.weight.grad.clone(), core.out.bias.grad.clone()
    return out


def _start_carry(core: ELSTMCore, c_init: torch.Tensor):
    carry = core.learner_carry(B, "cpu")
    carry.c = c_init.clone()
    return carry


def _rollout(core: ELSTMCore, x, W, first, carry, k: int):
    """Learner pass over rollout k (global steps kT .. kT+T); gradients accumulate into .grad."""
    sl = slice(k * T, k * T + T + 1)
    outputs, record = core.learner_unroll(x[sl], first[sl], None, carry, 0)
    assert outputs.shape == (T + 1, B, N)
    (W[k * T:k * T + T] * outputs[:T]).sum().backward()
    return core.learner_after_backward(record)


def _rtrl_grads(core: ELSTMCore, x, W, first, c_init, segments: int):
    carry = _start_carry(core, c_init)
    for k in range(segments):
        carry = _rollout(core, x, W, first, carry, k)
    return _core_grads(core), carry


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# 1. One window ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_one_window_rtrl_gradient_of_every_parameter_equals_bptt(form):
    core = _core(form)
    x, W, first, c_init = _data(T)
    ref = _bptt_grads(core, x, W, first, c_init)
    got, _ = _rtrl_grads(core, x, W, first, c_init, segments=1)
    for name, g in ref.items():
        assert g.norm() > 1e-3, name  # not vacuous
        assert _rel(got[name], g) < 1e-9, name


# 2. Several segments: exactness across rollouts, and the TBPTT negative control -----------------


@pytest.mark.parametrize("form", FORMS)
def test_summed_rtrl_gradients_over_segments_with_resets_equal_full_bptt_over_the_concatenation(form):
    core = _core(form)
    x, W, first, c_init = _data(K * T)
    assert first[2 * T, 2] and first[T + 2, 1]  # a reset on a segment boundary and one inside
    ref = _bptt_grads(core, x, W, first, c_init)
    got, carry = _rtrl_grads(core, x, W, first, c_init, segments=K)
    for name, g in ref.items():
        assert _rel(got[name], g) < 1e-9, name
    _, cells, _, _ = _reference(core, _params(core), x[:K * T], first[:K * T], c_init)
    torch.testing.assert_close(carry.c, cells[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("M", [3, 0])
def test_truncated_bptt_differs_from_full_bptt_so_the_exactness_test_is_not_vacuous(M):
    """TBPTT(M) through the default hooks (M=0: cut only at rollout starts) misses the long-range terms."""
    core = _core(learning="tbptt")
    x, W, first, c_init = _data(K * T)
    ref = _bptt_grads(core, x, W, first, c_init)
    with torch.no_grad():
        _, cells, _, _ = _reference(core, _params(core), x[:K * T], first[:K * T], c_init)
    before = [c_init] + [cells[k * T - 1] for k in range(1, K)]  # actor state before each rollout
    assert core.learner_carry(B, "cpu") is None
    for k in range(K):
        sl = slice(k * T, k * T + T + 1)
        outputs, record = core.learner_unroll(x[sl], first[sl], (before[k],), None, M)
        (W[k * T:k * T + T] * outputs[:T]).sum().backward()
        assert core.learner_after_backward(record) is None
    got = _core_grads(core)
    for name in RECURRENT:
        assert ref[name].norm() > 1e-2, name
    worst = max(_rel(got[name], ref[name]) for name in RECURRENT)
    assert worst > 1e-3
    # The output layer does not recur: even truncated BPTT gets it exactly.
    assert _rel(got["out.weight"], ref["out.weight"]) < 1e-9


# 3. The segment form and the per-step form agree -------------------------------------------------


def test_segment_form_and_per_step_form_agree_on_gradients_and_on_the_carried_cell_and_sensitivities():
    cores = {form: _core(form) for form in FORMS}
    x, W, first, c_init = _data(K * T)
    carries = {form: _start_carry(core, c_init) for form, core in cores.items()}
    for k in range(K):
        for form, core in cores.items():
            carries[form] = _rollout(core, x, W, first, carries[form], k)
        seg, step = carries["segment"], carries["step"]
        torch.testing.assert_close(seg.c, step.c, rtol=1e-12, atol=1e-13)
        assert set(seg.S) == set(RECURRENT) == set(step.S)
        for name in RECURRENT:
            assert seg.S[name].abs().max() > 0 or k == 0, name
            torch.testing.assert_close(seg.S[name], step.S[name], rtol=1e-10, atol=1e-12)
        g_seg, g_step = _core_grads(cores["segment"]), _core_grads(cores["step"])
        for name in g_seg:
            assert _rel(g_seg[name], g_step[name]) < 1e-10, (k, name)


# 4. Stored sensitivities are forward-mode derivatives ---------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_carried_sensitivities_contracted_with_a_direction_equal_the_forward_mode_jvp_of_the_cell(form):
    core = _core(form)
    x, W, first, c_init = _data(K * T)
    _, carry = _rtrl_grads(core, x, W, first, c_init, segments=K - 1)
    steps = (K - 1) * T
    primals = tuple(getattr(core, k).detach() for k in RECURRENT)

    def cell_after(*params):
        _, cells, _, _ = _reference(core, dict(zip(RECURRENT, params)), x[:steps], first[:steps], c_init)
        return cells[-1]

    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in primals)
        c_T, dc = jvp(cell_after, primals, v)
        contracted = torch.einsum("bnd,nd->bn", carry.S["F"], v[0]) + torch.einsum("bnd,nd->bn", carry.S["Z"], v[1])
        for name, vk in zip(RECURRENT[2:], v[2:]):
            contracted = contracted + carry.S[name] * vk
        assert dc.abs().max() > 1e-3
        assert _rel(contracted, dc) < 1e-10
        torch.testing.assert_close(carry.c, c_T, rtol=1e-12, atol=1e-12)


# 5. No contribution counted twice ----------------------------------------------------------------


def test_step_form_leaves_the_recurrent_grads_to_rtrl_alone():
    core = _core("step")
    x, W, first, c_init = _data(T)
    carry = _start_carry(core, c_init)
    outputs, record = core.learner_unroll(x, first, None, carry, 0)
    (W * outputs[:T]).sum().backward()
    for name in RECURRENT:
        assert getattr(core, name).grad is None, f"autograd wrote into {name} before RTRL"
    assert core.out.weight.grad is not None and core.out.weight.grad.abs().max() > 0
    core.learner_after_backward(record)
    for name in RECURRENT:
        assert getattr(core, name).grad is not None and getattr(core, name).grad.abs().max() > 0, name


@pytest.mark.parametrize("form", FORMS)
def test_second_rollout_gradient_is_bptt_of_its_own_loss_through_the_whole_history_counted_once(form):
    """Rollout 2's gradient (carried sensitivities non-zero) equals full BPTT of rollout 2's loss only.

    In the segment form autograd already holds the within-rollout part before after_backward; it
    must differ from the answer by a lot (so counting it twice, or dropping the carried term, fails).
    """
    core = _core(form)
    x, W, first, c_init = _data(2 * T)
    W2 = W.clone()
    W2[:T] = 0.0  # only rollout 2's loss
    ref = _bptt_grads(core, x, W2, first, c_init)

    carry = _rollout(core, x, W, first, _start_carry(core, c_init), 0)
    core.zero_grad(set_to_none=True)
    sl = slice(T, 2 * T + 1)
    outputs, record = core.learner_unroll(x[sl], first[sl], None, carry, 0)
    (W[T:2 * T] * outputs[:T]).sum().backward()
    before = _core_grads(core)
    core.learner_after_backward(record)
    after = _core_grads(core)
    for name, g in ref.items():
        assert _rel(after[name], g) < 1e-9, name
    assert max(_rel(before[name], ref[name]) for name in RECURRENT) > 1e-2
    assert _rel(before["out.weight"], ref["out.weight"]) < 1e-9  # out layer: autograd only, untouched


@pytest.mark.parametrize("form", FORMS)
def test_a_loss_that_does_not_depend_on_the_outputs_gives_zero_recurrent_gradients(form):
    core = _core(form)
    x, W, first, c_init = _data(2 * T)
    carry = _rollout(core, x, W, first, _start_carry(core, c_init), 0)  # non-zero carried S
    assert carry.S["F"].abs().max() > 0
    core.zero_grad(set_to_none=True)
    other = torch.nn.Parameter(torch.ones(3, dtype=DT))
    sl = slice(T, 2 * T + 1)
    outputs, record = core.learner_unroll(x[sl], first[sl], None, carry, 0)
    (other ** 2).sum().backward()
    core.learner_after_backward(record)
    for name, p in core.named_parameters():
        assert p.grad is None or p.grad.abs().max() == 0, name


# 6. Telemetry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_rtrl_telemetry_reports_the_largest_decay_J_of_the_rollout_and_sane_fractions(form):
    core = _core(form)
    with torch.no_grad():
        core.w_z.mul_(4.0)  # so that some |J| > 1 and frac_J_gt_1 is exercised away from 0
    x, W, first, c_init = _data(2 * T)
    carry = _rollout(core, x, W, first, _start_carry(core, c_init), 0)
    carry = _rollout(core, x, W, first, carry, 1)
    stats = core.learner_stats()
    assert {"max_abs_J", "frac_J_gt_1", "max_abs_S"} <= set(stats)
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in stats.values())
    with torch.no_grad():
        _, _, _, J = _reference(core, _params(core), x[:2 * T], first[:2 * T], c_init)
    J2 = J[T:2 * T]  # the latest rollout's steps 0..T-1
    assert stats["max_abs_J"] == pytest.approx(J2.abs().max().item(), rel=1e-12)
    assert 0.0 <= stats["frac_J_gt_1"] <= 1.0
    assert stats["frac_J_gt_1"] == pytest.approx((J2.abs() > 1.0).double().mean().item(), abs=1e-6)
    assert 0.0 < stats["frac_J_gt_1"] < 1.0
    s_fz = max(carry.S["F"].abs().max().item(), carry.S["Z"].abs().max().item())
    s_all = max(s.abs().max().item() for s in carry.S.values())
    assert s_fz * (1 - 1e-12) <= stats["max_abs_S"] <= s_all * (1 + 1e-12)


def test_tbptt_elstm_has_no_carry_and_no_rtrl_telemetry():
    core = _core(learning="tbptt")
    x, W, first, c_init = _data(T)
    outputs, record = core.learner_unroll(x, first, (c_init,), core.learner_carry(B, "cpu"), 0)
    (W * outputs[:T]).sum().backward()
    assert core.learner_after_backward(record) is None
    assert core.learner_stats() == {}


# What the encoder below the core gets ------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_outputs_match_the_plain_forward_and_the_input_gradient_is_within_rollout_or_within_step(form):
    """Segment form: inputs get BPTT inside the rollout (from the carried cell as a constant);
    per-step form: inputs get the within-step gradient only (recurrence cut before every step)."""
    core = _core(form)
    x, W, first, c_init = _data(T)
    x = x.clone().requires_grad_(True)
    outputs, record = core.learner_unroll(x, first, None, _start_carry(core, c_init), 0)
    (W * outputs[:T]).sum().backward()
    core.learner_after_backward(record)

    xr = x.detach().clone().requires_grad_(True)
    with torch.no_grad():
        h_ref, cells, _, _ = _reference(core, _params(core), xr, first, c_init)
    torch.testing.assert_close(outputs.detach(), h_ref, rtol=1e-12, atol=1e-12)
    if form == "segment":
        h, *_ = _reference(core, _params(core), xr[:T], first[:T], c_init)
    else:  # each step from the true previous cell, held constant
        c_prev = torch.cat([c_init.unsqueeze(0), cells[:T - 1]])
        h = torch.stack([_reference(core, _params(core), xr[t:t + 1], first[t:t + 1], c_prev[t])[0][0]
                         for t in range(T)])
    (expected,) = torch.autograd.grad((W * h).sum(), xr)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)
    assert x.grad[T].abs().max() == 0  # the bootstrap step gets nothing
