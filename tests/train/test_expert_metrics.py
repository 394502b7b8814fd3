"""Routing metrics on hand-made count matrices with known answers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from train.expert_metrics import nmi_game_expert, usage_png, utilization_entropy


def test_nmi_is_one_when_each_game_owns_its_experts_and_zero_when_routing_ignores_the_game():
    assert nmi_game_expert(np.array([[4.0, 0, 0, 0], [0, 0, 0, 4.0]])) == pytest.approx(1.0)
    two_each = np.array([[5.0, 5.0, 0, 0], [0, 0, 3.0, 3.0]])
    assert 0 < nmi_game_expert(two_each) < 1  # H(E) > H(G): the game does not explain all of H(E)
    same = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])  # independent: P = outer(pg, pe)
    assert nmi_game_expert(same) == pytest.approx(0.0, abs=1e-12)
    assert nmi_game_expert(np.array([[3.0, 1.0, 0.0]])) == 0.0  # one game: nothing to specialise on
    assert nmi_game_expert(np.zeros((2, 3))) == 0.0


def test_nmi_matches_a_hand_computation():
    c = np.array([[3.0, 1.0], [1.0, 3.0]])
    p = c / 8
    mi = sum(p[i, j] * math.log(p[i, j] / 0.25) for i in range(2) for j in range(2))
    assert nmi_game_expert(c) == pytest.approx(2 * mi / (2 * math.log(2)))


def test_utilization_entropy_spans_zero_to_one():
    assert utilization_entropy(np.array([[1.0, 1.0, 1.0, 1.0]])) == pytest.approx(1.0)
    assert utilization_entropy(np.array([[7.0, 0, 0, 0], [2.0, 0, 0, 0]])) == 0.0
    assert utilization_entropy(np.array([[1.0, 3.0]])) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2))
    assert utilization_entropy(np.zeros((1, 4))) == 0.0


def test_usage_png_opens_as_an_image():
    from matplotlib.image import imread

    image = imread(io.BytesIO(usage_png(np.array([[1.0, 0, 2.0], [0, 4.0, 0]]), ["Pong", "Breakout"])), format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 100
