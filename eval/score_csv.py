"""The score columns that ``forgetting.csv`` and ``curves.csv`` share: per game, its raw return and
its normalised score, at full precision, an empty cell where there is no number."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KINDS = ("return", "hns")


def score_header(games: Sequence[str]) -> list[str]:
    """``[2 G]`` column names ``return/<g>, hns/<g>`` for each game ``g`` of ``games`` in order."""
    return [f"{kind}/{game}" for game in games for kind in KINDS]


def score_cells(returns: np.ndarray, hns: np.ndarray) -> list[str]:
    """``[2 G]`` cells of one row, in :func:`score_header`'s order, from ``returns`` ``[G]`` (raw
    mean returns) and ``hns`` ``[G]`` (their normalised scores)."""
    return [score_cell(m[j]) for j in range(len(returns)) for m in (returns, hns)]


def score_cell(x: float) -> str:
    """A float at full precision (``repr``, so it reads back exactly), or an empty cell for NaN/inf."""
    return repr(float(x)) if math.isfinite(x) else ""
