"""goal_locations: labmaze mazes, reward only on touching the goal, re-spawn on a spawn cell, goal fixed per episode."""

import numpy as np

from envs.memory.base import FORWARD
from envs.memory.goal_locations import SIZE, generate_maze
from envs.memory.oracle import Oracle, shortest_moves
from envs.memory.raycast import DC, DR, SLOT0
from envs.registry import make_env


def test_mazes_are_11x11_closed_with_a_reachable_goal_and_spawns_and_depend_on_the_seed():
    for seed in range(20):
        m, spawns, goal = generate_maze(seed)
        assert m.shape == (SIZE, SIZE)
        assert (m[0] != 0).all() and (m[-1] != 0).all() and (m[:, 0] != 0).all() and (m[:, -1] != 0).all()
        assert m[tuple(goal)] == SLOT0 and len(spawns) > 0
        assert all(m[tuple(s)] == 0 for s in spawns)
        target = np.zeros_like(m, dtype=bool)
        target[tuple(goal)] = True
        # Every spawn reaches the goal: follow the shortest-path policy for at most 4 * cells steps.
        plan = shortest_moves(m != 0, target)
        for r, c in spawns:
            h = 0
            for _ in range(4 * SIZE * SIZE):
                a = plan[(r * SIZE + c) * 4 + h]
                if a == FORWARD:
                    nr, nc = r + DR[h], c + DC[h]
                    if (nr, nc) == tuple(goal):
                        break
                    if m[nr, nc] == 0:
                        r, c = nr, nc
                else:
                    h = (h + (3 if a == 1 else 1)) % 4
            else:
                raise AssertionError(f"goal not reached from spawn in maze {seed}")
    assert not np.array_equal(generate_maze(0)[0], generate_maze(1)[0])


def test_touching_the_goal_pays_10_then_respawns_on_a_spawn_cell_and_the_goal_stays():
    env = make_env("goal_locations", num_envs=4, seed=0)
    env.reset()
    goal, maps = env.goal.copy(), env.maps.copy()
    oracle = Oracle(env)
    found = np.zeros(4, dtype=bool)
    for _ in range(200):
        s = env.step(oracle())
        if s.reward.any():
            b = np.flatnonzero(s.reward)
            assert (s.reward[b] == 10).all()
            # Rewarded streams stand in front of the goal, facing it.
            r, c, h = env.walker.row[b], env.walker.col[b], env.walker.heading[b]
            np.testing.assert_array_equal(np.stack([r + DR[h], c + DC[h]], 1), goal[b])
            s = env.step(oracle())
            for k in b:
                assert any((env.walker.row[k], env.walker.col[k]) == tuple(p) for p in env.spawns[k])
            found[b] = True
        np.testing.assert_array_equal(env.goal, goal)
        np.testing.assert_array_equal(env.maps, maps)
    assert found.all()


def test_random_walk_rewards_only_goal_touches():
    env = make_env("goal_locations", num_envs=8, seed=4)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(500):
        r, c, h = env.walker.row.copy(), env.walker.col.copy(), env.walker.heading.copy()
        leaving = env.at_target.copy()
        a = rng.integers(0, 3, 8)
        s = env.step(a)
        ahead = (r + DR[h] == env.goal[:, 0]) & (c + DC[h] == env.goal[:, 1])
        np.testing.assert_array_equal(s.reward > 0, (a == FORWARD) & ahead & ~leaving & ~s.first)


def test_a_new_episode_builds_a_new_maze():
    env = make_env("goal_locations", num_envs=2, seed=0, max_episode_steps=3)
    env.reset()
    maps = env.maps.copy()
    for _ in range(4):
        env.step(np.ones(2, dtype=np.int64))
    assert (env.maps != maps).any(axis=(1, 2)).all()
