"""Forgetting metrics on hand-worked matrices, and the JSON/CSV/PNG writers round-tripping."""

from __future__ import annotations

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from eval.forgetting import (compute_metrics, read_episode_returns, read_forgetting, read_wall_seconds,
                             write_forgetting)
from common.errors import UserError

NAN = math.nan
GAMES = ["Pong", "Breakout", "Qbert"]
STAGES = ["before", "1:Pong", "2:Breakout", "3:Qbert"]

# Before training, then after stage 1 / 2 / 3 (rows) the scores on Pong, Breakout, Qbert (columns).
HNS = np.array(
    [
        [0.0, 0.05, 0.1],
        [0.8, 0.1, 0.0],
        [0.5, 0.9, 0.2],
        [0.3, 0.6, 1.0],
    ]
)
# Worked out by hand:
#   avg_final_hns = (0.3 + 0.6 + 1.0) / 3
#   forgetting (from the game's own stage to the one before the last, minus the last):
#     Pong max(0.8, 0.5) - 0.3 = 0.5; Breakout max(0.9) - 0.6 = 0.3 (its 0.1 after stage 1, before
#     it was trained, does not count); Qbert is first trained in the last stage: None; mean 0.4
#   bwt = ((0.3 - 0.8) + (0.6 - 0.9)) / 2 = -0.4
#   avg_performance = row means: 0.15 / 3, 0.9 / 3, 1.6 / 3, 1.9 / 3
#   zero-shot transfer: Pong None (stage 1); Breakout 0.1 - 0.05 = 0.05; Qbert 0.2 - 0.1 = 0.1; mean 0.075
RETURNS = np.array(
    [
        [-20.7, 1.7, 163.9],
        [7.5, 4.6, 1500.0],
        [-3.0, 27.6, 2800.0],
        [-10.2, 19.0, 13455.0],
    ]
)


def test_three_stage_metrics_match_hand_computation():
    m = compute_metrics(HNS, GAMES, GAMES)
    assert m["avg_final_hns"] == pytest.approx(1.9 / 3)
    assert m["forgetting"] == pytest.approx({"Pong": 0.5, "Breakout": 0.3, "Qbert": None})
    assert m["mean_forgetting"] == pytest.approx(0.4)
    assert m["bwt"] == pytest.approx(-0.4)
    assert m["avg_performance"] == pytest.approx([0.05, 0.3, 1.6 / 3, 1.9 / 3])
    assert m["zero_shot_transfer"] == pytest.approx({"Pong": None, "Breakout": 0.05, "Qbert": 0.1})
    assert m["mean_zero_shot_transfer"] == pytest.approx(0.075)
    assert m["forward_transfer"] is None and m["mean_forward_transfer"] is None


def test_forward_transfer_is_passed_through_with_its_mean():
    m = compute_metrics(HNS, GAMES, GAMES, forward_transfer={"Pong": 0.2, "Breakout": None, "Qbert": -0.1})
    assert m["forward_transfer"] == {"Pong": 0.2, "Breakout": None, "Qbert": -0.1}
    assert m["mean_forward_transfer"] == pytest.approx(0.05)


def test_one_stage_has_no_forgetting_bwt_or_zero_shot_transfer():
    m = compute_metrics(np.array([[0.0, 0.1], [0.2, 0.4]]), ["Pong"], ["Pong", "Breakout"])
    assert m["avg_final_hns"] == pytest.approx(0.3)
    assert m["forgetting"] == {"Pong": None, "Breakout": None}
    assert m["mean_forgetting"] is None
    assert m["bwt"] is None
    assert m["zero_shot_transfer"] == {"Pong": None, "Breakout": None}
    assert m["avg_performance"] == pytest.approx([0.05, 0.3])


def test_before_row_alone_gives_only_average_performance():
    m = compute_metrics(np.array([[0.0, 0.1]]), [], ["Pong", "Breakout"])
    assert m["avg_performance"] == pytest.approx([0.05]) and m["avg_final_hns"] == pytest.approx(0.05)
    assert m["forgetting"] == {"Pong": None, "Breakout": None} and m["bwt"] is None
    assert m["zero_shot_transfer"] == {"Pong": None, "Breakout": None} and m["mean_zero_shot_transfer"] is None


def test_a_game_never_trained_has_no_forgetting_but_counts_in_averages():
    # Qbert is a column but no stage trains it.
    m = compute_metrics(HNS[:3], ["Pong", "Breakout"], GAMES)
    assert m["forgetting"]["Qbert"] is None and m["zero_shot_transfer"]["Qbert"] is None
    assert m["forgetting"]["Pong"] == pytest.approx(0.8 - 0.5)
    assert m["avg_final_hns"] == pytest.approx((0.5 + 0.9 + 0.2) / 3)


def test_nan_entries_are_skipped_and_undefined_terms_are_none():
    # A failed evaluation (NaN): Pong after the last stage, Breakout before training.
    hns = np.array(
        [
            [0.0, NAN, 0.1],
            [0.8, NAN, NAN],
            [0.5, 0.9, NAN],
            [NAN, 0.6, 1.0],
        ]
    )
    m = compute_metrics(hns, GAMES, GAMES)
    assert m["avg_final_hns"] == pytest.approx(0.8)
    assert m["forgetting"]["Pong"] is None  # final score missing
    assert m["forgetting"]["Breakout"] == pytest.approx(0.3)
    assert m["mean_forgetting"] == pytest.approx(0.3)
    # Stage 1's term (Pong) is undefined; stage 2's is 0.6 - 0.9.
    assert m["bwt"] == pytest.approx(-0.3)
    # Breakout's before-training score failed; Qbert's score after stage 2 is missing.
    assert m["zero_shot_transfer"] == {"Pong": None, "Breakout": None, "Qbert": None}
    assert m["avg_performance"] == pytest.approx([0.05, 0.8, 0.7, 0.8])


def test_all_nan_final_row_gives_none_everywhere():
    hns = np.array([[0.0, 0.0], [0.5, 0.2], [NAN, NAN]])
    m = compute_metrics(hns, ["Pong", "Breakout"], ["Pong", "Breakout"])
    assert m["avg_final_hns"] is None and m["mean_forgetting"] is None and m["bwt"] is None
    assert m["forgetting"] == {"Pong": None, "Breakout": None}
    assert m["avg_performance"][-1] is None


def test_bwt_and_forgetting_of_a_revisited_game():
    hns = np.array([[0.0, 0.0], [0.4, 0.0], [0.1, 0.7], [0.6, 0.5]])
    m = compute_metrics(hns, ["Pong", "Breakout", "Pong"], ["Pong", "Breakout"])
    # BWT: stage 1 (Pong): 0.6 - 0.4; stage 2 (Breakout): 0.5 - 0.7.
    assert m["bwt"] == pytest.approx(0.0, abs=1e-12)
    # Pong is retrained in the last stage: max(0.4, 0.1) - 0.6 (negative: relearnt).
    assert m["forgetting"]["Pong"] == pytest.approx(-0.2)
    assert m["forgetting"]["Breakout"] == pytest.approx(0.2)


def test_mismatched_shapes_raise_value_error():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(HNS[1:], GAMES, GAMES)  # no before row


def test_stage_of_a_game_not_evaluated_adds_no_bwt_term():
    hns = np.array([[0.0], [0.4], [0.1], [0.6]])
    m = compute_metrics(hns, ["Pong", "Breakout", "Pong"], ["Pong"])
    assert m["bwt"] == pytest.approx(0.6 - 0.4)  # only stage 1 (Pong) has a term


def _write_with_a_gap(tmp_path):
    returns, hns = RETURNS.copy(), HNS.copy()
    returns[1, 2] = hns[1, 2] = NAN  # Qbert's evaluation after stage 1 failed
    doc = write_forgetting(tmp_path / "eval", GAMES, GAMES, returns, hns)
    return doc, returns, hns


def test_json_round_trips_with_the_contract_schema_and_nulls(tmp_path):
    doc, returns, hns = _write_with_a_gap(tmp_path)
    back = read_forgetting(tmp_path / "eval")
    assert back == doc
    assert {"games", "stages", "returns", "hns", "metrics"} <= set(back)
    assert {"avg_final_hns", "mean_forgetting", "forgetting", "bwt", "avg_performance",
            "zero_shot_transfer", "forward_transfer"} <= set(back["metrics"])
    assert back["games"] == GAMES and back["stages"] == STAGES and back["stage_games"] == GAMES
    assert back["returns"][1][2] is None and back["hns"][1][2] is None
    assert back["returns"][3] == [-10.2, 19.0, 13455.0]
    assert back["reference_runs"] == []
    assert back["metrics"] == compute_metrics(hns, GAMES, GAMES)
    raw = (tmp_path / "eval" / "forgetting.json").read_text()
    assert "NaN" not in raw and "null" in raw
    json.loads(raw)


def test_episode_returns_round_trip_with_null_cells_and_failed_episodes(tmp_path):
    # Two episodes per cell around each mean; Qbert after stage 1 was not evaluated (a null cell)
    # and one of Pong's final episodes failed (a null episode).
    doc, returns, hns = _write_with_a_gap(tmp_path)
    episodes = [[None if math.isnan(r) else [r - 1.0, r + 1.0] for r in row] for row in returns]
    episodes[3][0] = [returns[3, 0], NAN]
    doc = write_forgetting(tmp_path / "eval", GAMES, GAMES, returns, hns, episodes)
    back = read_forgetting(tmp_path / "eval")
    assert back == doc and back["episode_returns"][1][2] is None
    assert back["episode_returns"][3][0] == [returns[3, 0], None]
    assert back["episode_returns"][2][1] == [returns[2, 1] - 1.0, returns[2, 1] + 1.0]
    cells = read_episode_returns(back)
    assert cells[1][2] is None
    np.testing.assert_array_equal(cells[3][0], [returns[3, 0], NAN])
    np.testing.assert_array_equal(cells[0][2], [returns[0, 2] - 1.0, returns[0, 2] + 1.0])
    with pytest.raises(ValueError, match="episode_returns"):
        write_forgetting(tmp_path / "eval", GAMES, GAMES, returns, hns, episodes[1:])


def test_a_file_without_episode_returns_still_reads(tmp_path):
    _write_with_a_gap(tmp_path)
    assert read_episode_returns(read_forgetting(tmp_path / "eval")) == [[None] * 3] * 4  # none given
    path = tmp_path / "eval" / "forgetting.json"
    old = json.loads(path.read_text())
    del old["episode_returns"]  # a file from before the field existed
    path.write_text(json.dumps(old))
    back = read_forgetting(tmp_path / "eval")
    assert back["returns"] == old["returns"] and read_episode_returns(back) is None


def test_wall_seconds_round_trip_and_are_null_where_unknown(tmp_path):
    doc, returns, hns = _write_with_a_gap(tmp_path)
    assert doc["wall_seconds"] == {"train": None, "eval": None} and read_wall_seconds(doc) is None
    doc = write_forgetting(tmp_path / "eval", GAMES, GAMES, returns, hns, wall_seconds={"train": 90.5, "eval": 29.5})
    back = read_forgetting(tmp_path / "eval")
    assert back == doc and back["wall_seconds"] == {"train": 90.5, "eval": 29.5} and read_wall_seconds(back) == 120.0
    # NaN (a run resumed from a checkpoint older than the clocks) is unknown, so is half of it.
    doc = write_forgetting(tmp_path / "eval", GAMES, GAMES, returns, hns, wall_seconds={"train": NAN, "eval": 3.0})
    assert doc["wall_seconds"] == {"train": None, "eval": 3.0} and read_wall_seconds(doc) is None
    del doc["wall_seconds"]  # a file from before the field existed
    assert read_wall_seconds(doc) is None


def test_csv_has_one_row_per_stage_with_return_and_hns_per_game(tmp_path):
    _, returns, hns = _write_with_a_gap(tmp_path)
    with open(tmp_path / "eval" / "forgetting.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["stage"] for row in rows] == STAGES
    assert list(rows[0]) == ["stage"] + [f"{k}/{g}" for g in GAMES for k in ("return", "hns")]
    assert rows[1]["return/Qbert"] == "" and rows[1]["hns/Qbert"] == ""
    for s, row in enumerate(rows):
        for j, game in enumerate(GAMES):
            if not math.isnan(hns[s, j]):
                assert float(row[f"return/{game}"]) == returns[s, j]
                assert float(row[f"hns/{game}"]) == hns[s, j]


def test_png_heat_map_is_a_readable_image_of_the_documented_size(tmp_path):
    _write_with_a_gap(tmp_path)
    path = tmp_path / "eval" / "forgetting.png"
    pixels = matplotlib.image.imread(path)
    # 3 games, 4 rows: max(4, 1 + 0.9 * 3) x max(2.5, 1.2 + 0.5 * 4) inches at 100 dpi.
    assert pixels.shape[:2] == (320, 400) and pixels.ndim == 3
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (400, 320)


def test_writer_leaves_exactly_the_three_files(tmp_path):
    _write_with_a_gap(tmp_path)
    names = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert names == ["forgetting.csv", "forgetting.json", "forgetting.png"]


def test_reading_a_missing_or_corrupt_file_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="forgetting.json"):
        read_forgetting(tmp_path)
    (tmp_path / "forgetting.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_forgetting(tmp_path)
    (tmp_path / "forgetting.json").write_text('{"games": []}')
    with pytest.raises(UserError, match="lacks"):
        read_forgetting(tmp_path)


def test_a_forgetting_file_that_is_not_utf8_is_a_user_error(tmp_path):
    (tmp_path / "forgetting.json").write_bytes(b'{"games": ["P\xf6ng"]}')
    with pytest.raises(UserError, match="forgetting.json"):
        read_forgetting(tmp_path)
