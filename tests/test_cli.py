"""Bad input gets one clear line on stderr and exit code 2, never a traceback, and loses no data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_game_suggests_close_names(tmp_path):
    line = _one_line_error(run_cli("train", "--games", "Pong,Breakot", "--run-dir", str(tmp_path / "r")))
    assert "Breakot" in line and "Breakout" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,value", [("--frames-per-game", "0"), ("--frames-per-game", "-5"),
                                        ("--num-envs", "0"), ("--num-envs", "-2"), ("--num-envs", "many"),
                                        ("--env-backend", "nope"), ("--core", "transformer"),
                                        ("--lr", "nan"), ("--lr", "-1"), ("--hidden-size", "0"),
                                        ("--eval-every", "-1"), ("--eval-greedy", "maybe")])
def test_impossible_sizes_and_choices_are_refused(tmp_path, flag, value):
    line = _one_line_error(run_cli("train", flag, value, "--run-dir", str(tmp_path / "r")))
    assert flag in line
    assert not (tmp_path / "r").exists()


def test_reference_run_applies_to_run_dir_not_compare(tmp_path):
    line = _one_line_error(run_cli("eval", "--compare", str(tmp_path), "--reference-run", str(tmp_path)))
    assert "--reference-run" in line


def test_unwritable_run_dir_is_refused():
    line = _one_line_error(run_cli("train", "--preset", "smoke", "--run-dir", "/proc/no/such/run"))
    assert "/proc/no/such/run" in line


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    line = _one_line_error(run_cli("eval", "--run-dir", str(tmp_path)))
    assert "not a run directory" in line


def test_eval_of_a_run_without_checkpoints(tmp_path, smoke_run):
    shutil.copy(smoke_run / "config.json", tmp_path / "config.json")
    line = _one_line_error(run_cli("eval", "--run-dir", str(tmp_path)))
    assert "no stage checkpoints" in line and str(tmp_path) in line


def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path, smoke_run):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    victim = run / "checkpoints" / "stage_000.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    line = _one_line_error(run_cli("eval", "--run-dir", str(run)))
    assert "stage_000.pt" in line and "corrupt" in line
    assert victim.read_bytes() == bytes(data)


def test_resume_from_a_corrupt_latest_checkpoint_is_refused(tmp_path, smoke_run):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a failing disk
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    line = _one_line_error(run_cli("train", "--preset", "smoke", "--run-dir", str(run), "--resume"))
    assert latest.name in line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_unknown_subcommand_and_bench(tmp_path):
    _one_line_error(run_cli("nosuch"))
    _one_line_error(run_cli("bench", "nosuch"))


def test_games_lists_the_57_atari_games_and_the_memory_tasks_with_their_score_bounds():
    from envs.registry import GAMES

    proc = run_cli("games", check=True)
    lines = [line for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert [line.split()[0] for line in lines] == list(GAMES) and len(GAMES) == 57 + 4 + 3  # + tmaze-D[-k3|-k4]
    pong = next(line for line in lines if line.startswith("Pong "))
    assert pong.split()[1:3] == ["-20.7", "14.6"] and "human" in pong
    assert "oracle" in next(line for line in lines if line.startswith("watermaze"))


def test_games_piped_into_a_reader_that_stops_early_prints_no_traceback():
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run(f"{sys.executable} run.py games | head -1", shell=True, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("game") and proc.stderr == ""


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> contents)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_without_latest_continues_from_the_newest_checkpoint_and_keeps_the_stages(tmp_path, smoke_run):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "checkpoints" / "latest").unlink()
    stages = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("stage_*.pt")}
    newest = max((run / "checkpoints").glob("frames_*.pt"))
    proc = run_cli("train", "--preset", "smoke", "--run-dir", str(run), "--resume", "--no-progress", check=True)
    assert f"resuming from {newest}" in proc.stdout
    assert "latest" in proc.stderr and "warning" in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("stage_*.pt")} == stages


def test_resume_without_latest_or_any_valid_checkpoint_is_refused_and_touches_nothing(tmp_path, smoke_run):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "checkpoints" / "latest").unlink()
    for p in (run / "checkpoints").glob("*.pt"):
        p.write_bytes(p.read_bytes()[:50])
    before = _tree_bytes(run)
    line = _one_line_error(run_cli("train", "--preset", "smoke", "--run-dir", str(run), "--resume"))
    assert "no valid checkpoint" in line
    assert _tree_bytes(run) == before


def _readonly_copy(tmpfs, run: Path) -> Path:
    """``run`` copied onto a tmpfs that is then remounted read-only."""
    mount = tmpfs("64m")
    shutil.copytree(run, mount / "run")
    tmpfs.readonly(mount)
    return mount / "run"


@pytest.mark.parametrize("command", [["eval", "--run-dir"], ["train", "--preset", "smoke", "--resume", "--run-dir"]])
def test_a_read_only_run_dir_is_refused_before_any_work(tmpfs, smoke_run, command):
    run = _readonly_copy(tmpfs, smoke_run)
    proc = run_cli(*command, str(run))
    line = _one_line_error(proc)
    assert "Read-only file system" in line and str(run) in line
    assert "evaluating" not in proc.stdout and "before training" not in proc.stdout


def test_an_unwritable_compare_csv_is_refused(smoke_run):
    line = _one_line_error(run_cli("eval", "--compare", str(smoke_run), "--csv", "/proc/x.csv"))
    assert "/proc/x.csv" in line


@pytest.mark.parametrize("args,flag", [
    (["train", "--preset", "smoke", "--num-envs", "1000000000000"], "--num-envs"),
    (["train", "--preset", "smoke", "--hidden-size", "1000000000"], "--hidden-size"),
    (["train", "--preset", "smoke", "--rollout-length", "10000000000"], "--rollout-length"),
    (["train", "--core", "moe", "--num-experts", "100000000"], "--num-experts"),
    (["diag", "copy", "--delay", "1000000000000"], "--delay"),
    (["diag", "copy", "--hidden-size", "1000000000"], "--hidden-size"),
])
def test_sizes_beyond_this_machines_memory_are_refused_from_an_estimate(tmp_path, args, flag):
    run_dir = tmp_path / "r"
    line = _one_line_error(run_cli(*args, *(["--run-dir", str(run_dir)] if args[0] == "train" else []), timeout=60))
    assert flag in line and "estimate" in line and "GiB" in line
    assert not run_dir.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3"])
def test_a_dist_timeout_that_is_not_a_finite_positive_number_is_refused(tmp_path, value):
    line = _one_line_error(run_cli("train", "--preset", "smoke", "--dist-timeout", value,
                                   "--run-dir", str(tmp_path / "r")))
    assert "--dist-timeout" in line
    assert not (tmp_path / "r").exists()
