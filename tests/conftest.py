"""Shared fixtures: the CLI as a subprocess, and one finished smoke run reused by several tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in the repository root; returns the finished process (text output)."""
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_and_kill(args: list[str], run_dir: Path, ready: Callable[[int], bool], timeout: float = 120) -> None:
    """Start ``run.py train ARGS`` and SIGKILL it once its latest checkpoint is a periodic one
    (``frames_<N>``) with ``ready(N)`` true; fails if training ends first."""
    from storage.checkpoint import CheckpointManager

    proc = subprocess.Popen([sys.executable, "run.py", "train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = CheckpointManager(run_dir)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            latest = ckpts.latest_path() if (run_dir / "checkpoints").exists() else None
            if latest is not None and latest.name.startswith("frames_") and ready(int(latest.stem.removeprefix("frames_"))):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, worker_id) -> Path:
    """A finished 2-game smoke run (Pong then Breakout, a few thousand frames each), made once per
    session: under pytest-xdist the first worker to need it trains it under a file lock and the
    others wait and read it. Tests copy it before changing anything."""
    if worker_id == "master":  # no xdist workers: this session's own temp directory
        shared = tmp_path_factory.getbasetemp()
    else:  # the directory above the workers' own, this session's and no other's
        shared = tmp_path_factory.getbasetemp().parent
    run_dir = shared / "smoke" / "run"
    with FileLock(str(shared / "smoke.lock")):
        if not (run_dir / "eval" / "forgetting.json").exists():
            shutil.rmtree(run_dir.parent, ignore_errors=True)  # a worker's attempt that failed midway
            run_cli("train", "--preset", "smoke", "--run-dir", str(run_dir), "--no-progress", check=True)
    return run_dir


class Tmpfs:
    """Small tmpfs mounts for tests of full and read-only disks (see the ``tmpfs`` fixture)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounts: list[Path] = []

    def __call__(self, size: str) -> Path:
        """A fresh tmpfs of ``size`` (``mount``'s syntax: ``2m``); skips the test where mounting is not permitted."""
        where = self.base / f"tmpfs{len(self.mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        self.mounts.append(where)
        return where

    def readonly(self, where: Path) -> None:
        """Remount ``where`` (one of these mounts) read-only."""
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

    def unmount_all(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Tmpfs]:
    """``tmpfs("2m")`` mounts a tmpfs of that size under ``tmp_path`` (unmounted after the test);
    ``tmpfs.readonly(path)`` makes it read-only. Needs root: skips the test otherwise."""
    mounts = Tmpfs(tmp_path)
    try:
        yield mounts
    finally:
        mounts.unmount_all()
