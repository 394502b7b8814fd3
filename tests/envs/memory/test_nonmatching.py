"""nonmatching: +10 for the new object, -10 for the one seen first; the second room does not reveal which."""

import numpy as np

from envs.memory.nonmatching import SLOT_CELLS, START_B
from envs.memory.oracle import Oracle
from envs.registry import make_env


def _to_second_room(env) -> None:
    oracle = Oracle(env)
    while not env.in_second_room.all():
        env.step(oracle())


def test_choosing_the_new_object_pays_10_and_the_seen_one_costs_10():
    env = make_env("nonmatching", num_envs=6, seed=0)
    env.reset()
    _to_second_room(env)
    oracle = Oracle(env)
    rewards = np.zeros(6)
    while (rewards == 0).any():
        s = env.step(oracle())
        rewards = np.where(rewards == 0, s.reward, rewards)
    assert (rewards == 10).all()
    # The same trials, choosing the other object: -10 each.
    env = make_env("nonmatching", num_envs=6, seed=0)
    env.reset()
    _to_second_room(env)
    for b in range(6):
        new_slot = 1 if env.slot_objects[b, 1] != env.sample[b] else 2
        env.walker.place(np.array([b]), np.array([1]), np.array([SLOT_CELLS[3 - new_slot][1]]), np.array([0]))
    s = env.step(np.zeros(6, dtype=np.int64))
    assert (s.reward == -10).all()
    assert not env.in_second_room.any()  # the next trial starts in the first room


def test_no_reward_before_a_choice_and_the_trial_repeats_within_an_episode():
    env = make_env("nonmatching", num_envs=4, seed=1)
    env.reset()
    oracle = Oracle(env)
    trials = np.zeros(4)
    for _ in range(60):
        before = env.in_second_room.copy()
        s = env.step(oracle())
        # Reward only when an agent in the second room touched an object.
        assert (s.reward[~before] == 0).all()
        trials += s.reward != 0
    assert (trials >= 3).all()


def test_the_first_object_is_shown_in_the_first_room():
    env = make_env("nonmatching", num_envs=2, seed=0)
    env.reset()
    env.slot_objects[0, 0], env.slot_objects[1, 0] = 3, 9
    views = env._views()
    assert not np.array_equal(views[0], views[1])


def test_the_second_room_looks_the_same_whichever_object_was_seen_first():
    env = make_env("nonmatching", num_envs=2, seed=0)
    env.reset()
    _to_second_room(env)
    # Same pair on the same sides; stream 0 saw object 4 first, stream 1 saw object 11.
    env.slot_objects[:] = [[4, 4, 11], [11, 4, 11]]
    env.sample[:] = [4, 11]
    env.walker.place(np.arange(2), np.full(2, START_B[0]), np.full(2, START_B[1]), np.zeros(2, dtype=np.int64))
    rng = np.random.default_rng(0)
    for _ in range(3):  # turn and walk, never touching an object
        np.testing.assert_array_equal(env._views()[0], env._views()[1])
        a = rng.integers(1, 3)
        env.walker.move(np.full(2, a), np.arange(2), lambda _, r, c: env.map[r, c] != 0)
