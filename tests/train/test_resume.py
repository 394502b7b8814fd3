"""A run killed with SIGKILL resumes from its latest checkpoint without a discontinuity, and its
evaluation history is neither lost nor duplicated."""

from __future__ import annotations

import json
import shutil

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from eval.curves import read_curves
from storage.checkpoint import CheckpointManager
from tests.conftest import run_cli, train_and_kill

ARGS = ["--preset", "smoke", "--frames-per-game", "16000", "--checkpoint-every", "3000", "--eval-every", "4000",
        "--no-progress"]
GAMES = ["Pong", "Breakout"]
# 320 frames per update, 50 updates per stage (stages end at 16,000 and 32,000). Periodic evaluations
# at the first update crossing a multiple of 4,000 that does not end a stage: 4,160 (13 updates),
# 8,000 (25), 12,160 (38), then 20,160, 24,000, 28,160; 16,000 and 32,000 are the stage ends.
EXPECTED_EVALS = [(0, "before"), (4160, "periodic"), (8000, "periodic"), (12160, "periodic"), (16000, "stage"),
                  (20160, "periodic"), (24000, "periodic"), (28160, "periodic"), (32000, "stage")]


def _evaluated_after(run_dir, frames: int) -> bool:
    """Whether eval/curves.csv already holds a periodic evaluation taken after ``frames``."""
    if not (run_dir / "eval" / "curves.csv").exists():
        return False
    return any(p["kind"] == "periodic" and p["frames"] > frames for p in read_curves(run_dir / "eval", GAMES))


def test_sigkilled_run_resumes_from_checkpoint_frame_count(tmp_path):
    run_dir = tmp_path / "run"
    # Kill it after a periodic evaluation that no checkpoint holds yet: the resumed run must drop it
    # (files and TensorBoard) and take it again, once.
    train_and_kill([*ARGS, "--run-dir", str(run_dir)], run_dir,
                   lambda frames: frames > 0 and _evaluated_after(run_dir, frames))
    ckpts = CheckpointManager(run_dir)
    saved = ckpts.load_latest()["progress"]
    assert 0 < saved["total_frames"] < 2 * 16000
    assert _evaluated_after(run_dir, saved["total_frames"])
    assert all(p["frames"] <= saved["total_frames"] for p in saved["evaluations"])

    resumed = run_cli("train", *ARGS, "--run-dir", str(run_dir), "--resume", check=True)
    assert f"at frame {saved['total_frames']:,}" in resumed.stdout
    final = ckpts.load_latest()["progress"]
    assert final["stage"] == 2 and final["total_frames"] >= 2 * 16000

    # TensorBoard: one continuous, strictly increasing frame axis across the kill.
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    frames = [e.step for e in acc.Scalars("charts/frames")]
    assert frames == sorted(set(frames))
    assert any(f <= saved["total_frames"] for f in frames) and frames[-1] >= 2 * 16000
    values = [e.value for e in acc.Scalars("charts/frames")]
    assert values == [float(f) for f in frames]

    # Evaluation history: every expected point exactly once, in the checkpoint, the file and TensorBoard.
    history = final["evaluations"]
    assert [(p["frames"], p["kind"]) for p in history] == EXPECTED_EVALS
    on_disk = read_curves(run_dir / "eval", GAMES)
    assert [(p["frames"], p["kind"]) for p in on_disk] == EXPECTED_EVALS
    assert [p["returns"] for p in on_disk] == [p["returns"] for p in history]
    for game in GAMES:
        assert [e.step for e in acc.Scalars(f"eval/return/{game}")] == [f for f, _ in EXPECTED_EVALS]
    doc = json.loads((run_dir / "eval" / "forgetting.json").read_text())
    assert doc["returns"] == [p["returns"] for p in history if p["kind"] != "periodic"]

    # Wall time sums over the resume: the resumed run adds to the checkpoint's clocks, the points
    # it kept keep their wall_s, and wall_s never decreases across the kill.
    assert saved["train_seconds"] > 0 and saved["eval_seconds"] > 0
    assert final["train_seconds"] > saved["train_seconds"] and final["eval_seconds"] > saved["eval_seconds"]
    kept = len(saved["evaluations"])
    assert [p["wall_s"] for p in history[:kept]] == [p["wall_s"] for p in saved["evaluations"]]
    walls = [p["wall_s"] for p in on_disk]
    assert walls == [p["wall_s"] for p in history] and walls == sorted(walls)
    assert doc["wall_seconds"] == {"train": final["train_seconds"], "eval": final["eval_seconds"]}


def test_existing_run_dir_without_resume_is_refused(smoke_run):
    proc = run_cli("train", "--preset", "smoke", "--run-dir", str(smoke_run), "--no-progress")
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_a_different_config_is_refused(smoke_run):
    proc = run_cli("train", "--preset", "smoke", "--run-dir", str(smoke_run), "--resume", "--num-envs", "3")
    assert proc.returncode == 2
    assert "num_envs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_resume_of_a_finished_run_does_nothing_more(smoke_run, tmp_path):
    smoke_run = shutil.copytree(smoke_run, tmp_path / "run")  # the shared run stays as other tests read it
    before = CheckpointManager(smoke_run).load_latest()["progress"]
    proc = run_cli("train", "--preset", "smoke", "--run-dir", str(smoke_run), "--resume", "--no-progress", check=True)
    after = CheckpointManager(smoke_run).load_latest()["progress"]
    assert (after["stage"], after["total_frames"]) == (before["stage"], before["total_frames"])
    assert json.dumps(after["evaluations"]) == json.dumps(before["evaluations"])
    assert "done" in proc.stdout
    # Resuming must not purge what was logged up to the checkpoint, the final evaluation included.
    acc = EventAccumulator(str(smoke_run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    # before, a periodic point, stage 1, a periodic point, stage 2 (tests/train/test_schedule.py).
    assert len(acc.Scalars("eval/return/Pong")) == 5 and len(acc.Scalars("eval/return/Breakout")) == 5
