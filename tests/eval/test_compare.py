"""`run.py eval --compare`: runs grouped by config, a side-by-side table with IQM, learning,
forgetting and BWT intervals, CSV; runs written before episode returns were kept still compare."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from envs.registry import score_bounds
from eval.compare import compare_runs
from eval.evaluate import record_returns
from train.config import preset
from tests.conftest import ROOT, run_cli

NAN = math.nan
GAMES = ["Pong", "Breakout"]


def write_run(root: Path, episode_hns, seed: int = 1, core: str = "lstm", learning: str = "tbptt",
              games=GAMES, stage_games=GAMES, keep_episodes: bool = True, wall_seconds=None) -> Path:
    """A run dir with the smoke preset's config.json (seed/model/games changed) and a forgetting.json
    written by ``record_returns`` from episode scores.

    ``episode_hns`` ``[S + 1, G, K]`` are the HNS of each cell's episodes (row 0 before training),
    turned into raw returns; a NaN cell was not evaluated. ``keep_episodes=False`` writes the file
    as versions before ``episode_returns`` did (no such key); ``wall_seconds`` ``{"train", "eval"}``
    (``None``: unknown, as in older files).
    """
    cfg = preset("smoke")
    cfg.seed, cfg.model.core, cfg.model.learning = seed, core, learning
    cfg.env.games = list(stage_games)
    root.mkdir(parents=True)
    (root / "config.json").write_text(cfg.to_json())
    bounds = np.array([score_bounds(g) for g in games])  # [G, 2]: random, human
    raw = bounds[None, :, :1] + np.asarray(episode_hns, dtype=np.float64) * (bounds[:, 1:] - bounds[:, :1])[None]
    returns = raw.mean(axis=2)  # [S + 1, G]
    episodes = [[None if math.isnan(m) else cell.tolist() for m, cell in zip(mrow, row)]
                for mrow, row in zip(returns, raw)]
    record_returns(root / "eval", list(games), list(stage_games), returns, episodes, wall_seconds=wall_seconds)
    if not keep_episodes:
        path = root / "eval" / "forgetting.json"
        doc = json.loads(path.read_text())
        del doc["episode_returns"]
        path.write_text(json.dumps(doc))
    return root


def make_run(root: Path, hns, spread: float = 0.0, **kwargs) -> Path:
    """:func:`write_run` with ``hns`` the rows after each stage (before training: all zeros) and two
    episodes per cell, at each score ``-+ spread``."""
    hns = np.vstack([np.zeros((1, len(kwargs.get("games", GAMES)))), np.asarray(hns, dtype=np.float64)])
    return write_run(root, hns[:, :, None] + np.array([-spread, spread]), **kwargs)


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
    # Final average HNS: the mean of the same entries; lstm's interval resamples each game's two
    # seeds, so its replicates lie in [0.4, 0.6]; elstm's one seed collapses.
    assert rows["mean_hns"] == pytest.approx([0.5, 0.4])
    assert 0.4 - 1e-12 <= rows["mean_hns_low"][0] < 0.5 < rows["mean_hns_high"][0] <= 0.6 + 1e-12
    assert rows["mean_hns_low"][1] == rows["mean_hns_high"][1] == pytest.approx(0.4)
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
    # Learning (stage end minus before, every episode equal): lstm Pong 0.5 and 0.6 over the two
    # seeds, so the replicates are 0.5, 0.55 or 0.6 and the interval is [0.5, 0.6]; Breakout
    # (stage 2) 0.8 and 0.6; elstm's one seed collapses.
    assert rows["learning/Pong"] == pytest.approx([0.55, 0.3])
    assert rows["learning_low/Pong"] == pytest.approx([0.5, 0.3])
    assert rows["learning_high/Pong"] == pytest.approx([0.6, 0.3])
    assert rows["learning/Breakout"] == pytest.approx([0.7, 0.5])
    assert rows["learning_low/Breakout"] == pytest.approx([0.6, 0.5])
    assert rows["learning_high/Breakout"] == pytest.approx([0.8, 0.5])
    assert rows["learned/Pong"] == rows["learned/Breakout"] == ["yes", "yes"]
    # Forgetting and BWT over the seeds: {0.3, 0.2} -> [0.2, 0.3]; one seed: degenerate.
    assert rows["mean_forgetting_low"] == pytest.approx([0.2, 0.0])
    assert rows["mean_forgetting_high"] == pytest.approx([0.3, 0.0])
    assert rows["bwt_low"] == pytest.approx([-0.3, 0.0]) and rows["bwt_high"] == pytest.approx([-0.2, 0.0])
    # Per game: with two games only Pong's forgetting is defined, and it is the mean's.
    for suffix in ("", "_low", "_high"):
        assert rows[f"forgetting{suffix}/Pong"] == pytest.approx(rows[f"mean_forgetting{suffix}"])
        assert rows[f"forgetting{suffix}/Breakout"] == [None, None]
    assert rows["note"] == ["", "1 seed: interval degenerate over seeds"]
    out = capsys.readouterr().out
    assert lstm in out and "0.500 [" in out and "1 seed: interval degenerate" in out
    assert "learning Pong [95% CI]" in out and "0.550 [0.500, 0.600] yes" in out
    assert "mean forgetting [95% CI]" in out and "0.250 [0.200, 0.300]" in out
    assert "  forgetting Pong [95% CI]" in out and "forgetting Breakout" not in out
    assert "BWT [95% CI]" in out and "-0.250 [-0.300, -0.200]" in out
    assert result["csv"] == runs[0] / "eval" / "compare.csv" and result["csv"].exists()


def test_single_group_is_labelled_by_directory(tmp_path):
    a = make_run(tmp_path / "a", [[0.5, NAN], [0.2, 0.8]], seed=1)
    b = make_run(tmp_path / "b", [[0.6, NAN], [0.4, 0.6]], seed=2)
    result = compare_runs([a, b], reps=200)
    assert result["labels"] == ["a"] and dict(result["rows"])["seeds"] == [2]


def test_single_group_in_the_results_layout_is_labelled_by_its_config_directory(tmp_path):
    """results/<experiment>/<config>/seed<S>: the label is <config>, not the seed directory's name."""
    a = make_run(tmp_path / "lstm" / "seed1", [[0.5, NAN], [0.2, 0.8]], seed=1)
    b = make_run(tmp_path / "lstm" / "seed2", [[0.6, NAN], [0.4, 0.6]], seed=2)
    assert compare_runs([a, b], reps=200)["labels"] == ["lstm"]
    c = make_run(tmp_path / "seeds" / "seed1x", [[0.5, NAN], [0.2, 0.8]], seed=1)  # not a seed<S> name
    assert compare_runs([c], reps=200)["labels"] == ["seed1x"]


def test_groups_in_the_results_layout_are_labelled_by_their_config_directories(tmp_path):
    """results/<experiment>/<config>/seed<S> with several configs: each column is its <config>, not a
    list of the config fields that differ; runs outside the layout keep the field labels."""
    a1 = make_run(tmp_path / "lstm" / "seed1", [[0.5, NAN], [0.2, 0.8]], seed=1)
    a2 = make_run(tmp_path / "lstm" / "seed2", [[0.6, NAN], [0.4, 0.6]], seed=2)
    b1 = make_run(tmp_path / "elstm" / "seed1", [[0.3, NAN], [0.3, 0.5]], seed=1, core="elstm", learning="rtrl")
    assert compare_runs([a1, a2, b1], reps=200)["labels"] == ["lstm", "elstm"]
    c1 = make_run(tmp_path / "elstm-s1", [[0.3, NAN], [0.3, 0.5]], seed=1, core="elstm", learning="rtrl")
    assert compare_runs([a1, c1], reps=200)["labels"] == ["model.core=lstm,model.learning=tbptt",
                                                          "model.core=elstm,model.learning=rtrl"]


def test_a_field_added_after_a_run_was_written_takes_its_default_when_grouping(tmp_path):
    """A config.json written before a field existed (here model.chrono_max, whose default 0 means off)
    groups with a newer seed of the same method instead of making a column of its own."""
    old = make_run(tmp_path / "moe" / "seed1", [[0.5, NAN], [0.2, 0.8]], seed=1)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["model"]["chrono_max"]
    (old / "config.json").write_text(json.dumps(cfg))
    new = make_run(tmp_path / "moe" / "seed2", [[0.6, NAN], [0.4, 0.6]], seed=2)
    assert dict(compare_runs([old, new], reps=200)["rows"])["seeds"] == [2]
    other = make_run(tmp_path / "chrono" / "seed1", [[0.6, NAN], [0.4, 0.6]], seed=1)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["chrono_max"] = 300.0  # a real difference still splits the groups
    (other / "config.json").write_text(json.dumps(cfg))
    assert dict(compare_runs([old, new, other], reps=200)["rows"])["seeds"] == [2, 1]


def test_cli_writes_csv_that_reads_back(runs, tmp_path):
    out_csv = tmp_path / "out" / "table.csv"
    proc = run_cli("eval", "--compare", *map(str, runs), "--csv", str(out_csv), timeout=60, check=True)
    assert "IQM [95% CI]" in proc.stdout and "final mean HNS [95% CI]" in proc.stdout and str(out_csv) in proc.stdout
    with out_csv.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["metric", "model.core=lstm,model.learning=tbptt", "model.core=elstm,model.learning=rtrl"]
    rows = {r[0]: r[1:] for r in table[1:]}
    assert [float(x) for x in rows["final_hns/Breakout"]] == pytest.approx([0.7, 0.5])
    assert [float(x) for x in rows["iqm"]] == pytest.approx([0.5, 0.4])
    assert [float(x) for x in rows["bwt"]] == pytest.approx([-0.25, 0.0])
    low, high = float(rows["iqm_low"][0]), float(rows["iqm_high"][0])
    assert low <= 0.5 <= high
    assert rows["note"] == ["", "1 seed: interval degenerate over seeds"]
    assert [float(x) for x in rows["learning/Pong"]] == pytest.approx([0.55, 0.3])
    assert rows["learned/Breakout"] == ["yes", "yes"]
    assert [float(x) for x in rows["mean_forgetting_low"]] == pytest.approx([0.2, 0.0])
    assert [float(x) for x in rows["bwt_high"]] == pytest.approx([-0.2, 0.0])


THREE = ["Pong", "Breakout", "Qbert"]


def _three_game_seed(root: Path, seed: int) -> Path:
    """One seed of a 3-game run with 8 noisy episodes per cell (HNS sd 0.3): Pong gains 1.0 HNS in
    its stage, Breakout nothing (the negative control), Qbert loses 1.0."""
    rng = np.random.default_rng(seed)
    levels = np.array([[0.0, 0.2, 1.0],  # before training
                       [1.0, 0.2, 1.0],  # after stage 1 (Pong)
                       [0.5, 0.2, 1.0],  # after stage 2 (Breakout): the same level as before
                       [0.4, 0.2, 0.0]])  # after stage 3 (Qbert)
    return write_run(root, levels[:, :, None] + 0.3 * rng.normal(size=(4, 3, 8)), seed=seed,
                     games=THREE, stage_games=THREE)


def test_three_seeds_learning_rows_tell_gain_from_none_and_loss(tmp_path):
    runs = [_three_game_seed(tmp_path / f"s{seed}", seed) for seed in (1, 2, 3)]
    rows = dict(compare_runs(runs, reps=2000)["rows"])
    assert rows["seeds"] == [3]
    assert rows["learned/Pong"] == ["yes"] and rows["learning_low/Pong"][0] > 0.0
    assert rows["learned/Breakout"] == ["unclear"]
    assert rows["learning_low/Breakout"][0] < 0.0 < rows["learning_high/Breakout"][0]
    assert rows["learned/Qbert"] == ["worse"] and rows["learning_high/Qbert"][0] < 0.0
    for game in THREE:
        low, point, high = (rows[f"{k}/{game}"][0] for k in ("learning_low", "learning", "learning_high"))
        assert low < point < high
    # Forgetting is defined for Pong and Breakout, BWT for stages 1 and 2: each seed has one; the
    # interval over the three seeds holds their mean.
    assert rows["mean_forgetting_low"][0] <= rows["mean_forgetting"][0] <= rows["mean_forgetting_high"][0]
    assert rows["bwt_low"][0] <= rows["bwt"][0] <= rows["bwt_high"][0]
    assert rows["mean_forgetting_low"][0] < rows["mean_forgetting_high"][0]
    assert rows["note"] == [""]


def test_runs_without_episode_returns_still_compare_and_are_left_out_of_learning(tmp_path, capsys):
    old = make_run(tmp_path / "old", [[0.5, 0.1], [0.2, 0.8]], seed=1, keep_episodes=False)
    rows = dict(compare_runs([old], reps=200)["rows"])
    assert rows["final_hns/Pong"] == pytest.approx([0.2]) and rows["mean_forgetting"] == pytest.approx([0.3])
    assert rows["learning/Pong"] == rows["learning_low/Pong"] == rows["learned/Pong"] == [None]
    assert "no episode returns in old" in rows["note"][0] and "left out of learning" in rows["note"][0]
    assert re.search(r"learning Pong \[95% CI\] +n/a\n", capsys.readouterr().out)
    # Beside a seed that kept them, the old one is left out of learning only (and named in the note).
    new = make_run(tmp_path / "new", [[0.6, 0.3], [0.4, 0.6]], seed=2, spread=0.1)
    rows = dict(compare_runs([old, new], reps=200)["rows"])
    assert rows["seeds"] == [2] and rows["mean_forgetting"] == pytest.approx([0.25])
    assert rows["learning/Pong"] == pytest.approx([0.6]) and rows["learning/Breakout"] == pytest.approx([0.6])
    assert rows["learning_low/Pong"][0] < 0.6 < rows["learning_high/Pong"][0]  # episode noise only
    assert rows["note"][0].startswith("no episode returns in old (")


def test_wall_minutes_are_the_mean_over_seeds_of_training_plus_evaluation(tmp_path, capsys):
    a = make_run(tmp_path / "a", [[0.5, 0.1], [0.2, 0.8]], seed=1, wall_seconds={"train": 300.0, "eval": 60.0})
    b = make_run(tmp_path / "b", [[0.6, 0.3], [0.4, 0.6]], seed=2, wall_seconds={"train": 420.0, "eval": 120.0})
    old = make_run(tmp_path / "old", [[0.6, 0.3], [0.4, 0.6]], seed=3)  # no wall time
    out_csv = tmp_path / "table.csv"
    rows = dict(compare_runs([a, b], csv_path=out_csv, reps=200)["rows"])
    assert rows["wall_minutes"] == [pytest.approx((6.0 + 9.0) / 2)] and rows["note"] == [""]
    assert re.search(r"wall minutes \(train \+ eval\) +7\.500\n", capsys.readouterr().out)
    with out_csv.open(newline="") as f:
        assert {r[0]: r[1:] for r in csv.reader(f)}["wall_minutes"] == ["7.5"]
    # A seed without it is left out of the mean and named; alone it gives n/a (an empty CSV cell).
    rows = dict(compare_runs([a, b, old], csv_path=out_csv, reps=200)["rows"])
    assert rows["wall_minutes"] == [pytest.approx(7.5)]
    assert rows["note"] == ["no wall time in old (older forgetting.json): left out of wall minutes"]
    capsys.readouterr()
    rows = dict(compare_runs([old], csv_path=out_csv, reps=200)["rows"])
    assert rows["wall_minutes"] == [None] and "wall" not in rows["note"][0]
    assert re.search(r"wall minutes \(train \+ eval\) +n/a\n", capsys.readouterr().out)


def test_committed_results_without_wall_time_compare_with_n_a(tmp_path, capsys):
    old = ROOT / "results" / "probes-cpu-preset" / "lstm-adam3e-4-stage1" / "seed1"  # a stage row, no wall time
    assert "wall_seconds" not in json.loads((old / "eval" / "forgetting.json").read_text())
    out_csv = tmp_path / "table.csv"
    assert dict(compare_runs([old], csv_path=out_csv, reps=200)["rows"])["wall_minutes"] == [None]
    assert re.search(r"wall minutes \(train \+ eval\) +n/a\n", capsys.readouterr().out)
    with out_csv.open(newline="") as f:
        assert {r[0]: r[1:] for r in csv.reader(f)}["wall_minutes"] == [""]


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
