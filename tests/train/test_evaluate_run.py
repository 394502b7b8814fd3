"""`run.py eval --run-dir` on a finished 2-stage run recomputes every evaluation file from the stage
checkpoints (before row included); bad runs and references get one-line errors."""

from __future__ import annotations

import json
import shutil

import matplotlib.image
import pytest
from PIL import Image

from envs.registry import score_bounds
from eval.curves import eval_point, read_curves, reference_forward_transfer, write_curves
from train.config import preset
from tests.conftest import run_cli

GAMES = ["Pong", "Breakout"]
FILES = ["curves.csv", "curves.png", "forgetting.csv", "forgetting.json", "forgetting.png"]


@pytest.fixture
def run(tmp_path, smoke_run):
    """A copy of the finished smoke run (so that tests may rewrite or damage it)."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy)
    return copy


def _reference(root, game: str = "Breakout", games: list[str] | None = None):
    """A finished single-task run dir of ``game``: its config and recorded curve (0 -> .1 -> .05 HNS)."""
    cfg = preset("smoke")
    cfg.env.games = games or [game]
    root.mkdir()
    (root / "config.json").write_text(cfg.to_json())
    low, high = score_bounds(game)
    history = [eval_point(f, s, k, [low + h * (high - low)] * len(cfg.env.games))
               for f, s, k, h in [(0, 0, "before", 0.0), (2000, 1, "periodic", 0.1), (4160, 1, "stage", 0.05)]]
    write_curves(root / "eval", list(dict.fromkeys(cfg.env.games)), cfg.env.games, history)
    return root


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_eval_recomputes_every_file_from_stage_checkpoints(run, tmp_path):
    recorded = json.loads((run / "eval" / "forgetting.json").read_text())
    curves_csv = (run / "eval" / "curves.csv").read_bytes()
    for name in FILES:
        if name != "curves.csv":  # the curves are recorded in training only (their checkpoints are rotated)
            (run / "eval" / name).unlink()
    ref = _reference(tmp_path / "ref-breakout")
    proc = run_cli("eval", "--run-dir", str(run), "--reference-run", str(ref), check=True)
    assert sorted(p.name for p in (run / "eval").iterdir()) == FILES
    doc = json.loads((run / "eval" / "forgetting.json").read_text())
    assert doc["games"] == GAMES and doc["stages"] == ["before", "1:Pong", "2:Breakout"]
    # Same parameters, evaluation seeds and episodes as in training: the same matrix, before row included.
    assert doc["returns"] == recorded["returns"] and doc["hns"] == recorded["hns"]
    # Training kept every cell's episodes, and the re-evaluation gives the same ones.
    episodes = preset("smoke").eval.episodes
    assert [[len(cell) for cell in row] for row in recorded["episode_returns"]] == [[episodes] * 2] * 3
    assert doc["episode_returns"] == recorded["episode_returns"]
    assert [[sum(cell) / len(cell) for cell in row] for row in doc["episode_returns"]] == \
        [[pytest.approx(r) for r in row] for row in doc["returns"]]
    assert (run / "eval" / "curves.csv").read_bytes() == curves_csv
    # Forward transfer: Breakout against its reference, from the recorded curve; Pong has no reference.
    history = read_curves(run / "eval", GAMES)
    expected = reference_forward_transfer(history, GAMES, GAMES, {"Breakout": ([0.0, 2000 / 4160, 1.0],
                                                                              [0.0, 0.1, 0.05])})
    ft = doc["metrics"]["forward_transfer"]
    assert ft["Pong"] is None and ft["Breakout"] == pytest.approx(expected["Breakout"])
    assert doc["metrics"]["mean_forward_transfer"] == pytest.approx(expected["Breakout"])
    assert doc["reference_runs"] == [str(ref)]
    assert doc["wall_seconds"] == {"train": None, "eval": None}  # its forgetting.json (the record) was deleted
    assert "before training:" in proc.stdout and "forward transfer" in proc.stdout
    # The PNGs open and have their documented sizes (2 games, 3 rows).
    for name, size in [("forgetting.png", (400, 270)), ("curves.png", (1000, 320))]:
        with Image.open(run / "eval" / name) as image:
            assert image.format == "PNG" and image.size == size, name
        assert matplotlib.image.imread(run / "eval" / name).shape[:2] == (size[1], size[0])


def test_eval_of_chosen_games_fills_every_row(run):
    recorded = json.loads((run / "eval" / "forgetting.json").read_text())
    run_cli("eval", "--run-dir", str(run), "--games", "breakout", "--episodes", "2", check=True)
    doc = json.loads((run / "eval" / "forgetting.json").read_text())
    assert doc["games"] == ["Breakout"]
    assert len(doc["returns"]) == 3 and all(row[0] is not None for row in doc["returns"])
    # Re-evaluating is not training: the run's wall time stays what the trainer recorded.
    assert doc["wall_seconds"] == recorded["wall_seconds"] and recorded["wall_seconds"]["train"] > 0


def test_eval_refuses_a_gap_in_the_stage_checkpoints(run):
    (run / "checkpoints" / "stage_001.pt").unlink()
    line = _one_line_error(run_cli("eval", "--run-dir", str(run)))
    assert "stage_000.pt, stage_002.pt" in line and "without gaps" in line


@pytest.mark.parametrize("kind", ["multi-game", "not a run", "game not in the run"])
def test_eval_refuses_a_bad_reference_run(run, tmp_path, kind):
    if kind == "multi-game":
        ref, expect = _reference(tmp_path / "ref", games=["Breakout", "Pong"]), "trains 2 stages"
    elif kind == "not a run":
        ref, expect = tmp_path, "not a run directory"
    else:
        ref, expect = _reference(tmp_path / "ref", game="Qbert"), "trains Qbert, which this run does not"
    before = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}
    line = _one_line_error(run_cli("eval", "--run-dir", str(run), "--reference-run", str(ref)))
    assert expect in line
    assert {p.name: p.read_bytes() for p in (run / "eval").iterdir()} == before  # nothing rewritten
