"""``--encoder mlp``: small observations flattened through two layers; the schedule's shape sizes its input."""

import torch

from agent.config import ModelConfig
from agent.encoders import MLP, make_encoder
from agent.model import ActorCritic, Inputs
from envs.registry import game_id


def test_mlp_maps_small_uint8_observations_to_hidden_features():
    enc = make_encoder("mlp", 32, (1, 6))
    assert isinstance(enc, MLP)
    obs = torch.zeros(5, 1, 6, dtype=torch.uint8)
    obs[:, 0, 2] = 1
    out = enc(obs)
    assert out.shape == (5, 32) and (out >= 0).all()
    assert sum(p.numel() for p in enc.parameters()) == 6 * 32 + 32 + 32 * 32 + 32


def test_an_actor_critic_on_a_tmaze_reads_its_observations_and_masks_its_actions():
    torch.manual_seed(0)
    model = ActorCritic(ModelConfig(encoder="mlp", hidden_size=32, core="elstm", learning="rtrl", init="orthogonal"),
                        18, games=["tmaze-10-k3"])
    T, B = 4, 3
    obs = torch.zeros(T, B, 1, 5, dtype=torch.uint8)
    obs[0, :, 0, 0] = 1
    inp = Inputs(frames=obs, prev_action=torch.zeros(T, B, dtype=torch.int64), reward=torch.zeros(T, B),
                 first=torch.zeros(T, B, dtype=torch.bool), game_id=torch.full((T, B), game_id("tmaze-10-k3")))
    logits, values, _ = model(inp, model.initial_state(B))
    assert logits.shape == (T, B, 18) and values.shape == (T, B)
    probs = torch.softmax(logits, -1)
    assert (probs[..., 3:] == 0).all() and (probs[..., :3] > 0).all()
