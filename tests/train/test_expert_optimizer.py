"""The experts' Adam (train/expert_optimizer.py) equals torch.optim.Adam, in float64.

Four experts of a real store whose hbm holds two (so their records, Adam state included, cycle
through dram and NVMe) get gradients at some updates and none at others: expert 0 at every update,
expert 1 at a few, expert 2 only through a flush, expert 3 never. The reference is one
torch.optim.Adam over plain [N, D] tensors, each given the same gradients and None where the expert
had none (torch then skips it and its step count stays), at the learning rate of each update.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.cores.moe_elstm import MoEELSTMCore
from storage.expert_store import ExpertStore
from train.config import ADAM_EPS, LearnerConfig
from train.expert_optimizer import Adam, ExpertOptimizer, RMSprop, expert_rule
from train.experts import create_store, expert_spec

D, N, B, E = 3, 4, 2, 4
DT = torch.float64
LRS = [0.02, 0.01, 0.015, 0.005, 0.01, 0.02]
"""The learning rate of each update (the scheduler changes it from update to update)."""
STEPPED = [{0, 1}, {0}, {0, 1}, {0}, {0}, {0, 1}]
"""The experts with a gradient at each update (ExpertOptimizer.step); expert 2 gets one in the flush."""
FLUSH_LR = 0.01


def _gradients(seed: int = 0) -> list[dict[int, list[torch.Tensor]]]:
    """Per update, then for the flush: {expert: [grad F, grad Z]} [N, D]."""
    g = torch.Generator().manual_seed(seed)
    per_update = [*STEPPED, {0, 2}]
    return [{e: [torch.randn(N, D, generator=g, dtype=DT) * (e + 1) for _ in "FZ"] for e in sorted(ids)}
            for ids in per_update]


def _train(tmp_path: Path, rule, grads: list[dict[int, list[torch.Tensor]]]) -> MoEELSTMCore:
    """The experts after ExpertOptimizer.step at every update of ``grads`` and a flush of the last."""
    torch.manual_seed(0)
    core = MoEELSTMCore(D, N, E, 2, "learned", schedule=[0], num_games=1).double()
    core.attach_store(create_store(core, tmp_path / "experts", B, hbm=2, dram=3, device="cpu", rule=rule))
    opt = ExpertOptimizer(core, rule)
    for lr, update in zip(LRS, grads[:-1]):
        core.expert_grads = {e: [g.clone() for g in pair] for e, pair in update.items()}
        opt.step(lr)
    flushed = grads[-1]
    core.pending_experts = lambda: sorted(flushed)
    core.pending_gradients = lambda carry, experts: {e: [g.clone() for g in flushed[e]] for e in experts}
    assert opt.flush(None, FLUSH_LR, clip=1e9) == len(flushed)
    return core


def _torch_adam(initial: MoEELSTMCore, grads: list[dict[int, list[torch.Tensor]]]):
    """torch.optim.Adam on plain copies of ``initial``'s experts: {e: [F, Z]} and the optimizer."""
    params = {e: [initial.expert_F[e].clone(), initial.expert_Z[e].clone()] for e in range(E)}
    adam = torch.optim.Adam([p for pair in params.values() for p in pair], lr=LRS[0], eps=ADAM_EPS)
    for lr, update in zip([*LRS, FLUSH_LR], grads):
        for e, pair in params.items():
            for p, g in zip(pair, update.get(e, [None, None])):
                p.grad = g
        adam.param_groups[0]["lr"] = lr
        adam.step()
    return params, adam


def _initial() -> MoEELSTMCore:
    torch.manual_seed(0)
    return MoEELSTMCore(D, N, E, 2, "learned", schedule=[0], num_games=1).double()


def test_adam_on_the_experts_equals_torch_adam_with_each_experts_own_step_count(tmp_path):
    grads = _gradients()
    core = _train(tmp_path, Adam(), grads)
    params, adam = _torch_adam(_initial(), grads)
    for e in range(E):
        F, Z = params[e]
        assert torch.allclose(core.expert_F[e], F, rtol=0, atol=1e-12), e
        assert torch.allclose(core.expert_Z[e], Z, rtol=0, atol=1e-12), e
    # The records, committed and reopened from disk, hold torch's state for each expert.
    core.store.checkpoint("t")
    core.store.close()
    store = ExpertStore.open(tmp_path / "experts", E, E, snapshot="t")
    counts = []
    for e in range(E):
        with store.use([e]) as (r,):
            counts.append(int(r["step"]))
            for key, p in zip("FZ", params[e]):
                state = adam.state.get(p, {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                           "exp_avg_sq": torch.zeros_like(p)})
                assert torch.allclose(r[key], p, rtol=0, atol=1e-12), (e, key)
                assert torch.allclose(r[f"m_{key}"], state["exp_avg"], rtol=0, atol=1e-12), (e, key)
                assert torch.allclose(r[f"sq_{key}"], state["exp_avg_sq"], rtol=0, atol=1e-12), (e, key)
                assert int(r["step"]) == int(state["step"]), (e, key)
    store.close()
    assert counts == [7, 3, 1, 0]  # every update and the flush; three updates; the flush; never
    assert torch.equal(core.expert_F[3], _initial().expert_F[3])  # never stepped, never moved


@pytest.mark.parametrize("wrong", ["a step count shared by all experts", "rmsprop"])
def test_a_shared_step_count_or_rmsprop_gives_other_experts(tmp_path, wrong):
    """Negative controls: the comparison above tells a wrong bias correction and another rule apart."""
    grads = _gradients()
    if wrong == "rmsprop":
        core = _train(tmp_path, RMSprop(0.99, ADAM_EPS), grads)
    else:  # every expert stepped at every update (zero gradients when idle): one count for all
        zero = [torch.zeros(N, D, dtype=DT)] * 2
        core = _train(tmp_path, Adam(), [{e: update.get(e, zero) for e in range(E)} for update in grads])
    params, _ = _torch_adam(_initial(), grads)
    assert (core.expert_F[1] - params[1][0]).abs().max() > 1e-4  # the expert that skipped updates


def test_rmsprop_keeps_todays_record_and_adam_adds_its_moments_and_count():
    """The record spec per rule, and its bytes per expert at the default preset's shapes (N 256,
    D = 256 + 1 + 18, B 8, float32)."""
    rmsprop = expert_spec(256, 275, 8, expert_rule(LearnerConfig(optimizer="rmsprop")))
    adam = expert_spec(256, 275, 8, expert_rule(LearnerConfig(optimizer="adam")))
    assert list(rmsprop) == ["F", "Z", "sq_F", "sq_Z", "S_F", "S_Z"]
    assert sorted(adam) == sorted([*rmsprop, "m_F", "m_Z", "step"])
    assert adam["step"].shape == () and adam["step"].dtype == torch.int64
    assert expert_rule(LearnerConfig(optimizer="rmsprop-tf")) == RMSprop(0.99, 0.01, square_init=1.0)
    nbytes = lambda spec: sum(s.nbytes for s in spec.values())  # noqa: E731
    assert (nbytes(rmsprop), nbytes(adam)) == (5_632_000, 6_195_208)
