"""policy/screen_kl: 0 for a policy blind to the screen, clearly above 0 for one that reads it."""

from __future__ import annotations

import torch

from agent.config import ModelConfig
from agent.model import ActorCritic
from train.actor import Rollout
from train.screen_use import screen_kl

T, B = 6, 4


def _rollout() -> Rollout:
    # Black and white screens on alternating streams: what the policy sees differs from stream to stream.
    frames = torch.zeros(T + 1, B, 4, 84, 84, dtype=torch.uint8)
    frames[:, ::2] = 255
    no = torch.zeros(T + 1, B, dtype=torch.bool)
    zeros = torch.zeros(T + 1, B, dtype=torch.int64)
    return Rollout(frames=frames, reward=torch.zeros(T + 1, B), first=no, terminated=no, done=no, life_lost=no,
                   prev_action=zeros, action=zeros, behaviour_logits=torch.zeros(T + 1, B, 18), game_id=zeros,
                   initial_state=(torch.zeros(B, 32), torch.zeros(B, 32)))


def _model() -> ActorCritic:
    torch.manual_seed(0)
    model = ActorCritic(ModelConfig(hidden_size=32, core="lstm", learning="tbptt"), 18)
    with torch.no_grad():
        model.policy.weight.mul_(50.0)  # a decisive policy, so that what it sees shows in pi
    return model


def test_a_policy_that_reads_the_screen_has_a_positive_kl():
    assert screen_kl(_model(), _rollout(), 1.0, torch.Generator().manual_seed(1)) > 1e-4


def test_a_policy_blind_to_the_screen_has_zero_kl():
    model = _model()
    with torch.no_grad():
        model.encoder.net[-2].weight.zero_()  # the encoder's output no longer depends on the frames
    assert abs(screen_kl(model, _rollout(), 1.0, torch.Generator().manual_seed(1))) < 1e-9


def test_the_measurement_changes_no_parameter():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    screen_kl(model, _rollout(), 1.0, torch.Generator().manual_seed(1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
