"""`run.py eval --compare`: runs grouped by config, a side-by-side table with IQM intervals, CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from eval.compare import compare_runs
from eval.forgetting import write_forgetting
from train.config import preset
from tests.conftest import run_cli

NAN = math.nan
GAMES = ["Pong", "Breakout"]


def make_run(root: Path, hns, seed: int = 1, core: str = "lstm", learning: str = "tbptt",
             games=GAMES, stage_games=GAMES) -> Path:
    """A run dir with the smoke preset's config.json (seed/model changed) and a hand-made forgetting.json.

    ``hns`` are the rows after each stage; the before-training row is all zeros.
    """
    cfg = preset("smoke")
    cfg.seed, cfg.model.core, cfg.model.learning = seed, core, learning
    cfg.env.games = list(stage_games)
    root.mkdir(parents=True)
    (root / "config.json").write_text(cfg.to_json())
    hns = np.vstack([np.zeros((1, len(games))), np.asarray(hns, dtype=np.float64)])  # before training: 0
    write_forgetting(root / "eval", list(games), list(stage_games), hns * 10.0, hns)
    return root


@pytest.fixture
def runs(tmp_path):
    """Two lstm seeds and one elstm/rtrl seed, same games; known answers in the tests."""
    return [
        make_run(tmp_path / "lstm-s1", [[0.5, 0.1], [0.2, 0.8]], seed=1),
        make_run(tmp_path / "elstm-s1", [[0.3, NAN], [0.3, 0.5]], seed=1, core="elstm", learning="rtrl"),
        make_run(tmp_path / "lstm-s2", [[0.6, 0.3], [0.4, 0.6]], seed=2),
    ]


def test_groups_by_config_and_matches_hand_computation(runs, capsys):
    result = compare_runs(runs, reps=500)
    lstm, elstm = "model.core=lstm,model.learning=tbptt", "model.core=elstm,model.learning=rtrl"
    assert result["labels"] == [lstm, elstm]
    rows = dict(result["rows"])
    assert rows["runs"] == ["lstm-s1;lstm-s2", "elstm-s1"] and rows["seeds"] == [2, 1]
    # lstm: final rows [0.2, 0.8] and [0.4, 0.6]; elstm: [0.3, 0.5].
    assert rows["final_hns/Pong"] == pytest.approx([0.3, 0.3])
    assert rows["final_hns/Breakout"] == pytest.approx([0.7, 0.5])
    # IQM of {0.2, 0.4, 0.6, 0.8}: drop one from each end -> 0.5; of {0.3, 0.5} (n < 4) the mean.
    assert rows["iqm"] == pytest.approx([0.5, 0.4])
    # forgetting: Pong 0.5 - 0.2 = 0.3 and 0.6 - 0.4 = 0.2; BWT the negatives; elstm 0.0.
    assert rows["mean_forgetting"] == pytest.approx([0.25, 0.0])
    assert rows["bwt"] == pytest.approx([-0.25, 0.0])
    # Zero-shot transfer to Breakout (before row 0): 0.1 and 0.3; elstm's score after stage 1 is missing.
    assert rows["mean_zero_shot_transfer"] == [pytest.approx(0.2), None]
    assert rows["mean_forward_transfer"] == [None, None]  # not evaluated with --reference-run
    for point, low, high in zip(rows["iqm"], rows["iqm_low"], rows["iqm_high"]):
        assert low <= point <= high
    assert rows["iqm_low"][0] < rows["iqm_high"][0]
    # One seed: the interval collapses to the point and the note says why.
    assert rows["iqm_low"][1] == rows["iqm_high"][1] == pytest.approx(0.4)
    assert rows["note"] == ["", "1 seed: interval degenerate"]
    out = capsys.readouterr().out
    assert lstm in out and "0.500 [" in out and "1 seed: interval degenerate" in out
    assert result["csv"] == runs[0] / "eval" / "compare.csv" and result["csv"].exists()


def test_single_group_is_labelled_by_directory(tmp_path):
    a = make_run(tmp_path / "a", [[0.5, NAN], [0.2, 0.8]], seed=1)
    b = make_run(tmp_path / "b", [[0.6, NAN], [0.4, 0.6]], seed=2)
    result = compare_runs([a, b], reps=200)
    assert result["labels"] == ["a"] and dict(result["rows"])["seeds"] == [2]


def test_cli_writes_csv_that_reads_back(runs, tmp_path):
    out_csv = tmp_path / "out" / "table.csv"
    proc = run_cli("eval", "--compare", *map(str, runs), "--csv", str(out_csv), timeout=60, check=True)
    assert "IQM [95% CI]" in proc.stdout and str(out_csv) in proc.stdout
    with out_csv.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["metric", "model.core=lstm,model.learning=tbptt", "model.core=elstm,model.learning=rtrl"]
    rows = {r[0]: r[1:] for r in table[1:]}
    assert [float(x) for x in rows["final_hns/Breakout"]] == pytest.approx([0.7, 0.5])
    assert [float(x) for x in rows["iqm"]] == pytest.approx([0.5, 0.4])
    assert [float(x) for x in rows["bwt"]] == pytest.approx([-0.25, 0.0])
    low, high = float(rows["iqm_low"][0]), float(rows["iqm_high"][0])
    assert low <= 0.5 <= high
    assert rows["note"] == ["", "1 seed: interval degenerate"]


def test_cli_rejects_runs_with_different_games(runs, tmp_path):
    other = make_run(tmp_path / "other-games", [[0.5, NAN], [0.2, 0.8]], games=["Breakout", "Pong"],
                     stage_games=["Breakout", "Pong"])
    proc = run_cli("eval", "--compare", str(runs[0]), str(other), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(runs[0]) in lines[0] and str(other) in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_rejects_run_without_forgetting_json(runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(preset("smoke").to_json())
    proc = run_cli("eval", "--compare", str(runs[0]), str(bare), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "forgetting.json" in lines[0]


@pytest.mark.parametrize("argv", [["eval"], ["eval", "--run-dir", "x", "--compare", "y"]])
def test_eval_needs_exactly_one_of_run_dir_and_compare(argv, capsys):
    from run import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_csv_flag_needs_compare(capsys):
    from run import main

    assert main(["eval", "--run-dir", "x", "--csv", "t.csv"]) == 2
    assert "--csv" in capsys.readouterr().err
