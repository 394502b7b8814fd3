"""A sweep of bad command lines through ``run.py`` as real subprocesses: every one exits 2 with exactly one
line on stderr and no traceback, and every existing run dir it points at (a finished run, and copies of it
damaged in the ways users and disks damage runs) is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # about 50 CLI starts (torch imports): a few minutes on 2 busy cores


def _damaged_runs(base: Path, smoke_run: Path) -> dict[str, Path]:
    """Copies of a finished run: intact, and damaged in one way each."""
    runs = {name: base / name for name in ("ok", "bad_latest", "no_latest_all_bad", "non_utf8", "long_latest",
                                           "bad_stage")}
    for path in runs.values():
        shutil.copytree(smoke_run, path)
    ckpts = lambda name: runs[name] / "checkpoints"  # noqa: E731
    latest = ckpts("bad_latest") / (ckpts("bad_latest") / "latest").read_text().strip()
    latest.write_bytes(latest.read_bytes()[:1000])
    (ckpts("no_latest_all_bad") / "latest").unlink()
    for p in ckpts("no_latest_all_bad").glob("*.pt"):
        p.write_bytes(p.read_bytes()[:50])
    config = runs["non_utf8"] / "config.json"
    config.write_bytes(config.read_bytes().replace(b'"Pong"', b'"P\xf6ng"'))
    (ckpts("long_latest") / "latest").write_text("f" * 300 + ".pt\n")
    stage = ckpts("bad_stage") / "stage_000.pt"
    data = bytearray(stage.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stage.write_bytes(bytes(data))
    return runs


def _command_lines(runs: dict[str, Path], base: Path, readonly: Path | None) -> list[list[str]]:
    ok, new, empty = str(runs["ok"]), str(base / "new"), str(base / "empty")
    long_dir = str(base / ("x" * 300) / "run")
    smoke = ["train", "--preset", "smoke", "--run-dir", new]
    resume = lambda name: ["train", "--preset", "smoke", "--resume", "--run-dir", str(runs[name])]  # noqa: E731
    lines = [
        ["train", "--games", "Pong,Breakot", "--run-dir", new],
        ["train", "--games", ",", "--run-dir", new],
        ["train", "--preset", "nope", "--run-dir", new],
        [*smoke, "--frames-per-game", "0"],
        [*smoke, "--num-envs", "-2"],
        [*smoke, "--num-envs", "many"],
        [*smoke, "--num-envs", "1000000000000"],
        [*smoke, "--hidden-size", "1000000000"],
        [*smoke, "--rollout-length", "10000000000"],
        [*smoke, "--lr", "nan"],
        [*smoke, "--lr", "-1"],
        [*smoke, "--chrono-max", "2"],
        [*smoke, "--core", "transformer"],
        [*smoke, "--learning", "rtrl"],
        [*smoke, "--eval-greedy", "maybe"],
        [*smoke, "--sticky-action-prob", "1.5"],
        [*smoke, "--switch-every", "7"],
        [*smoke, "--core", "moe", "--learning", "rtrl", "--top-k", "99"],
        [*smoke, "--prefetch", "detector"],
        [*smoke, "--core", "moe", "--read-path", "aio"],
        [*smoke, "--core", "moe", "--io-depth", "0"],
        ["train", "--preset", "memory-rtrl", "--games", "tmaze-10", "--encoder", "mlp", "--core", "moe",
         "--prefetch", "detector", "--run-dir", new],
        [*smoke, "--dist-timeout", "nan"],
        [*smoke, "--dist-timeout", "-1"],
        [*smoke, "--no-such-flag", "1"],
        ["train", "--preset", "smoke", "--run-dir", ok],
        [*resume("ok"), "--num-envs", "3"],
        [*resume("ok"), "--hidden-size", "32", "--allow-config-change"],
        [*resume("ok"), "--dist-timeout", "inf"],
        [*resume("ok"), "--optimizer", "adam", "--allow-config-change"],
        resume("bad_latest"),
        resume("no_latest_all_bad"),
        resume("non_utf8"),
        resume("long_latest"),
        ["train", "--preset", "smoke", "--run-dir", "/proc/no/such/run"],
        ["train", "--preset", "smoke", "--run-dir", long_dir],
        ["eval", "--run-dir", empty],
        ["eval", "--run-dir", str(runs["bad_stage"])],
        ["eval", "--run-dir", str(runs["non_utf8"])],
        ["eval", "--run-dir", ok, "--episodes", "0"],
        ["eval", "--run-dir", ok, "--games", "Nope"],
        ["eval", "--run-dir", ok, "--csv", str(base / "x.csv")],
        ["eval", "--run-dir", long_dir],
        ["eval", "--compare", ok, "--csv", "/proc/x.csv"],
        ["eval", "--compare", ok, "--reference-run", ok],
        ["eval", "--compare", ok, empty],
        ["eval"],
        ["diag", "copy", "--delay", "1000000000000"],
        ["diag", "copy", "--hidden-size", "1000000000"],
        ["diag", "copy", "--steps", "0"],
        ["diag", "copy", "--learning", "magic"],
        ["diag", "haystack", "--length", "20", "--symbols", "4"],
        ["diag", "nosuch"],
        ["bench", "nosuch"],
        ["nosuch"],
    ]
    if readonly is not None:
        lines += [["eval", "--run-dir", str(readonly)],
                  ["train", "--preset", "smoke", "--resume", "--run-dir", str(readonly)]]
    return lines


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_bad_command_line_is_one_line_exit_2_and_touches_no_run(tmp_path, smoke_run, tmpfs):
    base = tmp_path / "sweep"
    base.mkdir()
    (base / "empty").mkdir()
    runs = _damaged_runs(base, smoke_run)
    try:
        mount = tmpfs("64m")
        shutil.copytree(smoke_run, mount / "run")
        tmpfs.readonly(mount)
        readonly = mount / "run"
    except pytest.skip.Exception:  # no mounting here: the sweep runs without the read-only lines
        readonly = None
    lines = _command_lines(runs, base, readonly)
    assert len(lines) >= 40
    before = _hashes(base)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda args: run_cli(*args, timeout=120), lines))
    failures = []
    for args, proc in zip(lines, procs):
        stderr = proc.stderr.strip().splitlines()
        if proc.returncode != 2 or len(stderr) != 1 or "Traceback" in proc.stderr:
            failures.append(f"run.py {' '.join(args)[:150]}: exit {proc.returncode}, stderr {proc.stderr[-500:]!r}")
    assert not failures, "\n".join(failures)
    assert _hashes(base) == before
    assert not (base / "new").exists()
