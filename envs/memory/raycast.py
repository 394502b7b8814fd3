"""First-person views of grid worlds: a DDA ray-march per screen column, then one broadcast fill.

The memory tasks move the agent between the points of a lattice (cell centres, or ``sub`` x ``sub``
points per cell) and turn it by 90 degrees, so a map has a finite set of poses,
state = (row * width + col) * 4 + heading. :func:`view_table` ray-marches every
pose once (Lodev's DDA: per screen column the perpendicular distance to the first solid cell, which
side of it was hit and where along it) and keeps per column only what drawing needs:

    h2    uint8 [..., S, 84]  twice the half-height of the wall slice in pixels (0..84)
    shade uint8 [..., S, 84]  its gray level (the texture's column at the hit point, dimmed on
                              north/south faces so corners read as corners)
    slot  int8  [..., S, 84]  -1 for a wall, k >= 0 when the column hits object slot k, whose
                              texture a task picks per stream at render time
    u     uint8 [..., S, 84]  texture column (0..TEX_W-1) of the hit, used for slots

:func:`render` then draws B frames with one comparison, ``|2 r + 1 - 84| < h2``, against the
rows: ceiling above, floor below, the wall slice between. No per-pixel texture lookups, so a
batch of 64 frames costs about a millisecond.

Cell codes of a map: 0 empty, ``1..`` wall textures (:data:`WALL_TEX`), ``SLOT0 + k`` object
slot k (solid; drawn with the stream's object texture, :data:`OBJECT_TEX`).
Headings: 0 north (-row), 1 east (+col), 2 south, 3 west; turning right adds 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIEW = 84
"""Frames are VIEW x VIEW gray pixels (the encoder's input size)."""
TEX_W = 16
"""Texture columns per wall face."""
FOV_TAN = 1.0
"""tan(half the horizontal field of view): 90 degrees, as DMLab's default."""
SLOT0 = 100
"""Map code of object slot 0 (slot k is SLOT0 + k)."""
CEILING, FLOOR = 40, 95
"""Gray levels of the ceiling and the floor (uniform: nothing is hidden or shown there)."""

DR = np.array([-1, 0, 1, 0])
"""Row step of each heading (north, east, south, west)."""
DC = np.array([0, 1, 0, -1])
"""Column step of each heading."""


def _textures() -> tuple[np.ndarray, np.ndarray]:
    """Wall and object textures, uint8 [n, TEX_W]: vertical stripe patterns that differ in period and level."""
    u = np.arange(TEX_W)
    walls = [np.full(TEX_W, 0)]  # code 0 is empty and never drawn
    for period, lo, hi in [(16, 200, 200), (16, 120, 120), (4, 130, 230), (8, 60, 170), (16, 90, 220),
                           (2, 150, 190), (8, 200, 110), (4, 70, 110)]:
        walls.append(np.where((u % period) < period // 2, hi, lo))
    objects = []
    for k in range(16):
        period = (2, 4, 8, 16)[k % 4]
        lo, hi = ((20, 255), (255, 20), (80, 200), (140, 0))[k // 4]
        objects.append(np.where((u % period) < max(period // 2, 1), hi, lo))
    return np.array(walls, dtype=np.uint8), np.array(objects, dtype=np.uint8)


WALL_TEX, OBJECT_TEX = _textures()
"""WALL_TEX uint8 [9, TEX_W] (code 1..8 are walls); OBJECT_TEX uint8 [16, TEX_W] (the objects a task draws in slots)."""
NUM_OBJECTS = len(OBJECT_TEX)
_ROWS2 = np.abs(2 * np.arange(VIEW) + 1 - VIEW).astype(np.uint8)
_BACKGROUND = np.where(np.arange(VIEW) < VIEW // 2, CEILING, FLOOR).astype(np.uint8)
SIDE_DIM = 0.7
"""Brightness factor of faces hit on their north or south side, so corners read as corners."""


@dataclass
class ViewTable:
    """Per pose and screen column what :func:`render` draws; arrays [..., S, VIEW] (see the module docstring)."""

    h2: np.ndarray
    shade: np.ndarray
    slot: np.ndarray
    u: np.ndarray


def pose_index(row: np.ndarray, col: np.ndarray, heading: np.ndarray, width: int) -> np.ndarray:
    """State index (row * width + col) * 4 + heading of poses [B]."""
    return (row * width + col) * 4 + heading


def view_table(maps: np.ndarray, sub: int = 1) -> ViewTable:
    """Ray-march every pose of each map: maps int [M, H, W] (border cells solid) -> arrays [M, S, VIEW].

    ``sub``: positions per cell side; poses stand at the centres of a lattice of (H * sub) x (W * sub)
    points, S = H * sub * W * sub * 4, indexed by :func:`pose_index` with lattice coordinates and
    width W * sub. Poses inside solid cells are marched too (never shown); it keeps indexing flat.
    """
    M, H, W = maps.shape
    S = H * sub * W * sub * 4
    rows, cols, heads = np.meshgrid(np.arange(H * sub), np.arange(W * sub), np.arange(4), indexing="ij")
    # Camera: forward (dx, dy) in (col, row) units and a screen plane to its right; column x covers
    # camera_x = 2 (x + 0.5) / VIEW - 1 in [-1, 1].
    fx, fy = DC[heads.ravel()].astype(np.float64), DR[heads.ravel()].astype(np.float64)
    px, py = -fy * FOV_TAN, fx * FOV_TAN
    camera_x = 2.0 * (np.arange(VIEW) + 0.5) / VIEW - 1.0
    ray_x = (fx[:, None] + px[:, None] * camera_x).ravel()  # [S * VIEW]
    ray_y = (fy[:, None] + py[:, None] * camera_x).ravel()
    pos_x = np.repeat((cols.ravel() + 0.5) / sub, VIEW)
    pos_y = np.repeat((rows.ravel() + 0.5) / sub, VIEW)
    ray_x, ray_y = np.tile(ray_x, M), np.tile(ray_y, M)
    pos_x, pos_y = np.tile(pos_x, M), np.tile(pos_y, M)
    which = np.repeat(np.arange(M), S * VIEW)
    dist, side, code, hit = _dda(maps, which, pos_x, pos_y, ray_x, ray_y)
    u = np.minimum((hit * TEX_W).astype(np.int64), TEX_W - 1)
    is_slot = code >= SLOT0
    wall_code = np.where(is_slot, 0, code)
    shade = WALL_TEX[wall_code, u].astype(np.float64)
    shade = np.where(side == 1, shade * SIDE_DIM, shade)
    h2 = np.minimum(np.round(VIEW / np.maximum(dist, 1e-6)), VIEW)
    shape = (M, S, VIEW)
    return ViewTable(h2=h2.astype(np.uint8).reshape(shape), shade=shade.astype(np.uint8).reshape(shape),
                     slot=np.where(is_slot, code - SLOT0, -1).astype(np.int8).reshape(shape),
                     u=(u + TEX_W * (side == 1)).astype(np.uint8).reshape(shape))


def _dda(maps: np.ndarray, which: np.ndarray, pos_x: np.ndarray, pos_y: np.ndarray, ray_x: np.ndarray,
         ray_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized grid DDA over N rays -> (perpendicular distance, side 0=x/1=y, cell code, hit fraction), each [N]."""
    H, W = maps.shape[1:]
    map_x, map_y = pos_x.astype(np.int64), pos_y.astype(np.int64)
    with np.errstate(divide="ignore"):
        delta_x = np.where(ray_x == 0, np.inf, np.abs(1.0 / ray_x))
        delta_y = np.where(ray_y == 0, np.inf, np.abs(1.0 / ray_y))
    step_x = np.where(ray_x < 0, -1, 1)
    step_y = np.where(ray_y < 0, -1, 1)
    side_x = np.where(ray_x < 0, (pos_x - map_x) * delta_x, (map_x + 1.0 - pos_x) * delta_x)
    side_y = np.where(ray_y < 0, (pos_y - map_y) * delta_y, (map_y + 1.0 - pos_y) * delta_y)
    side = np.zeros(len(pos_x), dtype=np.int64)
    code = np.zeros(len(pos_x), dtype=np.int64)
    active = np.ones(len(pos_x), dtype=bool)
    for _ in range(H + W):  # a ray crosses at most H + W cells before it meets the solid border
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        go_x = side_x[idx] < side_y[idx]
        ix, iy = idx[go_x], idx[~go_x]
        side_x[ix] += delta_x[ix]
        map_x[ix] += step_x[ix]
        side_y[iy] += delta_y[iy]
        map_y[iy] += step_y[iy]
        side[idx] = np.where(go_x, 0, 1)
        c = maps[which[idx], np.clip(map_y[idx], 0, H - 1), np.clip(map_x[idx], 0, W - 1)]
        code[idx] = c
        active[idx[c != 0]] = False
    dist = np.where(side == 0, side_x - delta_x, side_y - delta_y)
    hit = np.where(side == 0, pos_y + dist * ray_y, pos_x + dist * ray_x)
    hit -= np.floor(hit)
    # Mirror faces seen from the other direction so a texture reads left-to-right on every face.
    flip = ((side == 0) & (ray_x < 0)) | ((side == 1) & (ray_y > 0))
    return dist, side, code, np.where(flip, 1.0 - hit, hit)


def render(table: ViewTable, index: np.ndarray, state: np.ndarray, slot_objects: np.ndarray | None = None
           ) -> np.ndarray:
    """Frames uint8 [B, VIEW, VIEW] of B poses.

    table: arrays [M, S, VIEW]; index int [B]: which map each stream uses; state int [B]: pose indices;
    slot_objects int [B, K]: the object (row of :data:`OBJECT_TEX`) shown in each of K slots, or None.
    """
    h2 = table.h2[index, state]
    shade = table.shade[index, state]
    if slot_objects is not None:
        slot = table.slot[index, state].astype(np.int64)
        cols = np.flatnonzero(slot >= 0)
        if cols.size:
            b = cols // VIEW
            u = table.u[index, state].ravel()[cols].astype(np.int64)
            value = OBJECT_TEX[slot_objects[b, slot.ravel()[cols]], u % TEX_W].astype(np.float64)
            shade = shade.copy()
            shade.ravel()[cols] = np.where(u >= TEX_W, value * SIDE_DIM, value).astype(np.uint8)
    inside = _ROWS2[None, :, None] < h2[:, None, :]
    return np.where(inside, shade[:, None, :], _BACKGROUND[None, :, None])
