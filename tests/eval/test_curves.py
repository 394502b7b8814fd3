"""The evaluation history (eval/curves.py): matrix rows, stage spans and curves, AUC forward
transfer against reference runs on hand-made curves, and the curves files read back."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from envs.registry import normalized_score, score_bounds
from eval.curves import (
    eval_point,
    load_reference,
    matrix_episodes,
    matrix_returns,
    read_curves,
    reference_forward_transfer,
    stage_curve,
    stage_spans,
    write_curves,
)
from train.config import preset
from common.errors import UserError

NAN = math.nan
GAMES = ["Pong", "Breakout"]


def raw(game: str, hns: float) -> float:
    """The raw return whose normalised score is ``hns``."""
    low, high = score_bounds(game)
    return low + hns * (high - low)


def point(frames: int, stage: int, kind: str, hns: list[float], games=GAMES) -> dict:
    return eval_point(frames, stage, kind, [raw(g, h) for g, h in zip(games, hns)])


# Stage 1 trains Pong over frames 0-200, stage 2 Breakout over 200-400; normalised scores.
HISTORY = [
    point(0, 0, "before", [0.0, 0.0]),
    point(100, 1, "periodic", [0.4, 0.1]),
    point(200, 1, "stage", [0.8, 0.0]),
    point(300, 2, "periodic", [0.6, 0.2]),
    point(400, 2, "stage", [0.5, 0.4]),
]
# Reference runs (each game trained alone): (fractions of its stage, normalised score).
REFERENCES = {
    "Pong": (np.array([0.0, 1.0]), np.array([0.0, 0.6])),
    "Breakout": (np.array([0.0, 0.25, 0.75, 1.0]), np.array([0.0, 0.1, 0.1, 0.2])),
}
# Worked out by hand (trapezoids, normalised by the span 1):
#   Pong, stage 1, x = 0, .5, 1, y = 0, .4, .8: AUC = .5 * .2 + .5 * .6 = .4; reference AUC = .3;
#     FT = (.4 - .3) / (1 - .3) = 1/7
#   Breakout, stage 2, x = 0, .5, 1, y = 0, .2, .4: AUC = .2; reference .25 * .05 + .5 * .1 + .25 * .15 = .1;
#     FT = (.2 - .1) / (1 - .1) = 1/9


def test_matrix_is_the_before_point_then_the_stage_points():
    returns = matrix_returns(HISTORY, 2)
    assert returns.shape == (3, 2)
    np.testing.assert_allclose(returns, [HISTORY[0]["returns"], HISTORY[2]["returns"], HISTORY[4]["returns"]])
    with pytest.raises(ValueError, match="before"):
        matrix_returns(HISTORY[1:], 2)


def test_matrix_episodes_are_the_matrix_points_episodes_and_none_for_older_points():
    with_episodes = [eval_point(p["frames"], p["stage"], p["kind"], p["returns"],
                                [[r - 1.0, r + 1.0] for r in p["returns"]]) for p in HISTORY]
    cells = matrix_episodes(with_episodes, 2)
    assert cells == [[[r - 1.0, r + 1.0] for r in p["returns"]] for p in (HISTORY[0], HISTORY[2], HISTORY[4])]
    # A history saved before points kept their episodes (a resumed older run) has None cells there.
    assert matrix_episodes(HISTORY[:3] + with_episodes[3:], 2) == [[None, None], [None, None], cells[2]]
    with pytest.raises(ValueError, match="one list per game"):
        eval_point(0, 0, "before", [1.0, 2.0], [[1.0]])


def test_stage_spans_run_from_the_previous_stage_end_to_the_latest_point():
    assert stage_spans(HISTORY) == [(1, 0, 200), (2, 200, 400)]
    assert stage_spans(HISTORY[:4]) == [(1, 0, 200), (2, 200, 300)]  # stage 2 still training
    assert stage_spans(HISTORY[:1]) == []


def test_stage_curve_spans_zero_to_one_and_needs_the_stage_end():
    x, returns = stage_curve(HISTORY, 2)
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(returns[:, 1], [raw("Breakout", h) for h in (0.0, 0.2, 0.4)])
    assert stage_curve(HISTORY[:4], 2) is None and stage_curve(HISTORY, 3) is None


def test_reference_forward_transfer_matches_hand_computation():
    ft = reference_forward_transfer(HISTORY, GAMES, GAMES, REFERENCES)
    assert ft["Pong"] == pytest.approx(1 / 7)
    assert ft["Breakout"] == pytest.approx(1 / 9)


def test_forward_transfer_on_uneven_fractions_equals_the_unaligned_areas():
    # Reference sampled at other fractions than the run: each area must stay its own trapezoid area.
    refs = {"Breakout": (np.array([0.0, 0.3, 1.0]), np.array([0.0, 0.3, 0.3]))}
    auc_ref = 0.3 * 0.15 + 0.7 * 0.3  # 0.255
    ft = reference_forward_transfer(HISTORY, GAMES, GAMES, refs)
    assert ft["Breakout"] == pytest.approx((0.2 - auc_ref) / (1 - auc_ref))
    assert ft["Pong"] is None  # no reference


def test_a_failed_evaluation_is_bridged_and_a_failed_end_shortens_the_span():
    history = [dict(p, returns=list(p["returns"])) for p in HISTORY]
    history[3]["returns"][1] = NAN  # Breakout's periodic evaluation failed: the line 0 -> .4 remains
    history[2]["returns"][0] = NAN  # Pong's stage-end evaluation failed: its curve ends at x = .5
    ft = reference_forward_transfer(history, GAMES, GAMES, REFERENCES)
    assert ft["Breakout"] == pytest.approx(1 / 9)
    # Pong on [0, .5]: AUC = mean of 0 and .4 = .2; the reference there: mean of 0 and .3 = .15.
    assert ft["Pong"] == pytest.approx((0.2 - 0.15) / (1 - 0.15))


def test_forward_transfer_is_none_before_the_stage_ends_or_for_a_game_never_trained():
    ft = reference_forward_transfer(HISTORY[:4], GAMES, GAMES, REFERENCES)
    assert ft["Breakout"] is None and ft["Pong"] == pytest.approx(1 / 7)
    ft = reference_forward_transfer(HISTORY[:3], GAMES, ["Pong"], REFERENCES)
    assert ft["Breakout"] is None


def test_curves_csv_reads_back_and_holds_normalised_scores(tmp_path):
    history = [dict(p, returns=list(p["returns"])) for p in HISTORY]
    history[1]["returns"][0] = NAN
    write_curves(tmp_path, GAMES, GAMES, history)
    back = read_curves(tmp_path, GAMES)
    assert [(p["frames"], p["stage"], p["kind"]) for p in back] == [(p["frames"], p["stage"], p["kind"]) for p in history]
    np.testing.assert_array_equal(np.array([p["returns"] for p in back]), np.array([p["returns"] for p in history]))
    with open(tmp_path / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["game"] for r in rows] == ["", "Pong", "Pong", "Breakout", "Breakout"]
    assert rows[1]["return/Pong"] == "" and rows[1]["hns/Pong"] == ""
    assert float(rows[4]["hns/Breakout"]) == pytest.approx(0.4)
    assert float(rows[4]["hns/Pong"]) == normalized_score("Pong", history[4]["returns"][0])


def test_wall_s_is_the_last_column_and_reads_back_and_older_files_still_read(tmp_path):
    history = [eval_point(p["frames"], p["stage"], p["kind"], p["returns"], wall_s=w)
               for p, w in zip(HISTORY, [0.0, 12.25, None, NAN, 61.0])]
    assert "wall_s" not in history[2] and "wall_s" not in history[3]  # None and NaN: unknown
    write_curves(tmp_path, GAMES, GAMES, history)
    with open(tmp_path / "curves.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "wall_s" and rows[0][:-1] == ["frames", "stage", "kind", "game", "return/Pong", "hns/Pong",
                                                        "return/Breakout", "hns/Breakout"]
    assert [r[-1] for r in rows[1:]] == ["0.0", "12.25", "", "", "61.0"]
    back = read_curves(tmp_path, GAMES)
    assert [p.get("wall_s") for p in back] == [0.0, 12.25, None, None, 61.0]
    # A file written before the column existed (the committed results/) reads, without wall_s.
    (tmp_path / "curves.csv").write_text("".join(",".join(r[:-1]) + "\n" for r in rows))
    back = read_curves(tmp_path, GAMES)
    assert [(p["frames"], p["kind"]) for p in back] == [(p["frames"], p["kind"]) for p in HISTORY]
    assert all("wall_s" not in p for p in back)
    # A row that lost its last cell does not pass off a score as its wall time.
    (tmp_path / "curves.csv").write_text("".join(",".join(r if i != 2 else r[:-1]) + "\n" for i, r in enumerate(rows)))
    with pytest.raises(UserError, match="malformed"):
        read_curves(tmp_path, GAMES)


@pytest.mark.parametrize("games,size", [(GAMES, (1000, 320)), (["Pong", "Breakout", "Qbert", "Seaquest"], (1500, 640))])
def test_curves_png_has_one_panel_per_game_and_the_documented_size(tmp_path, games, size):
    history = [eval_point(p["frames"], p["stage"], p["kind"], [raw(g, 0.1 * i) for i, g in enumerate(games)])
               for p in HISTORY]
    write_curves(tmp_path, games, games, history)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == size  # 5 x 3.2 inches per panel, 3 per row, 100 dpi
    assert matplotlib.image.imread(tmp_path / "curves.png").shape[:2] == (size[1], size[0])


def test_reading_curves_of_other_games_or_a_missing_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="curves.csv"):
        read_curves(tmp_path, GAMES)
    write_curves(tmp_path, GAMES, GAMES, HISTORY)
    with pytest.raises(UserError, match="not an evaluation-curves file"):
        read_curves(tmp_path, ["Breakout", "Pong"])


def test_eval_point_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        eval_point(0, 0, "sometimes", [1.0])


def _reference_run(root: Path, games: list[str], history: list[dict]) -> Path:
    cfg = preset("smoke")
    cfg.env.games = games
    root.mkdir(parents=True)
    (root / "config.json").write_text(cfg.to_json())
    write_curves(root / "eval", list(dict.fromkeys(games)), games, history)
    return root


def test_load_reference_reads_a_single_task_run(tmp_path):
    history = [point(0, 0, "before", [0.0], ["Breakout"]), point(50, 1, "periodic", [0.1], ["Breakout"]),
               point(200, 1, "stage", [0.2], ["Breakout"])]
    game, x, y = load_reference(_reference_run(tmp_path / "ref", ["Breakout"], history))
    assert game == "Breakout"
    np.testing.assert_allclose(x, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(y, [0.0, 0.1, 0.2])


def test_load_reference_refuses_a_multi_game_or_unfinished_run(tmp_path):
    with pytest.raises(UserError, match="trains 2 stages"):
        load_reference(_reference_run(tmp_path / "multi", GAMES, HISTORY))
    unfinished = _reference_run(tmp_path / "unfinished", ["Pong"], [point(0, 0, "before", [0.0], ["Pong"])])
    with pytest.raises(UserError, match="not finished"):
        load_reference(unfinished)


def test_a_curves_file_that_is_not_utf8_is_a_user_error(tmp_path):
    (tmp_path / "curves.csv").write_bytes(b"frames,stage\n\xf6\n")
    with pytest.raises(UserError, match="curves.csv"):
        read_curves(tmp_path, ["Pong"])
