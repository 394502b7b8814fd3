"""The delayed-cue T-maze: the cue only at the start, exact delays, reward only at the cued exit,
seeding, action masks, oracle and random scores, bad names refused in one line (exit 2), and the
MoE core on it without a game detector (``--prefetch detector`` refused, the default follows to lru)."""

import re

import numpy as np
import pytest

from common.errors import UserError
from envs.memory import tmaze
from envs.memory.oracle import episode_scores
from envs.registry import GAMES, action_masks, game_id, make_env, num_actions, resolve_game, score_bounds
from tests.conftest import run_cli
from train.config import preset, reconcile


def _episode(game: str, num_envs: int, seed: int, actions) -> tuple[list, "tmaze.TMaze"]:
    """Steps of one episode per stream: [reset step, then D + 2 steps], ``actions(env)`` -> int64 [B]."""
    env = make_env(game, num_envs, seed=seed)
    steps = [env.reset()]
    for _ in range(env.delay + 2):
        steps.append(env.step(actions(env)))
    return steps, env


@pytest.mark.parametrize("game,exits", [("tmaze-1", 2), ("tmaze-7", 2), ("tmaze-30-k4", 4)])
def test_the_cue_is_visible_only_on_the_first_step_and_then_nothing_tells_it_apart(game, exits):
    B = 64
    rng = np.random.default_rng(0)
    steps, env = _episode(game, B, seed=0, actions=lambda e: rng.integers(0, exits, B))
    obs = np.stack([s.obs for s in steps])  # [D + 3, B, 1, K + 2]
    D = env.delay
    assert obs.shape == (D + 3, B, 1, exits + 2) and obs.dtype == np.uint8
    first = obs[0, :, 0]
    np.testing.assert_array_equal(first[:, :exits], np.eye(exits, dtype=np.uint8)[env.cue])
    assert (first[:, exits:] == 0).all()
    assert len(set(env.cue.tolist())) == exits  # every cue occurs among 64 streams
    # Corridor, junction and exit views are the same in every stream, whatever its cue.
    assert (obs[1:] == obs[1:, :1]).all()
    corridor, junction, exit_ = obs[1:D + 1, 0, 0], obs[D + 1, 0, 0], obs[D + 2, 0, 0]
    assert (corridor == np.eye(exits + 2, dtype=np.uint8)[exits]).all()
    np.testing.assert_array_equal(junction, np.eye(exits + 2, dtype=np.uint8)[exits + 1])
    assert (exit_ == 0).all()


@pytest.mark.parametrize("delay", [1, 2, 5, 100])
def test_every_episode_is_exactly_delay_plus_2_steps_whatever_the_actions(delay):
    B = 16
    env = make_env(tmaze.name(delay, 3), B, seed=1)
    rng = np.random.default_rng(1)
    env.reset()
    lengths, t = [], np.zeros(B, dtype=np.int64)
    for _ in range(3 * (delay + 2) + 2):  # three whole episodes: the 2nd and 3rd start one step late
        s = env.step(rng.integers(0, 3, B))
        t = np.where(s.first, 0, t + 1)
        assert not s.truncated.any()
        np.testing.assert_array_equal(s.terminated, t == delay + 2)
        lengths += [n for _, n in s.finished]
    assert lengths == [delay + 2] * (3 * B)


def test_reward_is_1_only_at_the_cued_exit_and_only_at_the_choice():
    B, K = 64, 4
    rng = np.random.default_rng(12)  # not the env's seed: its first draws are the cues
    choice = rng.integers(0, K, B)
    # Random actions in the corridor, ``choice`` at the junction.
    steps, env = _episode("tmaze-6-k4", B, seed=2, actions=lambda e: np.where(
        e.position == e.delay + 1, choice, rng.integers(0, K, B)))
    rewards = np.stack([s.reward for s in steps])
    assert (rewards[:-1] == 0).all()
    np.testing.assert_array_equal(rewards[-1], (choice == env.cue).astype(np.float32))
    assert 0 < rewards[-1].sum() < B
    assert steps[-1].terminated.all()
    assert [r for r, _ in steps[-1].finished] == rewards[-1].tolist()


@pytest.mark.parametrize("game,exits", [("tmaze-1", 2), ("tmaze-5-k4", 4)])
def test_the_step_mask_offers_every_exit_at_the_junction_and_only_action_0_elsewhere(game, exits):
    B = 8
    rng = np.random.default_rng(3)
    env = make_env(game, B, seed=0)
    D = env.delay
    steps = [env.reset()] + [env.step(rng.integers(0, exits, B)) for _ in range(2 * (D + 3))]
    only_0 = np.eye(exits, dtype=bool)[np.zeros(B, dtype=np.int64)]
    for t, s in enumerate(steps):  # two episodes: positions 0 .. D + 2, then the auto-reset start
        assert s.allowed.shape == (B, exits) and s.allowed.dtype == bool
        expect = np.ones((B, exits), dtype=bool) if t % (D + 3) == D + 1 else only_0
        np.testing.assert_array_equal(s.allowed, expect, err_msg=f"step {t}")


def test_same_seed_gives_the_same_cues_and_another_seed_differs():
    def cues(seed: int) -> np.ndarray:
        env = make_env("tmaze-3", 32, seed=seed)
        out = [env.reset().obs[:, 0, :2]]
        for _ in range(3 * 6):  # three more episodes: D + 2 steps each, then the auto-reset step
            s = env.step(np.zeros(32, dtype=np.int64))
            out += [s.obs[s.first, 0, :2]]
        return np.concatenate(out)

    a, b, c = cues(5), cues(5), cues(6)
    assert len(a) == 4 * 32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_names_ids_scores_and_action_masks():
    assert resolve_game("TMaze_100") == "tmaze-100" and resolve_game("tmaze-100-K4") == "tmaze-100-k4"
    assert resolve_game("tmaze-100-k2") == "tmaze-100"
    # Every delay of a K-exit maze shares the id of its family's entry, after the fixed tasks.
    assert game_id("tmaze-5") == game_id("tmaze-500") == GAMES.index("tmaze-D")
    assert game_id("tmaze-5-k4") == GAMES.index("tmaze-D-k4") != game_id("tmaze-5")
    masks = action_masks("minimal")
    for game, k in [("tmaze-9", 2), ("tmaze-9-k3", 3), ("tmaze-9-k4", 4)]:
        assert num_actions(game) == k == make_env(game, 1, seed=0).num_actions
        assert masks[game_id(game)].tolist() == [True] * k + [False] * (18 - k)
        assert score_bounds(game) == pytest.approx((1 / k, 1.0))
    env = make_env("tmaze-3", 2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, 2]))


@pytest.mark.parametrize("game,k", [("tmaze-100", 2), ("tmaze-20-k4", 4)])
def test_the_oracle_scores_1_and_random_play_about_1_over_k(game, k):
    assert (episode_scores(game, "oracle", episodes=64, seed=0) == 1.0).all()
    random = episode_scores(game, "random", episodes=2000, seed=0)
    assert set(random.tolist()) <= {0.0, 1.0}
    assert abs(random.mean() - 1 / k) < 4 * np.sqrt(1 / k * (1 - 1 / k) / 2000)


@pytest.mark.parametrize("bad", ["tmaze-0", "tmaze-abc", "tmaze-10-k1", "tmaze-10-k9", "tmaze", "tmaze-D", "tmaze--3"])
def test_bad_names_are_user_errors(bad):
    with pytest.raises(UserError, match="tmaze-D or tmaze-D-kK"):
        resolve_game(bad)


@pytest.mark.parametrize("games", ["tmaze-0", "tmaze-abc", "tmaze-100-k1"])
def test_bad_names_on_the_command_line_give_one_line_and_exit_2(games):
    proc = run_cli("train", "--games", games)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad T-maze name" in lines[0], proc.stderr


@pytest.mark.parametrize("games,encoder,core,cap,expect", [
    ("tmaze-50", "nature", "elstm", 27000, "--encoder nature reads 4 x 84 x 84 frames"),
    ("tmaze-50", "resnet", "elstm", 27000, "--encoder resnet reads 4 x 84 x 84 frames"),
    ("Pong", "mlp", "elstm", 27000, "--encoder mlp reads small observations"),
    ("tmaze-50,Pong", "mlp", "elstm", 27000, "one observation shape"),
    ("tmaze-50", "mlp", "moe", 27000, "--prefetch detector needs the game detector, which reads 4 x 84 x 84 frames"),
    ("tmaze-50", "mlp", "elstm", 40, "raise it to at least 52"),
])
def test_encoders_cores_and_episode_caps_that_do_not_fit_the_games_are_refused(games, encoder, core, cap, expect):
    cfg = preset("memory-rtrl" if core != "moe" else "default")
    cfg.env.games, cfg.model.encoder, cfg.model.core, cfg.env.max_episode_steps = games.split(","), encoder, core, cap
    with pytest.raises(UserError, match=re.escape(expect)):
        cfg.validate()


def test_tmaze_with_the_mlp_encoder_validates_and_a_cnn_on_it_fails_in_one_line_on_the_command_line():
    cfg = preset("memory-rtrl")
    cfg.env.games, cfg.model.encoder = ["tmaze-50-k3"], "mlp"
    cfg.validate()
    proc = run_cli("train", "--preset", "memory-rtrl", "--games", "tmaze-50")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "use --encoder mlp" in lines[0], proc.stderr


@pytest.mark.parametrize("routing", ["learned", "game"])
def test_the_moe_core_runs_on_the_tmaze_without_a_detector_and_the_default_prefetch_follows_to_lru(routing):
    """No frames, no game detector: the default preset's --prefetch detector follows to lru (it was not
    chosen), and every prefetch mode but the detector's validates, oracle included (it knows the game
    from the schedule)."""
    cfg = preset("default")
    assert cfg.has_frames() and cfg.store.prefetch == "detector"
    cfg.env.games, cfg.model.encoder, cfg.model.routing = ["tmaze-50"], "mlp", routing
    assert not cfg.has_frames()
    assert reconcile(cfg, {"env.games", "model.encoder", "model.routing"}) == [
        "store.prefetch: 'detector' -> 'lru' (the game detector reads 84 x 84 frames; tmaze-50 has none)"]
    for prefetch in ("lru", "oracle", "none"):
        cfg.store.prefetch = prefetch
        cfg.validate()


def test_detector_prefetch_on_the_tmaze_is_one_line_naming_the_modes_that_work(tmp_path):
    run_dir = tmp_path / "r"
    proc = run_cli("train", "--preset", "memory-rtrl", "--games", "tmaze-10", "--encoder", "mlp", "--core", "moe",
                   "--prefetch", "detector", "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--prefetch detector" in lines[0] and "84 x 84 frames" in lines[0] and "tmaze-10" in lines[0]
    assert all(mode in lines[0] for mode in ("--prefetch oracle", "lru", "none")), lines[0]
    assert not run_dir.exists()
