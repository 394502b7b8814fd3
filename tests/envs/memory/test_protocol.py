"""Every memory task behind the Atari env interface: shapes, auto-reset bookkeeping, episode length, seeding.

Real tasks (and envpool's real MiniGrid), random actions, fixed seeds; the bookkeeping is checked
against counts kept here, as tests/envs/test_atari.py does for Atari.
"""

import numpy as np
import pytest

from envs.memory import MEMORY_EXAMPLES, MEMORY_TASKS
from envs.registry import GAMES, game_id, make_env, num_actions

TASKS = list(MEMORY_EXAMPLES)
FRAME_TASKS = [g for g in TASKS if not g.startswith("tmaze")]
"""The tasks seen as frames (the T-maze's small observations: tests/envs/memory/test_tmaze.py)."""


@pytest.mark.parametrize("game", FRAME_TASKS)
def test_observations_are_uint8_frame_stacks_of_84x84_views_with_the_game_id(game):
    env = make_env(game, num_envs=3, seed=0)
    start = env.reset()
    assert start.obs.shape == (3, 4, 84, 84) and start.obs.dtype == np.uint8
    assert start.first.all() and start.finished == [] and (start.reward == 0).all()
    # An episode's first observation repeats its first view in all 4 channels.
    assert (start.obs == start.obs[:, -1:]).all()
    step = env.step(np.zeros(3, dtype=np.int64))
    assert step.obs.shape == (3, 4, 84, 84) and step.obs.dtype == np.uint8
    # The stack shifts by one view per step: the old newest view is now second newest.
    np.testing.assert_array_equal(step.obs[:, -2], start.obs[:, -1])
    assert (step.game_id == game_id(game)).all() and GAMES[game_id(game)] == game
    assert 0 < step.obs.std()  # a real picture, not a constant
    env.close()


@pytest.mark.parametrize("game", TASKS)
def test_auto_reset_marks_first_and_reports_each_finished_episode_once(game):
    B, cap = 4, 40
    env = make_env(game, num_envs=B, seed=3, max_episode_steps=cap)
    rng = np.random.default_rng(0)
    env.reset()
    ret, length = np.zeros(B), np.zeros(B, dtype=np.int64)
    prev_ended = np.zeros(B, dtype=bool)
    episodes = 0
    for _ in range(3 * cap):
        s = env.step(rng.integers(0, num_actions(game), B))
        np.testing.assert_array_equal(s.first, prev_ended)
        assert (s.reward[s.first] == 0).all()
        ret = np.where(s.first, 0.0, ret + s.reward)
        length = np.where(s.first, 0, length + 1)
        ended = s.terminated | s.truncated
        assert not (s.terminated & s.truncated).any()
        # The cap ends an episode as a truncation, exactly at `cap` steps.
        np.testing.assert_array_equal(s.truncated, (length == cap) & ~s.terminated)
        assert [(r, n) for r, n in s.finished] == [(pytest.approx(ret[b]), length[b]) for b in np.flatnonzero(ended)]
        episodes += int(ended.sum())
        prev_ended = ended
    assert episodes >= 2 * B
    env.close()


@pytest.mark.parametrize("game", TASKS)
def test_same_seed_and_actions_reproduce_the_episode_and_another_seed_does_not(game):
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = make_env(game, num_envs=2, seed=seed, max_episode_steps=30)
        rng = np.random.default_rng(7)
        frames, rewards = [env.reset().obs], []
        for _ in range(70):  # crosses two episode boundaries
            s = env.step(rng.integers(0, num_actions(game), 2))
            frames.append(s.obs)
            rewards.append(s.reward)
        env.close()
        return np.stack(frames), np.stack(rewards)

    a, b, c = run(11), run(11), run(12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("game", TASKS)
def test_actions_outside_the_task_are_refused(game):
    env = make_env(game, num_envs=2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, num_actions(game)]))
    env.close()


@pytest.mark.parametrize("game", ["watermaze", "nonmatching", "goal_locations"])
def test_the_scripted_oracle_scores_far_above_random(game):
    from envs.memory.oracle import episode_scores

    oracle = episode_scores(game, "oracle", episodes=4, seed=1)
    random = episode_scores(game, "random", episodes=4, seed=1)
    assert oracle.mean() > 5 * max(random.mean(), 1.0)
    # The registered bounds are of the same size as a fresh measurement.
    task = MEMORY_TASKS[game]
    assert 0.7 * task.oracle_score < oracle.mean() < 1.3 * task.oracle_score
