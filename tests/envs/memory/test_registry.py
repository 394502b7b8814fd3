"""Memory tasks in the game registry, per-game action masks on the shared head, and a mixed schedule."""

import numpy as np
import pytest
import torch

from agent.model import ActorCritic, Inputs
from envs.atari_data import ATARI_GAMES
from envs.memory import MEMORY_TASKS
from envs.registry import GAMES, game_id, make_env, normalized_score, num_actions, resolve_game, score_bounds
from agent.config import ModelConfig
from train.config import preset
from common.errors import UserError


def test_memory_tasks_follow_the_57_atari_games_so_atari_ids_do_not_move():
    assert GAMES[:57] == ATARI_GAMES
    assert [game_id(g) for g in MEMORY_TASKS] == list(range(57, 57 + len(MEMORY_TASKS)))
    assert game_id("Zaxxon") == 56


@pytest.mark.parametrize("name,canonical", [("watermaze", "watermaze"), ("Goal-Locations", "goal_locations"),
                                            ("NonMatching", "nonmatching"), ("minigrid_memory", "minigrid_memory")])
def test_task_names_resolve_like_game_names(name, canonical):
    assert resolve_game(name) == canonical


def test_a_typo_in_a_task_name_suggests_it():
    with pytest.raises(UserError, match="watermaze"):
        resolve_game("watermaz")


def test_scores_normalise_random_to_0_and_oracle_to_1():
    for game, task in MEMORY_TASKS.items():
        assert score_bounds(game) == (task.random_score, task.oracle_score)
        assert task.random_score < task.oracle_score
        assert normalized_score(game, task.random_score) == pytest.approx(0.0)
        assert normalized_score(game, task.oracle_score) == pytest.approx(1.0)


def test_memory_episodes_are_cut_to_the_configured_cap_and_atari_is_unchanged():
    env = make_env("watermaze", num_envs=1, seed=0, max_episode_steps=27000)
    assert env.episode_steps == MEMORY_TASKS["watermaze"].episode_steps == 1800
    assert make_env("watermaze", num_envs=1, seed=0, max_episode_steps=300).episode_steps == 300
    assert num_actions("Pong") == 18 and num_actions("watermaze") == 3


def _logits(model: ActorCritic, game: str, B: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    inp = Inputs(frames=torch.randint(0, 255, (1, B, 4, 84, 84), dtype=torch.uint8),
                 prev_action=torch.zeros(1, B, dtype=torch.int64), reward=torch.zeros(1, B),
                 first=torch.ones(1, B, dtype=torch.bool), game_id=torch.full((1, B), game_id(game)))
    logits, _, _ = model(inp, model.initial_state(B))
    return logits[0]


def test_the_shared_head_gives_masked_actions_zero_probability_and_finite_losses():
    model = ActorCritic(ModelConfig(hidden_size=32, core="lstm", learning="tbptt"), 18)
    probs = torch.softmax(_logits(model, "watermaze"), -1)
    assert (probs[:, 3:] == 0).all() and torch.allclose(probs[:, :3].sum(-1), torch.ones(5))
    log_probs = torch.log_softmax(_logits(model, "watermaze"), -1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    assert torch.isfinite(entropy).all() and (entropy <= np.log(3) + 1e-6).all()
    # Atari keeps all 18 actions.
    assert (torch.softmax(_logits(model, "Pong"), -1) > 0).all()
    # The mask is derived, not saved: checkpoints keep their keys.
    assert "allowed_actions" not in model.state_dict()


def test_memory_presets_compare_rtrl_and_tbptt_on_watermaze_and_differ_only_in_learning():
    rtrl, tbptt = preset("memory-rtrl"), preset("memory-tbptt")
    rtrl.validate()
    tbptt.validate()
    assert rtrl.env.games == ["watermaze"] and rtrl.model.core == "elstm"
    assert (rtrl.model.learning, rtrl.model.unroll) == ("rtrl", 0)
    assert (tbptt.model.learning, tbptt.model.unroll) == ("tbptt", 10)
    a, b = rtrl.to_dict(), tbptt.to_dict()
    del a["model"]["learning"], a["model"]["unroll"], b["model"]["learning"], b["model"]["unroll"]
    assert a == b


def test_a_schedule_mixes_a_memory_task_and_atari(tmp_path):
    from tests.conftest import run_cli

    run_dir = tmp_path / "mixed"
    proc = run_cli("train", "--preset", "smoke", "--games", "watermaze,Pong", "--frames-per-game", "1600",
                   "--run-dir", str(run_dir), "--no-progress", check=True)
    assert "watermaze" in proc.stdout and "Pong" in proc.stdout
    import json

    doc = json.loads((run_dir / "eval" / "forgetting.json").read_text())
    assert doc["games"] == ["watermaze", "Pong"]
