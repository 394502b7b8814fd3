"""`run.py eval --sweep`: T-maze runs tabulated as success against delay per method, with intervals
over seeds and episodes; CSV and PNG written and read back; bad inputs refused in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from eval.evaluate import record_returns
from eval.metrics import two_level_bootstrap_difference_ci, two_level_bootstrap_mean_ci
from eval.sweep import sweep_runs
from tests.conftest import run_cli
from train.config import preset


def write_tmaze_run(root: Path, game: str, before: list[float], after: list[float], seed: int = 1,
                    unroll: int = 0) -> Path:
    """A finished single-game run dir: the memory-rtrl config (``unroll`` > 0: TBPTT(unroll)) and a
    forgetting.json of two evaluations (before training, stage end) with these episode returns."""
    cfg = preset("memory-rtrl")
    cfg.seed, cfg.env.games = seed, [game]
    if unroll:
        cfg.model.learning, cfg.model.unroll = "tbptt", unroll
    root.mkdir(parents=True)
    (root / "config.json").write_text(cfg.to_json())
    returns = np.array([[np.mean(before)], [np.mean(after)]])
    record_returns(root / "eval", [game], [game], returns, [[list(before)], [list(after)]],
                   wall_seconds={"train": 60.0 * seed, "eval": 6.0})
    return root


@pytest.fixture
def sweep(tmp_path) -> list[Path]:
    """results/tmaze/<method>-D<d>/seed<S>: rtrl at D 10 and 100 (2 seeds each), tbptt10 at D 100 (1 seed)."""
    base = tmp_path / "results" / "tmaze"
    return [
        write_tmaze_run(base / "rtrl-D10" / "seed1", "tmaze-10", [0, 1], [1, 1, 1, 1], seed=1),
        write_tmaze_run(base / "rtrl-D10" / "seed2", "tmaze-10", [1, 0], [1, 1, 1, 0], seed=2),
        write_tmaze_run(base / "rtrl-D100" / "seed1", "tmaze-100", [0, 1], [1, 0, 1, 1], seed=1),
        write_tmaze_run(base / "rtrl-D100" / "seed2", "tmaze-100", [0, 0], [1, 1, 0, 1], seed=2),
        write_tmaze_run(base / "tbptt10-D100" / "seed1", "tmaze-100", [1, 0], [0, 1, 0, 1], seed=1, unroll=10),
    ]


def test_cells_are_the_mean_success_over_seeds_with_the_two_level_interval(sweep, capsys):
    out = sweep_runs(sweep, reps=500)
    assert out["methods"] == ["rtrl", "tbptt10"] and out["delays"] == [10, 100]
    c = out["cells"]
    assert set(c) == {("rtrl", 10), ("rtrl", 100), ("tbptt10", 100)}  # tbptt10 has no D = 10
    assert c[("rtrl", 10)]["success"] == pytest.approx((1.0 + 0.75) / 2)
    assert c[("rtrl", 100)]["success"] == pytest.approx(0.75)
    assert c[("tbptt10", 100)]["success"] == pytest.approx(0.5) and c[("tbptt10", 100)]["seeds"] == 1
    point, low, high = two_level_bootstrap_mean_ci([np.array([1, 1, 1, 1.0]), np.array([1, 1, 1, 0.0])], reps=500)
    assert (c[("rtrl", 10)]["low"], c[("rtrl", 10)]["high"]) == (low, high) and low < point < high
    assert c[("rtrl", 10)]["wall_minutes"] == pytest.approx((1.1 + 2.1) / 2)
    assert c[("rtrl", 10)]["exits"] == 2
    table = capsys.readouterr().out
    assert "0.88 [" in table and "D=100" in table and " - " in table.splitlines()[2] + " "


def test_the_mean_interval_is_the_difference_interval_against_zero():
    scores = [np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0])]
    assert two_level_bootstrap_mean_ci(scores, reps=300) == two_level_bootstrap_difference_ci(
        scores, [np.zeros(1), np.zeros(1)], reps=300)
    point, low, high = two_level_bootstrap_mean_ci([np.ones(4), np.ones(3)], reps=300)
    assert point == low == high == 1.0  # nothing varies: the interval collapses
    point, low, high = two_level_bootstrap_mean_ci([np.array([0.0, 1.0])] * 3, reps=300)
    assert point == 0.5 and low < 0.5 < high  # the episodes vary: the interval does not collapse


def test_cli_writes_csv_and_png_that_read_back(sweep, tmp_path):
    proc = run_cli("eval", "--sweep", *map(str, sweep), check=True)
    home = tmp_path / "results" / "tmaze"
    rows = list(csv.DictReader((home / "sweep.csv").open()))
    assert [(r["method"], r["delay"], r["seeds"]) for r in rows] == [("rtrl", "10", "2"), ("rtrl", "100", "2"),
                                                                     ("tbptt10", "100", "1")]
    assert float(rows[1]["success"]) == pytest.approx(0.75)
    assert (home / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sweep.csv" in proc.stdout
    out_csv, out_png = tmp_path / "o" / "t.csv", tmp_path / "o" / "t.png"
    run_cli("eval", "--sweep", *map(str, sweep), "--csv", str(out_csv), "--png", str(out_png), check=True)
    assert out_csv.read_text() == (home / "sweep.csv").read_text() and out_png.stat().st_size > 1000


def test_runs_outside_the_layout_are_labelled_by_the_differing_fields(tmp_path):
    a = write_tmaze_run(tmp_path / "a", "tmaze-30", [0, 1], [1, 1])
    b = write_tmaze_run(tmp_path / "b", "tmaze-30", [0, 1], [0, 1], unroll=10)
    assert sweep_runs([a, b], reps=100)["methods"] == ["model.learning=rtrl,model.unroll=0",
                                                       "model.learning=tbptt,model.unroll=10"]


def test_bad_inputs_are_one_line_and_exit_2(sweep, tmp_path):
    atari = write_tmaze_run(tmp_path / "atari", "tmaze-10", [0], [1])
    cfg = (atari / "config.json").read_text().replace('"tmaze-10"', '"Breakout"')
    (atari / "config.json").write_text(cfg)
    doc = (atari / "eval" / "forgetting.json").read_text().replace('"tmaze-10"', '"Breakout"')
    (atari / "eval" / "forgetting.json").write_text(doc)
    twice = write_tmaze_run(tmp_path / "results" / "tmaze" / "rtrl-D10" / "seed1b", "tmaze-10", [0], [1], seed=1)
    for argv, needle in [(["eval", "--sweep", str(atari)], "one T-maze each"),
                         (["eval", "--sweep", str(sweep[0]), str(twice)], "two runs of one seed"),
                         (["eval", "--sweep", str(tmp_path / "missing")], "not a directory"),
                         (["eval", "--run-dir", str(sweep[0]), "--png", "x.png"], "--png")]:
        proc = run_cli(*argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (argv, proc.stderr)
