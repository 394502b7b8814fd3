"""The score columns shared by forgetting.csv and curves.csv (eval/score_csv.py)."""

from __future__ import annotations

import math

import numpy as np

from eval.score_csv import score_cells, score_header


def test_score_cells_follow_the_header_and_read_back_exactly():
    assert score_header(["Pong", "Qbert"]) == ["return/Pong", "hns/Pong", "return/Qbert", "hns/Qbert"]
    cells = score_cells(np.array([1.0 / 3.0, math.nan]), np.array([0.1, math.inf]))
    assert cells[1:] == ["0.1", "", ""]
    assert float(cells[0]) == 1.0 / 3.0
