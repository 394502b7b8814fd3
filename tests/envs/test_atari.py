"""Real Atari environments (envpool and ale-py) under the Machado et al. protocol, and the game registry.

No mocks: every test steps real ROMs with fixed seeds. The auto-reset bookkeeping (``first``,
``finished``) is checked against episode statistics that the test tracks on its own.
"""

import numpy as np
import pytest

from envs.atari import NUM_ACTIONS, OBS_SHAPE
from envs.registry import GAMES, game_id, make_env, resolve_game, resolve_games
from common.errors import UserError


def _run_and_check_episode_bookkeeping(env, steps: int, seed: int) -> dict:
    """Step ``env`` with random actions and check ``first``/``reward``/``finished`` against an independent count.

    Returns statistics (ended episodes, terminations, truncations, largest |raw reward|) for further checks.
    """
    rng = np.random.default_rng(seed)
    B = env.num_envs
    start = env.reset()
    assert start.first.all() and not start.terminated.any() and not start.truncated.any()
    assert start.finished == []
    ret = np.zeros(B, dtype=np.float64)
    length = np.zeros(B, dtype=np.int64)
    prev_ended = np.zeros(B, dtype=bool)
    stats = {"episodes": 0, "terminated": 0, "truncated": 0, "max_abs_reward": 0.0}
    for _ in range(steps):
        s = env.step(rng.integers(0, NUM_ACTIONS, B))
        # The step after an end is the new episode's first observation, with no reward.
        np.testing.assert_array_equal(s.first, prev_ended)
        assert (s.reward[s.first] == 0).all()
        for b in range(B):
            if s.first[b]:
                ret[b], length[b] = 0.0, 0
            else:
                ret[b] += float(s.reward[b])
                length[b] += 1
        ended = s.terminated | s.truncated
        assert not (ended & s.first).any(), "an episode cannot end on its own first observation"
        expected = [(float(ret[b]), int(length[b])) for b in np.flatnonzero(ended)]
        assert len(s.finished) == int(ended.sum())
        for (got_ret, got_len), (want_ret, want_len) in zip(s.finished, expected):
            assert got_len == want_len
            assert got_ret == pytest.approx(want_ret, abs=1e-6)
        stats["episodes"] += int(ended.sum())
        stats["terminated"] += int(s.terminated.sum())
        stats["truncated"] += int(s.truncated.sum())
        stats["max_abs_reward"] = max(stats["max_abs_reward"], float(np.abs(s.reward).max()))
        prev_ended = ended
    return stats


@pytest.fixture(scope="module")
def breakout_short():
    """Breakout capped at 150 agent steps: random play loses some games before the cap and hits it in others."""
    env = make_env("Breakout", num_envs=4, seed=1, max_episode_steps=150)
    yield env
    env.close()


# envpool backend ----------------------------------------------------------------------------------


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_envpool_gives_uint8_stacked_frames_18_actions_and_the_registry_game_id(game):
    env = make_env(game, num_envs=3, seed=0)
    try:
        assert env.num_actions == NUM_ACTIONS == 18
        for s in (env.reset(), env.step(np.full(3, 17))):  # 17 = DOWNLEFTFIRE exists only in the full set
            assert s.obs.shape == (3, *OBS_SHAPE) == (3, 4, 84, 84)
            assert s.obs.dtype == np.uint8
            assert s.reward.shape == s.terminated.shape == s.truncated.shape == s.first.shape == (3,)
            assert s.game_id.dtype == np.int64
            np.testing.assert_array_equal(s.game_id, np.full(3, game_id(game)))
        assert env.step(np.zeros(3)).obs.any(), "frames should not be blank"
    finally:
        env.close()


def test_envpool_auto_reset_is_masked_and_finished_reports_each_ended_episode_once(breakout_short):
    stats = _run_and_check_episode_bookkeeping(breakout_short, steps=320, seed=0)
    # Both kinds of ending happened, so both paths of the bookkeeping were exercised.
    assert stats["terminated"] > 0 and stats["truncated"] > 0
    assert stats["episodes"] >= 6


def test_envpool_truncation_at_max_episode_steps_is_truncated_not_terminated():
    env = make_env("Breakout", num_envs=2, seed=0, max_episode_steps=50)
    try:
        env.reset()
        rng = np.random.default_rng(0)
        for t in range(1, 50):
            s = env.step(rng.integers(0, NUM_ACTIONS, 2))
            assert not (s.terminated | s.truncated).any(), f"ended early at step {t}"
        s = env.step(rng.integers(0, NUM_ACTIONS, 2))
        np.testing.assert_array_equal(s.truncated, [True, True])
        np.testing.assert_array_equal(s.terminated, [False, False])
        assert [length for _, length in s.finished] == [50, 50]
        s = env.step(rng.integers(0, NUM_ACTIONS, 2))
        assert s.first.all() and (s.reward == 0).all() and not s.truncated.any()
    finally:
        env.close()


def test_envpool_returns_raw_unclipped_rewards_and_sums_them_into_the_episode_return():
    # Asterix pays 50 per item; random play collects some within the first 100 steps.
    env = make_env("Asterix", num_envs=4, seed=1, max_episode_steps=120)
    try:
        stats = _run_and_check_episode_bookkeeping(env, steps=250, seed=0)
        assert stats["max_abs_reward"] >= 50
        assert stats["episodes"] >= 4
    finally:
        env.close()


def _observations(game: str, seed: int, steps: int, num_envs: int = 2, backend: str = "envpool") -> np.ndarray:
    env = make_env(game, num_envs=num_envs, seed=seed, backend=backend)
    try:
        actions = np.random.default_rng(123).integers(0, NUM_ACTIONS, (steps, num_envs))
        frames = [env.reset().obs]
        frames += [env.step(a).obs for a in actions]
        return np.stack(frames)
    finally:
        env.close()


def test_envpool_same_seed_and_actions_replay_identically_and_other_seeds_differ():
    a = _observations("Breakout", seed=7, steps=60)
    b = _observations("Breakout", seed=7, steps=60)
    c = _observations("Breakout", seed=8, steps=60)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# gymnasium (ale-py) backend -----------------------------------------------------------------------


def test_gymnasium_backend_gives_the_same_shapes_dtypes_and_game_id():
    env = make_env("Pong", num_envs=2, seed=0, backend="gymnasium")
    try:
        assert env.num_actions == 18
        for s in (env.reset(), env.step(np.full(2, 17))):
            assert s.obs.shape == (2, 4, 84, 84) and s.obs.dtype == np.uint8
            assert s.reward.dtype == np.float32
            assert s.terminated.dtype == s.truncated.dtype == s.first.dtype == np.bool_
            np.testing.assert_array_equal(s.game_id, np.full(2, game_id("Pong")))
    finally:
        env.close()


def test_gymnasium_auto_reset_is_masked_and_finished_reports_each_ended_episode_once():
    env = make_env("Breakout", num_envs=4, seed=1, max_episode_steps=150, backend="gymnasium")
    try:
        stats = _run_and_check_episode_bookkeeping(env, steps=320, seed=0)
        assert stats["terminated"] > 0 and stats["truncated"] > 0
    finally:
        env.close()


def test_gymnasium_truncation_and_raw_rewards_match_the_envpool_protocol():
    env = make_env("Asterix", num_envs=4, seed=1, max_episode_steps=120, backend="gymnasium")
    try:
        stats = _run_and_check_episode_bookkeeping(env, steps=250, seed=0)
        assert stats["max_abs_reward"] >= 50
        assert stats["truncated"] > 0
    finally:
        env.close()


def test_gymnasium_same_seed_replays_identically():
    a = _observations("Breakout", seed=7, steps=40, backend="gymnasium")
    b = _observations("Breakout", seed=7, steps=40, backend="gymnasium")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("game", ["MontezumaRevenge", "UpNDown", "SpaceInvaders"])
def test_gymnasium_backend_maps_envpool_names_to_ale_rom_ids(game):
    env = make_env(game, num_envs=1, seed=0, backend="gymnasium")
    try:
        env.reset()
        s = env.step(np.zeros(1))
        assert s.obs.shape == (1, 4, 84, 84)
        assert s.game_id[0] == game_id(game)
    finally:
        env.close()


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="envpool"):
        make_env("Pong", num_envs=1, seed=0, backend="retro")


# registry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, canonical",
    [("pong", "Pong"), ("Pong", "Pong"), ("PONG", "Pong"), ("space_invaders", "SpaceInvaders"),
     ("Space-Invaders", "SpaceInvaders"), ("montezuma_revenge", "MontezumaRevenge"), ("up_n_down", "UpNDown"),
     ("Breakout-v5", "Breakout")],
)
def test_resolve_game_ignores_case_underscores_and_dashes(name, canonical):
    assert resolve_game(name) == canonical


def test_resolve_games_keeps_the_schedule_order():
    assert resolve_games(["breakout", "pong", "space_invaders"]) == ["Breakout", "Pong", "SpaceInvaders"]


def test_unknown_game_is_a_user_error_that_suggests_the_close_name():
    with pytest.raises(UserError) as info:
        resolve_game("Pongg")
    assert "Pong" in str(info.value) and "Pongg" in str(info.value)


def test_hopeless_game_name_is_a_user_error_pointing_at_the_games_listing():
    with pytest.raises(UserError, match="games"):
        resolve_game("zzzzqqq")


def test_game_ids_are_stable_distinct_indices_into_the_game_list():
    ids = [game_id(g) for g in GAMES]
    assert ids == list(range(len(GAMES)))
    assert game_id("Pong") != game_id("Breakout")
