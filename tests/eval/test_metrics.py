"""Transfer and aggregate metrics (eval/metrics.py) on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.metrics import (
    auc_forward_transfer,
    average_performance,
    first_stages,
    iqm,
    stratified_bootstrap_ci,
    two_level_bootstrap_difference_ci,
    zero_shot_forward_transfer,
)

NAN = math.nan
GAMES = ["Pong", "Breakout", "Qbert"]
STAGE_GAMES = ["Pong", "Breakout", "Qbert"]

# Row 0 before training, then after stage 1 (Pong), 2 (Breakout), 3 (Qbert); columns = GAMES.
R = np.array(
    [
        [0.00, 0.10, 0.05],
        [0.80, 0.30, 0.02],
        [0.60, 0.90, -0.05],
        [0.40, 0.70, 1.00],
    ]
)
# Worked out by hand:
#   Pong: first trained in stage 1 -> None (no earlier stage)
#   Breakout: first trained in stage 2 -> R[1, B] - R[0, B] = 0.30 - 0.10 = 0.20
#   Qbert: first trained in stage 3 -> R[2, Q] - R[0, Q] = -0.05 - 0.05 = -0.10


# ---------------------------------------------------------------- zero-shot forward transfer


def test_zero_shot_ft_matches_hand_worked_4x3_matrix():
    ft = zero_shot_forward_transfer(R, STAGE_GAMES, GAMES)
    assert ft["Pong"] is None
    assert ft["Breakout"] == pytest.approx(0.20)
    assert ft["Qbert"] == pytest.approx(-0.10)
    assert list(ft) == GAMES


def test_zero_shot_ft_with_one_stage_is_undefined_for_every_game():
    ft = zero_shot_forward_transfer([[0.0, 0.1], [0.9, 0.3]], ["Pong"], ["Pong", "Breakout"])
    assert ft == {"Pong": None, "Breakout": None}


def test_zero_shot_ft_of_a_game_never_trained_is_none():
    games = GAMES + ["Seaquest"]
    matrix = np.hstack([R, np.array([[0.0], [0.1], [0.2], [0.3]])])
    ft = zero_shot_forward_transfer(matrix, STAGE_GAMES, games)
    assert ft["Seaquest"] is None
    assert ft["Breakout"] == pytest.approx(0.20)


def test_zero_shot_ft_with_a_nan_term_is_none_and_leaves_other_games_alone():
    failed_before_own = R.copy()
    failed_before_own[1, 1] = NAN  # Breakout's score just before its own stage
    ft = zero_shot_forward_transfer(failed_before_own, STAGE_GAMES, GAMES)
    assert ft["Breakout"] is None
    assert ft["Qbert"] == pytest.approx(-0.10)

    failed_before_all = R.copy()
    failed_before_all[0, 2] = NAN  # Qbert's before-training score
    ft = zero_shot_forward_transfer(failed_before_all, STAGE_GAMES, GAMES)
    assert ft["Qbert"] is None
    assert ft["Breakout"] == pytest.approx(0.20)


def test_first_stages_keep_a_game_trained_twice_at_its_first_stage():
    assert first_stages(["Breakout", "Pong", "Breakout"]) == {"Breakout": 1, "Pong": 2}
    assert first_stages([]) == {}


def test_zero_shot_ft_uses_the_first_stage_of_a_game_trained_twice():
    # Stages: Breakout, Pong, Breakout -> Breakout first trained in stage 1 -> None;
    # Pong first trained in stage 2 -> R[1, P] - R[0, P] = 0.80 - 0.00.
    ft = zero_shot_forward_transfer(R, ["Breakout", "Pong", "Breakout"], GAMES)
    assert ft["Breakout"] is None
    assert ft["Pong"] == pytest.approx(0.80)
    assert ft["Qbert"] is None


def test_zero_shot_ft_rejects_a_matrix_without_the_before_training_row():
    with pytest.raises(ValueError, match="S \\+ 1"):
        zero_shot_forward_transfer(R[1:], STAGE_GAMES, GAMES)


# ---------------------------------------------------------------- AUC forward transfer


def test_auc_ft_on_linear_curves_matches_closed_form():
    x = np.linspace(0.0, 1.0, 5)
    # Continual run y = x (AUC 1/2), reference y = x/2 (AUC 1/4): (1/2 - 1/4) / (1 - 1/4) = 1/3.
    ft = auc_forward_transfer({"Pong": x}, {"Pong": x / 2})
    assert ft["Pong"] == pytest.approx(1.0 / 3.0)


def test_auc_ft_is_zero_for_identical_curves_and_negative_for_a_slower_run():
    x = np.linspace(0.0, 1.0, 11)
    ft = auc_forward_transfer({"a": x, "b": x / 2}, {"a": x, "b": x})
    assert ft["a"] == pytest.approx(0.0)
    # (1/4 - 1/2) / (1 - 1/2) = -1/2
    assert ft["b"] == pytest.approx(-0.5)


def test_auc_ft_with_uneven_fractions_integrates_exactly_on_linear_curves():
    fractions = np.array([0.0, 0.1, 0.5, 1.0])
    ft = auc_forward_transfer({"Pong": fractions}, {"Pong": np.zeros(4)}, fractions=fractions)
    # Reference AUC 0 -> FT = AUC = 1/2.
    assert ft["Pong"] == pytest.approx(0.5)
    ft = auc_forward_transfer({"Pong": fractions}, {"Pong": np.zeros(4)},
                              fractions={"Pong": fractions})
    assert ft["Pong"] == pytest.approx(0.5)


def test_auc_ft_is_none_when_reference_auc_is_one_or_more():
    ft = auc_forward_transfer({"a": [0.2, 0.5, 0.9], "b": [0.2, 0.5, 0.9]},
                              {"a": [1.0, 1.0, 1.0], "b": [1.2, 1.5, 1.3]})
    assert ft == {"a": None, "b": None}


def test_auc_ft_drops_a_failed_point_and_bridges_the_gap():
    x = np.linspace(0.0, 1.0, 5)
    y = x.copy()
    y[2] = NAN  # a failed evaluation in the middle: linear curves stay exact
    ft = auc_forward_transfer({"Pong": y}, {"Pong": x / 2})
    assert ft["Pong"] == pytest.approx(1.0 / 3.0)


def test_auc_ft_is_none_without_reference_or_with_fewer_than_two_points():
    ft = auc_forward_transfer({"a": [0.1, 0.2], "b": [NAN, 0.5, NAN], "c": [0.3]},
                              {"b": [0.1, 0.2, 0.3], "c": [0.1]})
    assert ft == {"a": None, "b": None, "c": None}


def test_auc_ft_rejects_mismatched_shapes_and_bad_fractions():
    with pytest.raises(ValueError, match="one length"):
        auc_forward_transfer({"a": [0.1, 0.2]}, {"a": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="strictly increasing"):
        auc_forward_transfer({"a": [0.1, 0.2]}, {"a": [0.1, 0.2]}, fractions=[0.5, 0.5])
    with pytest.raises(ValueError, match="fractions of shape"):
        auc_forward_transfer({"a": [0.1, 0.2]}, {"a": [0.1, 0.2]}, fractions=[0.0, 0.5, 1.0])


# ---------------------------------------------------------------- average performance


def test_average_performance_is_the_row_mean_over_games_evaluated():
    matrix = np.array([[0.0, 0.2, 0.4], [1.0, NAN, 0.0], [NAN, NAN, NAN]])
    out = average_performance(matrix)
    assert out[0] == pytest.approx(0.2)
    assert out[1] == pytest.approx(0.5)
    assert out[2] is None
    assert average_performance(R)[3] == pytest.approx((0.4 + 0.7 + 1.0) / 3)


# ---------------------------------------------------------------- IQM


def _brute_force_iqm(values: list[float]) -> float:
    """Trim one minimum and one maximum at a time, floor(n/4) times each; mean of the rest."""
    rest = sorted(values)
    for _ in range(len(values) // 4):
        rest.remove(min(rest))
        rest.remove(max(rest))
    return sum(rest) / len(rest)


def test_iqm_of_one_to_eight_is_the_mean_of_three_to_six():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)


def test_iqm_when_size_is_not_a_multiple_of_four_cuts_floor_of_a_quarter():
    assert iqm([1, 2, 3, 4, 5]) == pytest.approx(3.0)  # keeps 2, 3, 4
    assert iqm([1, 2, 3, 4, 5, 100]) == pytest.approx(3.5)  # keeps 2..5
    assert iqm([0, 0, 1, 2, 3, 10, 10]) == pytest.approx(3.2)  # keeps 0, 1, 2, 3, 10
    assert iqm([5.0, -1.0, 2.0]) == pytest.approx(2.0)  # n <= 3: plain mean


def test_iqm_matches_brute_force_for_every_size_up_to_seventeen():
    rng = np.random.default_rng(0)
    for n in range(1, 18):
        values = rng.normal(size=n) * rng.choice([1.0, 10.0], size=n)
        assert iqm(values) == pytest.approx(_brute_force_iqm(values.tolist())), n


def test_iqm_flattens_and_drops_nan():
    assert iqm(np.arange(1, 9).reshape(2, 4)) == pytest.approx(4.5)
    assert iqm([1, 2, NAN, 3, 4, 5]) == pytest.approx(3.0)
    assert math.isnan(iqm([NAN, NAN]))


# ---------------------------------------------------------------- stratified bootstrap


def _scores(seed: int = 0) -> np.ndarray:
    """[5 runs, 4 games] of scores with game-dependent levels."""
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[0.2, 0.8, 1.5, 0.5], scale=0.3, size=(5, 4))


def test_bootstrap_interval_collapses_to_the_point_when_runs_are_identical():
    # Games differ, runs within a game do not: a stratified bootstrap can only redraw the same
    # values (a bootstrap over the flattened entries would not collapse).
    scores = np.tile([0.1, 0.4, 2.0, 3.0], (6, 1))
    for statistic in (iqm, np.mean):
        point, low, high = stratified_bootstrap_ci(scores, statistic=statistic, reps=500, seed=1)
        assert point == pytest.approx(statistic(scores.ravel()))
        assert low == pytest.approx(point) and high == pytest.approx(point)


def test_bootstrap_interval_contains_the_point():
    point, low, high = stratified_bootstrap_ci(_scores(), reps=1000, seed=0)
    assert point == pytest.approx(iqm(_scores()))
    assert low < point < high


def test_bootstrap_is_reproducible_with_a_seed():
    a = stratified_bootstrap_ci(_scores(), reps=500, seed=7)
    b = stratified_bootstrap_ci(_scores(), reps=500, seed=7)
    c = stratified_bootstrap_ci(_scores(), reps=500, seed=8)
    assert a == b
    assert a != c


def test_bootstrap_interval_widens_with_the_spread():
    base = _scores()
    wide = base.mean() + 3.0 * (base - base.mean())  # IQM and percentiles are affine-equivariant
    _, low, high = stratified_bootstrap_ci(base, reps=1000, seed=3)
    _, wide_low, wide_high = stratified_bootstrap_ci(wide, reps=1000, seed=3)
    assert wide_high - wide_low == pytest.approx(3.0 * (high - low))
    assert wide_high - wide_low > high - low


def test_bootstrap_generic_statistic_path_agrees_with_the_vectorised_iqm():
    fast = stratified_bootstrap_ci(_scores(), reps=300, seed=5)
    slow = stratified_bootstrap_ci(_scores(), statistic=lambda a: iqm(a), reps=300, seed=5)
    assert slow == pytest.approx(fast)


def test_bootstrap_drops_nan_entries_and_rejects_all_nan():
    scores = _scores()
    scores[0, 1] = NAN
    scores[:, 3] = NAN  # a game nobody evaluated is left out
    point, low, high = stratified_bootstrap_ci(scores, reps=500, seed=0)
    assert point == pytest.approx(iqm(scores[np.isfinite(scores)]))
    assert all(math.isfinite(v) for v in (point, low, high))
    assert low <= point <= high
    with pytest.raises(ValueError, match="no finite"):
        stratified_bootstrap_ci(np.full((3, 2), NAN))


# ---------------------------------------------------------------- two-level bootstrap of a difference


def test_two_level_interval_collapses_to_the_point_when_every_episode_and_seed_agree():
    # Three seeds, each +1 after (episodes all 1) over before (all 0): nothing to resample.
    point, low, high = two_level_bootstrap_difference_ci([[1.0] * 4] * 3, [[0.0] * 5] * 3, reps=500)
    assert (point, low, high) == (1.0, 1.0, 1.0)


def test_two_level_interval_with_equal_episodes_is_the_seed_level_bootstrap():
    # Episodes equal within each cell; the seeds' differences are 1, 2, 3 (point 2). A replicate is
    # the mean of 3 seeds drawn with replacement: all 1 (or all 3) with probability 1/27 > 2.5%,
    # so the 95% interval is exactly [1, 3].
    after = [[1.0] * 4, [2.0] * 4, [3.0] * 4]
    assert two_level_bootstrap_difference_ci(after, [[0.0] * 5] * 3, reps=2000) == (2.0, 1.0, 3.0)


def test_two_level_interval_with_one_seed_is_the_episode_level_bootstrap():
    # One seed: after episodes {0, 1}, before {0}. A replicate is the mean of 2 draws from {0, 1}:
    # 0 or 1 with probability 1/4 each, so the interval is [0, 1] around the point 0.5.
    assert two_level_bootstrap_difference_ci([[0.0, 1.0]], [[0.0]], reps=2000) == (0.5, 0.0, 1.0)


def _episodes(loc: float, seeds: int = 3, k: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``[seeds]`` arrays ``[k]`` of episode scores around ``loc`` (seed offsets plus episode noise)."""
    rng = np.random.default_rng(seed)
    return [loc + 0.05 * rng.normal() + 0.3 * rng.normal(size=k) for _ in range(seeds)]


def test_two_level_interval_excludes_zero_for_a_clear_gain_and_holds_it_for_none():
    point, low, high = two_level_bootstrap_difference_ci(_episodes(1.0, seed=1), _episodes(0.0, seed=2))
    assert 0.0 < low < point < high
    # The negative control: both evaluations from one distribution.
    point, low, high = two_level_bootstrap_difference_ci(_episodes(0.0, seed=3), _episodes(0.0, seed=4))
    assert low < 0.0 < high and low < point < high


def test_two_level_point_is_the_mean_of_per_seed_differences_of_means():
    after, before = [[1.0, 2.0, 6.0], [0.0]], [[1.0], [2.0, 4.0]]
    point, low, high = two_level_bootstrap_difference_ci(after, before, reps=300, seed=3)
    assert point == pytest.approx(((3.0 - 1.0) + (0.0 - 3.0)) / 2)
    assert low <= point <= high
    assert two_level_bootstrap_difference_ci(after, before, reps=300, seed=3) == (point, low, high)
    assert two_level_bootstrap_difference_ci(after, before, reps=300, seed=4) != (point, low, high)


def test_two_level_drops_failed_episodes_and_seeds_without_any():
    # Seed 2 has no finite before episode: left out; seed 1's NaN episode is dropped.
    point, low, high = two_level_bootstrap_difference_ci([[2.0, NAN, 2.0], [5.0]], [[1.0], [NAN]], reps=200)
    assert (point, low, high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no seed"):
        two_level_bootstrap_difference_ci([[NAN]], [[1.0]])
    with pytest.raises(ValueError, match="same seeds"):
        two_level_bootstrap_difference_ci([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="1-D"):
        two_level_bootstrap_difference_ci([[[1.0]]], [[1.0]])
