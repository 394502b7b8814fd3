"""minigrid_memory: envpool's MiniGrid-MemoryS7 through the memory-task interface."""

import numpy as np

from envs.memory.base import FORWARD, LEFT, RIGHT
from envs.registry import make_env


def test_episodes_end_by_the_rules_with_the_reward_of_the_choice_and_restart_in_step_with_envpool():
    env = make_env("minigrid_memory", num_envs=8, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    ended_by_rules = 0
    prev_ended = np.zeros(8, dtype=bool)
    for _ in range(600):
        s = env.step(rng.choice([FORWARD, FORWARD, LEFT, RIGHT], 8))
        np.testing.assert_array_equal(s.first, prev_ended)
        assert ((s.reward >= 0) & (s.reward <= 1)).all()
        # MiniGrid pays only at the end of an episode (a success), never mid-episode.
        assert (s.reward[~s.terminated] == 0).all()
        ended_by_rules += int(s.terminated.sum())
        prev_ended = s.terminated | s.truncated
    assert ended_by_rules > 0


def test_views_draw_the_symbolic_grid_in_12_pixel_cells():
    env = make_env("minigrid_memory", num_envs=1, seed=0)
    obs = env.reset().obs[0, -1]
    cells = obs.reshape(7, 12, 7, 12).transpose(0, 2, 1, 3)
    # The agent stands at the bottom centre, on an open (seen, non-wall) cell.
    centre = cells[6, 3]
    assert 0 < centre.mean() < 110
    # Unseen cells are black; walls are solid 12 x 12 blocks.
    image = env._image[0].transpose(1, 0, 2)
    for y in range(7):
        for x in range(7):
            if image[y, x, 0] == 0:
                assert (cells[y, x] == 0).all()
            if image[y, x, 0] == 2:
                assert cells[y, x].min() == cells[y, x].max() > 0
