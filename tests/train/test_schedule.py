"""End-to-end: a short sequential run produces TensorBoard logs, checkpoints and the evaluation files."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar.metadata import CONFIG_SUMMARY_TAG

from eval.compare import compare_runs
from eval.curves import read_curves
from storage.checkpoint import CheckpointManager
from tests.conftest import run_cli

# The smoke preset: 4 envs x 20 steps x frame skip 4 = 320 frames per update, 4,000 frames per stage
# (13 updates: stages end at 4,160 and 8,320), an evaluation every 2,000 frames. A periodic
# evaluation is taken at the first update that crosses a multiple of 2,000, unless the stage ends
# within 1,000 frames (its stage-end evaluation stands for it): 2,240 (crossing 2,000), not 4,160
# (the end of stage 1), 6,080, and not 8,000 (320 frames before stage 2 ends at 8,320).
SMOKE_EVALS = [(0, 0, "before"), (2240, 1, "periodic"), (4160, 1, "stage"), (6080, 2, "periodic"),
               (8320, 2, "stage")]


def _scalars(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_smoke_run_logs_sps_and_returns_of_both_games(smoke_run):
    acc = _scalars(smoke_run)
    tags = set(acc.Tags()["scalars"])
    for tag in ["charts/SPS", "charts/episodic_return/Pong", "charts/episodic_return/Breakout",
                "losses/policy", "losses/value", "losses/entropy", "losses/total", "stats/policy_lag",
                "stats/env_time", "stats/act_time", "stats/learn_time", "eval/return/Pong",
                "eval/hns/Breakout", "eval/avg_hns"]:
        assert tag in tags, tag
    assert all(e.value > 0 and math.isfinite(e.value) for e in acc.Scalars("charts/SPS"))
    # Breakout episodes are short: at least one finished with a raw, finite return.
    assert all(math.isfinite(e.value) for e in acc.Scalars("charts/episodic_return/Breakout"))
    # The heat map and the curves are images before training and after each stage, decodable PNGs
    # of the files' sizes (2 games: heat map 400 x 250 with one row, 400 x 270 with three; curves 1000 x 320).
    matrix = acc.Images("eval/forgetting_matrix")
    assert [(img.step, img.width, img.height) for img in matrix] == [(0, 400, 250), (4160, 400, 250),
                                                                     (8320, 400, 270)]
    assert [(img.step, img.width, img.height) for img in acc.Images("eval/curves")] == [
        (0, 1000, 320), (4160, 1000, 320), (8320, 1000, 320)]


def test_charts_game_is_the_game_of_each_stage_and_a_dense_run_has_no_cache_dashboard(smoke_run):
    acc = _scalars(smoke_run)
    game = {e.step: e.value for e in acc.Scalars("charts/game")}
    assert game == {e.step: e.value for e in acc.Scalars("charts/stage")}  # 2 distinct games, no --switch-every
    assert {v for step, v in game.items() if step <= 4160} == {0.0}  # Pong up to stage 1's end
    assert {v for step, v in game.items() if step > 4160} == {1.0}  # then Breakout
    assert CONFIG_SUMMARY_TAG not in acc.Tags()["tensors"]  # the cache dashboard is the MoE core's


def test_policy_lag_is_logged_and_never_more_than_one(smoke_run):
    lags = [e.value for e in _scalars(smoke_run).Scalars("stats/policy_lag")]
    assert lags and all(0.0 <= lag <= 1.0 for lag in lags)
    assert max(lags) == 1.0


def test_smoke_run_keeps_a_checkpoint_per_stage_and_a_latest_pointer(smoke_run):
    ckpts = CheckpointManager(smoke_run)
    assert [p.name for p in ckpts.stage_checkpoints()] == ["stage_000.pt", "stage_001.pt", "stage_002.pt"]
    # stage_000 holds the initial parameters, stage_<i> those at the end of stage i.
    assert [ckpts.load(p)["progress"]["total_frames"] for p in ckpts.stage_checkpoints()] == [0, 4160, 8320]
    state = ckpts.load_latest()
    assert state["progress"]["stage"] == 2  # both stages done
    assert state["progress"]["total_frames"] >= 2 * 4000


def test_forgetting_json_has_a_before_row_and_every_game_in_every_row(smoke_run):
    doc = json.loads((smoke_run / "eval" / "forgetting.json").read_text())
    assert doc["games"] == ["Pong", "Breakout"] and doc["stage_games"] == ["Pong", "Breakout"]
    assert doc["stages"] == ["before", "1:Pong", "2:Breakout"]
    assert len(doc["returns"]) == 3 and all(x is not None for row in doc["returns"] for x in row)
    assert {"avg_final_hns", "mean_forgetting", "forgetting", "bwt", "avg_performance", "zero_shot_transfer",
            "forward_transfer"} <= set(doc["metrics"])
    assert len(doc["metrics"]["avg_performance"]) == 3
    # Forgetting is defined for Pong (trained before the last stage) only.
    assert doc["metrics"]["forgetting"]["Breakout"] is None and doc["metrics"]["forgetting"]["Pong"] is not None
    assert doc["metrics"]["zero_shot_transfer"]["Breakout"] == doc["hns"][1][1] - doc["hns"][0][1]
    for name in ("forgetting.csv", "forgetting.png", "curves.csv", "curves.png"):
        assert (smoke_run / "eval" / name).exists(), name


def test_evaluation_curve_points_match_the_schedule_and_tensorboard(smoke_run):
    points = read_curves(smoke_run / "eval", ["Pong", "Breakout"])
    assert [(p["frames"], p["stage"], p["kind"]) for p in points] == SMOKE_EVALS
    # The matrix rows are the before and stage points.
    doc = json.loads((smoke_run / "eval" / "forgetting.json").read_text())
    assert doc["returns"] == [p["returns"] for p in points if p["kind"] != "periodic"]
    # The checkpoint's history keeps each point's episodes (one per game in the smoke preset), and
    # forgetting.json those of the matrix rows.
    history = CheckpointManager(smoke_run).load_latest()["progress"]["evaluations"]
    assert [[len(cell) for cell in p["episodes"]] for p in history] == [[1, 1]] * len(SMOKE_EVALS)
    assert doc["episode_returns"] == [p["episodes"] for p in history if p["kind"] != "periodic"]
    acc = _scalars(smoke_run)
    for j, game in enumerate(["Pong", "Breakout"]):
        logged = acc.Scalars(f"eval/return/{game}")
        assert [e.step for e in logged] == [f for f, _, _ in SMOKE_EVALS]
        assert [e.value for e in logged] == pytest.approx([p["returns"][j] for p in points])
        assert len(acc.Scalars(f"eval/hns/{game}")) == len(SMOKE_EVALS)
    assert [e.step for e in acc.Scalars("eval/avg_hns")] == [f for f, _, _ in SMOKE_EVALS]
    # Mean forgetting is defined from stage 2 on.
    assert [e.step for e in acc.Scalars("eval/forgetting")] == [8320]
    assert acc.Scalars("eval/forgetting")[0].value == pytest.approx(doc["metrics"]["mean_forgetting"])


def test_smoke_run_records_its_wall_time_and_compare_shows_it(smoke_run, tmp_path, capsys):
    doc = json.loads((smoke_run / "eval" / "forgetting.json").read_text())
    wall = doc["wall_seconds"]
    assert wall["train"] > 0 and wall["eval"] > 0
    # The final file holds the final checkpoint's counters (the last evaluation's own time included).
    progress = CheckpointManager(smoke_run).load_latest()["progress"]
    assert wall == {"train": progress["train_seconds"], "eval": progress["eval_seconds"]}
    # Each point's wall_s: the seconds before it, from 0 at the before point, never decreasing.
    with open(smoke_run / "eval" / "curves.csv", newline="") as f:
        walls = [float(row["wall_s"]) for row in csv.DictReader(f)]
    assert len(walls) == len(SMOKE_EVALS) and walls[0] == 0.0
    assert walls == sorted(walls) and walls[1] > 0.0 and walls[-1] < wall["train"] + wall["eval"]
    assert walls == [p["wall_s"] for p in progress["evaluations"]]
    rows = dict(compare_runs([smoke_run], csv_path=tmp_path / "compare.csv", reps=200)["rows"])
    assert rows["wall_minutes"] == [pytest.approx((wall["train"] + wall["eval"]) / 60)]
    assert re.search(r"wall minutes \(train \+ eval\) +\d+\.\d{3}\n", capsys.readouterr().out)


def test_elstm_rtrl_run_logs_rtrl_telemetry(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", "--preset", "smoke", "--games", "Breakout", "--core", "elstm", "--learning", "rtrl",
            "--frames-per-game", "2000", "--run-dir", str(run_dir), "--no-progress", check=True)
    acc = _scalars(run_dir)
    for tag in ("rtrl/max_abs_J", "rtrl/frac_J_gt_1", "rtrl/max_abs_S"):
        values = [e.value for e in acc.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("rtrl/frac_J_gt_1"))
    assert all(e.value > 0.0 for e in acc.Scalars("rtrl/max_abs_S"))



def test_a_periodic_evaluation_just_before_a_stage_end_is_left_to_the_stage_end():
    from train.schedule import evaluation_due

    # The cpu preset's second stage: 640 frames per update, an evaluation every 1,250,000 frames,
    # the stage ending at run frame 5,000,960.
    assert evaluation_due(3_750_400, 640, 1_250_000, 1_250_560)
    assert not evaluation_due(5_000_320, 640, 1_250_000, 640)
    assert not evaluation_due(3_751_040, 640, 1_250_000, 1_249_920)  # no multiple crossed
    assert evaluation_due(4_000, 320, 2_000, 1_000) and not evaluation_due(4_000, 320, 2_000, 999)
