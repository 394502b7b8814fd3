"""The recurrent-core interface (with the LSTM core) and the actor-critic built on it.

Core checks run in float64; the actor-critic runs on real-sized uint8 frames with a small hidden size.
"""

import pytest
import torch

from agent.cores import LSTMCore
from agent.model import ActorCritic, Inputs
from agent.config import ModelConfig
from envs.registry import game_id

T, B, D, H = 12, 3, 5, 7


def _core(seed: int = 0) -> LSTMCore:
    torch.manual_seed(seed)
    return LSTMCore(D, H).double()


def _zero_state(batch: int = B):
    return torch.zeros(batch, H, dtype=torch.float64), torch.zeros(batch, H, dtype=torch.float64)


def _random_state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64))


def _first_flags() -> torch.Tensor:
    """[T, B]: stream 0 never resets, stream 1 resets at t=5, stream 2 at t=0 and t=9."""
    first = torch.zeros(T, B, dtype=torch.bool)
    first[5, 1] = True
    first[0, 2] = True
    first[9, 2] = True
    return first


def _inputs(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, D, generator=g, dtype=torch.float64)


# Core interface ----------------------------------------------------------------------------------


def test_core_forward_equals_a_manual_loop_that_zeroes_the_state_at_episode_starts():
    core, x, first, state0 = _core(), _inputs(), _first_flags(), _random_state(2)
    out, (h_last, c_last) = core(x, first, state0)

    h, c = state0
    manual = []
    for t in range(T):
        keep = (~first[t]).unsqueeze(-1)
        h, c = torch.where(keep, h, 0.0), torch.where(keep, c, 0.0)
        h, c = core.cell(x[t], (h, c))
        manual.append(h)
    manual = torch.stack(manual)

    assert out.shape == (T, B, H) and out.dtype == torch.float64
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-15)
    torch.testing.assert_close(h_last, h, rtol=0, atol=1e-15)
    torch.testing.assert_close(c_last, c, rtol=0, atol=1e-15)


def test_core_state_after_an_episode_start_does_not_depend_on_what_came_before():
    core, first = _core(), _first_flags()
    x_a = _inputs(1)
    x_b = x_a.clone()
    x_b[:5, :2] = torch.randn(5, 2, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out_a, _ = core(x_a, first, _random_state(2))
    out_b, _ = core(x_b, first, _random_state(3))  # other inputs before t=5 (streams 0, 1), other initial state

    # Stream 1 restarts at t=5 and stream 2 at t=0 (so its other initial state never matters).
    assert torch.equal(out_a[5:, 1], out_b[5:, 1])
    assert torch.equal(out_a[:, 2], out_b[:, 2])
    # Control: stream 0 never restarts, so the changed past shows up after t=5 too.
    assert not torch.allclose(out_a[5:, 0], out_b[5:, 0])
    assert not torch.allclose(out_a[:5, 1], out_b[:5, 1])


def test_core_initial_state_is_zero_and_shaped_per_stream():
    state = LSTMCore(D, H).initial_state(4)
    assert len(state) == 2
    for s in state:
        assert s.shape == (4, H) and not s.any()


def test_core_initial_state_follows_the_parameter_dtype():
    core = _core()
    state = core.initial_state(B)
    assert all(s.dtype == torch.float64 for s in state)
    core.step(torch.zeros(B, D, dtype=torch.float64), state)


def _grad_of_last_step_wrt_inputs(core, first, truncation):
    x = _inputs().requires_grad_(True)
    out, context = core.learner_unroll(x, first, _random_state(2), core.learner_carry(B, "cpu"), truncation)
    assert out.shape == (T, B, H)
    out[-1].sum().backward()
    core.learner_after_backward(context)
    return x.grad.abs().sum(dim=(1, 2))  # [T]


def test_learner_unroll_truncation_cuts_the_gradient_at_window_boundaries():
    core, no_resets = _core(), torch.zeros(T, B, dtype=torch.bool)
    grad = _grad_of_last_step_wrt_inputs(core, no_resets, truncation=4)
    # Windows [0, 4), [4, 8), [8, 12): the loss at t=11 reaches only the last window.
    assert (grad[:8] == 0).all()
    assert (grad[8:] > 0).all()


def test_learner_unroll_without_truncation_backpropagates_through_the_whole_rollout():
    core, no_resets = _core(), torch.zeros(T, B, dtype=torch.bool)
    grad = _grad_of_last_step_wrt_inputs(core, no_resets, truncation=0)
    assert (grad > 0).all()


def test_learner_unroll_gradient_stops_at_an_episode_start():
    core, first = _core(), torch.zeros(T, B, dtype=torch.bool)
    first[6, :] = True
    grad = _grad_of_last_step_wrt_inputs(core, first, truncation=0)
    assert (grad[:6] == 0).all()
    assert (grad[6:] > 0).all()


@pytest.mark.parametrize("truncation", [0, 4, 5])
def test_learner_unroll_outputs_equal_the_acting_forward_for_any_truncation(truncation):
    core, x, first, state0 = _core(), _inputs(), _first_flags(), _random_state(2)
    out_act, _ = core(x, first, state0)
    out_learn, _ = core.learner_unroll(x, first, state0, None, truncation)
    torch.testing.assert_close(out_learn, out_act, rtol=0, atol=1e-15)


# Actor-critic ------------------------------------------------------------------------------------

HIDDEN, MT, MB = 16, 3, 2


def _rollout(seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(MT, MB, dtype=torch.bool)
    first[0, 0] = True
    first[2, 1] = True
    prev_action = torch.randint(0, 18, (MT, MB), generator=g)
    prev_action[first] = 0
    return Inputs(
        frames=torch.randint(0, 256, (MT, MB, 4, 84, 84), dtype=torch.uint8, generator=g),
        prev_action=prev_action,
        reward=torch.randint(-1, 2, (MT, MB), generator=g).float(),
        first=first,
    )


@pytest.fixture(params=["nature", "resnet"])
def model(request):
    torch.manual_seed(0)
    return ActorCritic(ModelConfig(encoder=request.param, core="lstm", hidden_size=HIDDEN), num_actions=18)


def test_actor_critic_maps_uint8_frames_to_18_logits_and_a_value_per_step(model):
    inp = _rollout()
    with torch.no_grad():
        logits, values, state = model(inp, model.initial_state(MB))
    assert logits.shape == (MT, MB, 18) and values.shape == (MT, MB)
    assert logits.dtype == values.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(values).all()
    assert all(s.shape == (MB, HIDDEN) for s in state)


def test_actor_critic_learner_forward_equals_forward_for_the_lstm_core_without_truncation(model):
    inp, state0 = _rollout(), model.initial_state(MB)
    with torch.no_grad():
        logits, values, _ = model(inp, state0)
    logits_l, values_l, _ = model.learner_forward(inp, state0, model.core.learner_carry(MB, "cpu"), truncation=0)
    torch.testing.assert_close(logits_l, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(values_l, values, rtol=0, atol=1e-6)


def test_actor_critic_learner_gradients_reach_the_encoder_core_and_heads(model):
    inp, state0 = _rollout(), model.initial_state(MB)
    logits, values, context = model.learner_forward(inp, state0, model.core.learner_carry(MB, "cpu"), truncation=0)
    loss = values.pow(2).sum() - torch.log_softmax(logits, -1)[..., 3].sum()
    loss.backward()
    model.core.learner_after_backward(context)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
    encoder_grad = sum(p.grad.abs().sum() for p in model.encoder.parameters())
    assert encoder_grad > 0
    assert model.core.cell.weight_hh.grad.abs().sum() > 0
    assert model.policy.weight.grad.abs().sum() > 0 and model.value.weight.grad.abs().sum() > 0


def test_actor_critic_state_resets_where_first_is_set(model):
    """Stream 1 restarts at t=2: its outputs there do not depend on the state or frames before."""
    inp = _rollout()
    other = _rollout()
    other.frames[:2, 1] = 255 - other.frames[:2, 1]
    g = torch.Generator().manual_seed(5)
    state_b = tuple(torch.randn(MB, HIDDEN, generator=g) for _ in range(2))
    with torch.no_grad():
        logits_a, values_a, _ = model(inp, model.initial_state(MB))
        logits_b, values_b, _ = model(other, state_b)
    torch.testing.assert_close(logits_a[2, 1], logits_b[2, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(values_a[2, 1], values_b[2, 1], rtol=0, atol=1e-6)
    assert not torch.allclose(values_a[:2, 1], values_b[:2, 1])


def test_a_per_step_mask_leaves_one_action_with_probability_1_and_no_policy_gradient():
    """``allowed`` [T, B, A_env] narrows the game's mask step by step; at a step with one action left
    the log-probability and the entropy are 0 and carry no gradient into the core's output."""
    torch.manual_seed(0)
    model = ActorCritic(ModelConfig(encoder="nature", core="lstm", hidden_size=HIDDEN), num_actions=18,
                        action_set="minimal")
    core_out = torch.randn(MT, MB, HIDDEN, dtype=torch.float64, requires_grad=True)
    model = model.double()
    game = torch.full((MT, MB), game_id("tmaze-D-k3"))
    allowed = torch.ones(MT, MB, 3, dtype=torch.bool)
    allowed[1, 0, 1:] = False  # one step with only action 0

    def score(mask):
        logits, _ = model.heads(core_out, game, mask)
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        return logp, (logp[..., 0] + entropy).sum()

    logp, loss = score(allowed)
    probs = logp.exp()
    assert (probs[..., 3:] == 0).all()  # the game's mask still holds
    assert probs[1, 0, 0] == 1.0 and (probs[1, 0, 1:] == 0).all()
    others = torch.ones(MT, MB, dtype=torch.bool)
    others[1, 0] = False
    assert (probs[..., :3][others] > 0).all()
    (grad,) = torch.autograd.grad(loss, core_out)
    assert (grad[1, 0] == 0).all() and grad[others].abs().sum() > 0
    # Negative control: without the per-step mask the same step has a gradient.
    (grad,) = torch.autograd.grad(score(None)[1], core_out)
    assert grad[1, 0].abs().sum() > 0
