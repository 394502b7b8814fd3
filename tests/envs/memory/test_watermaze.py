"""watermaze: reward exactly on the hidden platform, re-spawn after it, a platform fixed per episode, never seen."""

import numpy as np

from envs.memory.base import FORWARD, LEFT
from envs.memory.raycast import DC, DR
from envs.registry import game_id, make_env


def _env(num_envs: int = 2, seed: int = 0, **kw):
    env = make_env("watermaze", num_envs=num_envs, seed=seed, **kw)
    env.reset()
    return env


def _cell(env) -> tuple[np.ndarray, np.ndarray]:
    """The cells [B] the agents stand in (the walker moves on a lattice of env.sub points per cell)."""
    return env.walker.row // env.sub, env.walker.col // env.sub


def _face_platform_from_a_neighbour(env, b: int) -> None:
    """Place stream b on the lattice point next to its platform's cell, facing it."""
    k = env.sub
    pr, pc = env.platform[b] * k  # the platform cell's first lattice point
    for h in range(4):
        # Step back from the cell's edge point that faces heading h's opposite side.
        r = pr + (k - 1 if DR[h] < 0 else 0) - DR[h]
        c = pc + (k - 1 if DC[h] < 0 else 0) - DC[h]
        if env.map[r // k, c // k] == 0:
            env.walker.place(np.array([b]), np.array([r]), np.array([c]), np.array([h]))
            return
    raise AssertionError("platform without an open neighbour")


def test_stepping_onto_the_platform_pays_10_then_respawns_elsewhere_and_the_platform_stays():
    env = _env()
    platform = env.platform.copy()
    _face_platform_from_a_neighbour(env, 0)
    s = env.step(np.array([FORWARD, LEFT]))
    assert s.reward[0] == 10.0 and s.reward[1] == 0.0
    assert (_cell(env)[0][0], _cell(env)[1][0]) == tuple(platform[0])  # the reward comes with the platform's view
    s = env.step(np.array([LEFT, LEFT]))  # any action: the agent is re-spawned
    assert s.reward[0] == 0.0
    assert (_cell(env)[0][0], _cell(env)[1][0]) != tuple(platform[0])
    np.testing.assert_array_equal(env.platform, platform)  # fixed for the whole episode


def test_reward_arrives_only_when_the_agent_is_on_the_platform():
    env = _env(num_envs=8, seed=5)
    rng = np.random.default_rng(1)
    finds = 0
    for _ in range(2000):
        s = env.step(rng.integers(0, 3, 8))
        row, col = _cell(env)
        on = (row == env.platform[:, 0]) & (col == env.platform[:, 1])
        np.testing.assert_array_equal(s.reward > 0, on & ~s.first)
        assert set(np.unique(s.reward)) <= {0.0, 10.0}
        finds += int(on.sum())
    assert finds > 20  # the random walk does find it, so the check above had positives to test


def test_turning_or_bumping_a_wall_never_pays():
    env = _env(num_envs=1)
    k = env.sub
    env.walker.place(np.array([0]), np.array([k]), np.array([k]), np.array([0]))  # corner point, facing the wall
    env.platform[0] = (3, 3)
    for action in (FORWARD, LEFT, FORWARD, LEFT):
        assert env.step(np.array([action])).reward[0] == 0.0


def test_each_episode_hides_the_platform_anew_and_the_time_limit_ends_it():
    env = make_env("watermaze", num_envs=16, seed=2, max_episode_steps=5)
    env.reset()
    first = env.platform.copy()
    for _ in range(5):
        s = env.step(np.full(16, LEFT))
    assert s.truncated.all() and not s.terminated.any()
    s = env.step(np.full(16, LEFT))
    assert s.first.all()
    assert (env.platform != first).any(axis=1).sum() >= 8  # new positions (1/25 chance each to repeat)


def test_the_observation_does_not_depend_on_where_the_platform_is():
    a, b = _env(num_envs=1, seed=0), _env(num_envs=1, seed=0)
    b.platform[0] = (1, 1) if tuple(a.platform[0]) != (1, 1) else (5, 5)
    rng = np.random.default_rng(3)
    for _ in range(200):
        # Keep both agents in the same pose; only the hidden platform differs.
        b.walker.place(np.array([0]), a.walker.row.copy(), a.walker.col.copy(), a.walker.heading.copy())
        b.at_target[:] = False
        a.at_target[:] = False
        action = rng.integers(0, 3, 1)
        sa, sb = a.step(action), b.step(action)
        np.testing.assert_array_equal(sa.obs[:, -1], sb.obs[:, -1])


def test_walls_tell_headings_apart():
    """The four walls carry different textures: from the centre, each heading shows a different view."""
    env = _env(num_envs=4)
    centre = (env.size + 2) * env.sub // 2
    env.walker.place(np.arange(4), np.full(4, centre), np.full(4, centre), np.arange(4))
    views = env._views()
    assert len({v.tobytes() for v in views}) == 4
    assert game_id("watermaze") == env.step(np.zeros(4, dtype=np.int64)).game_id[0]
