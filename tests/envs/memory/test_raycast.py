"""The ray-caster: wall heights follow 1 / distance, views are mirror-symmetric where the room is, slots show objects."""

import numpy as np

from envs.memory.raycast import OBJECT_TEX, SIDE_DIM, SLOT0, VIEW, pose_index, render, view_table


def _room(width: int = 5) -> np.ndarray:
    m = np.ones((7, width + 2), dtype=np.int16)
    m[1:-1, 1:-1] = 0
    return m


def test_wall_height_is_view_over_perpendicular_distance():
    m = _room()
    table = view_table(m[None])
    W = m.shape[1]
    for row in range(1, 6):  # facing north from (row, 3): the wall's face is at y = 1
        dist = row + 0.5 - 1
        s = pose_index(np.array([row]), np.array([3]), np.array([0]), W)[0]
        expected = min(round(VIEW / dist), VIEW)
        assert abs(int(table.h2[0, s, VIEW // 2]) - expected) <= 1
        # A flat wall seen straight on has the same height in every column (no fish-eye).
        assert np.ptp(table.h2[0, s, 20:64]) <= 1


def test_poses_mirrored_about_the_room_s_centre_line_see_mirrored_walls():
    m = _room()  # open x in [1, 6]: centre line x = 3.5
    table = view_table(m[None], sub=2)
    W = m.shape[1] * 2
    # Lattice columns 6 and 7 stand at x = 3.25 and 3.75, a quarter cell either side of the centre.
    left, right = pose_index(np.array([9, 9]), np.array([6, 7]), np.array([0, 0]), W)
    np.testing.assert_allclose(table.h2[0, left].astype(int), table.h2[0, right, ::-1].astype(int), atol=1)
    assert not np.array_equal(table.h2[0, left], table.h2[0, right])


def test_object_slots_are_drawn_with_the_stream_s_object_and_walls_are_not():
    m = _room()
    m[0, 3] = SLOT0  # an object in the north wall, straight ahead of (3, 3)
    table = view_table(m[None])
    s = pose_index(np.array([3, 3]), np.array([3, 3]), np.array([0, 0]), m.shape[1])
    frames = render(table, np.zeros(2, dtype=np.int64), s, np.array([[2], [7]]))
    centre = VIEW // 2
    assert frames.shape == (2, VIEW, VIEW) and frames.dtype == np.uint8
    slot_cols = np.flatnonzero(table.slot[0, s[0]] == 0)
    assert centre in slot_cols and len(slot_cols) < VIEW
    assert not np.array_equal(frames[0][:, slot_cols], frames[1][:, slot_cols])
    wall_cols = np.flatnonzero(table.slot[0, s[0]] < 0)
    np.testing.assert_array_equal(frames[0][:, wall_cols], frames[1][:, wall_cols])
    # The slot's pixels come from the object's texture (dimmed: a north face, as walls facing north-south are).
    dimmed = {int(v * SIDE_DIM) for v in np.unique(OBJECT_TEX[2])}
    assert set(np.unique(frames[0][centre, slot_cols]).tolist()) == dimmed
