"""Chaos (issue 17): one MoE training run SIGKILLed 30 times in a row at random moments (in updates,
evaluations, checkpoint writes and expert-store commits), resumed with ``--resume`` after every kill.

At the end: the run is complete; every checkpoint loads (CRC, then restored into a model and learner);
the expert store opens, verifies and holds the latest checkpoint's snapshot, equal to its replica;
the evaluation history (checkpoint, ``eval/curves.csv``, ``eval/forgetting.json``, TensorBoard) has
each evaluation exactly once; and the TensorBoard frame axis (``charts/frames``, ``charts/SPS``,
logged at every update with ``--log-every 0``) is every update's frame count once: no gap, no repeat.

Kills: each attempt gets a mode from a seeded RNG. ``random`` kills at a random delay after the
process starts (start-up, restore, training, evaluations, checkpoints: wherever it is); the aimed
modes wait a random delay and then for the next evaluation (killed a random moment into it), the
next checkpoint temp file, or the next store commit (a manifest temp file, or the main thread in
``fsync`` of a slab). The process group is SIGSTOPped first, the phase read off the frozen process
(temp files, the main thread's system call, its stdout), then SIGKILLed.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agent.model import ActorCritic
from envs.atari import NUM_ACTIONS
from eval.curves import read_curves
from storage.checkpoint import CheckpointManager
from storage.expert_store import ExpertStore
from tests.conftest import ROOT
from train import tags
from train.checkpointing import restore
from train.config import RunConfig
from train.learner import Learner
from train.schedule import evaluation_due

KILLS = 30
SEED = 17
GAMES = ["Pong", "Breakout"]
FRAMES_PER_GAME = 5_120
FPU = 320  # frames per update: 4 envs x 20 steps x frame skip 4 (the smoke preset)
CHECKPOINT_EVERY = 640
EVAL_EVERY = 1_920
ARGS = ["--preset", "smoke", "--core", "moe", "--learning", "rtrl", "--frames-per-game", str(FRAMES_PER_GAME),
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--eval-every", str(EVAL_EVERY), "--log-every", "0",
        "--no-progress"]
MODES = ["random"] * 12 + ["evaluation"] * 6 + ["checkpoint"] * 6 + ["commit"] * 6
SYS_FSYNC, SYS_FDATASYNC = 74, 75  # x86_64
TMP = re.compile(r"^\..+\.tmp$")


def _expected_evaluations() -> list[tuple[int, str, int]]:
    """(frames, kind, stage) of every evaluation the run takes, worked out from the schedule."""
    out = [(0, "before", 0)]
    total = 0
    for stage in range(1, len(GAMES) + 1):
        frames = 0
        while True:
            frames += FPU
            total += FPU
            if frames >= FRAMES_PER_GAME:
                break
            if evaluation_due(total, FPU, EVAL_EVERY, FRAMES_PER_GAME - frames):
                out.append((total, "periodic", stage))
        out.append((total, "stage", stage))
    return out


class Attempt:
    """One ``run.py train`` process in its own session, its stdout read by a thread."""

    def __init__(self, run_dir: Path, resume: bool):
        args = [sys.executable, "-u", "run.py", "train", *ARGS, "--run-dir", str(run_dir)]
        self.proc = subprocess.Popen(args + (["--resume"] if resume else []), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.start = time.monotonic()
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def evaluating(self) -> bool:
        """Whether the last evaluation it announced has not printed its scores yet."""
        ev = [i for i, line in enumerate(self.lines) if "evaluating" in line]
        return bool(ev) and not any(line.startswith("  ") and "hns" in line for line in self.lines[ev[-1]:])

    def evaluations_started(self) -> int:
        return sum("evaluating" in line for line in self.lines)

    def resumed_at(self) -> int | None:
        for line in self.lines:
            m = re.search(r"resuming from .* at frame ([\d,]+)", line)
            if m:
                return int(m.group(1).replace(",", ""))
        return None

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def _tmp_files(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir() if TMP.match(p.name)]
    except FileNotFoundError:
        return []


def _in_slab_fsync(pid: int, experts: Path) -> bool:
    """Whether the process's main thread is in fsync/fdatasync of a file under ``experts``."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if not fields or not fields[0].isdigit() or int(fields[0]) not in (SYS_FSYNC, SYS_FDATASYNC):
            return False
        target = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
    except OSError:
        return False
    return target.startswith(str(experts))


def _phase(att: Attempt, run_dir: Path, before_ckpt_tmps: set[str]) -> str:
    """Where the (stopped) attempt is: read off its temp files, its main thread and its stdout."""
    pid = att.proc.pid
    if set(_tmp_files(run_dir / "checkpoints")) - before_ckpt_tmps:
        return "checkpoint"
    if any(n.startswith(".manifest") for n in _tmp_files(run_dir / "experts")) or _in_slab_fsync(pid, run_dir / "experts"):
        return "store commit"
    if att.evaluating():
        return "evaluation"
    tb = run_dir / "tb"
    if not (tb.is_dir() and any(p.name.split(".")[-2] == str(pid) for p in tb.iterdir())):
        return "start-up/restore"  # before this attempt's TensorBoard writer exists
    return "update"


def _wait(cond, att: Attempt, timeout: float, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and att.alive():
        if cond():
            return True
        time.sleep(poll)
    return False


class _Checkpoints:
    """Counts the checkpoint writes (``.<name>.pt.*.tmp`` files) an attempt starts."""

    def __init__(self, ckpt_dir: Path):
        self.dir = ckpt_dir
        self.stale = set(_tmp_files(ckpt_dir))  # left by earlier kills (swept at the next save)
        self.seen: set[str] = set()

    def started(self) -> int:
        self.seen |= {n for n in _tmp_files(self.dir) if ".pt." in n} - self.stale
        return len(self.seen)


def _kill(att: Attempt, mode: str, rng: random.Random, run_dir: Path, cap: int) -> str:
    """Wait for this attempt's moment (``mode``), freeze it, read where it is, SIGKILL it; -> the phase.

    Whatever the mode, the attempt is stopped at the latest when its ``cap``-th checkpoint write starts,
    so no attempt advances the run by more than ``cap - 1`` checkpoints, on a machine of any speed."""
    experts = run_dir / "experts"
    ckpts = _Checkpoints(run_dir / "checkpoints")
    capped = lambda: ckpts.started() >= cap  # noqa: E731

    def wait(cond, timeout: float, poll: float = 0.002) -> bool:
        return _wait(lambda: capped() or cond(), att, timeout, poll)

    never = lambda: False  # noqa: E731
    if mode == "random":
        wait(never, rng.uniform(1.0, 10.0))
    else:
        wait(never, rng.uniform(0.0, 6.0))
        if mode == "evaluation":
            n = att.evaluations_started()
            if wait(lambda: att.evaluations_started() > n, 60):
                wait(never, rng.uniform(0.0, 1.5))
        elif mode == "checkpoint":
            n = ckpts.started()
            wait(lambda: ckpts.started() > n, 60)
        else:
            wait(lambda: any(n.startswith(".manifest") for n in _tmp_files(experts))
                 or _in_slab_fsync(att.proc.pid, experts), 60, poll=0.001)
    assert att.alive(), f"the run ended before kill {mode!r}:\n" + "\n".join(att.lines[-20:])
    os.killpg(att.proc.pid, signal.SIGSTOP)
    time.sleep(0.02)  # let the stop land on every thread before reading where it is
    phase = _phase(att, run_dir, ckpts.stale)
    os.killpg(att.proc.pid, signal.SIGKILL)
    att.finish(timeout=30)
    return phase


@pytest.mark.slow
def test_thirty_sigkills_in_a_row_then_the_run_is_whole(tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(SEED)
    modes = MODES[:]
    rng.shuffle(modes)
    t0 = time.monotonic()
    landed = collections.Counter()
    log = []
    total = len(GAMES) * FRAMES_PER_GAME
    ckpts = CheckpointManager(run_dir)
    for i, mode in enumerate(modes):
        saved = ckpts.load_latest()["progress"]["total_frames"] if ckpts.latest_file.exists() else 0
        # An attempt may advance the run by two checkpoints (stage_000 and frames_0 at the start),
        # none once the run is near its end: the kills land inside the run however fast the machine is.
        cap = 3 if saved < total - 3 * CHECKPOINT_EVERY else 1
        att = Attempt(run_dir, resume=i > 0)
        phase = _kill(att, mode, rng, run_dir, cap)
        landed[phase] += 1
        log.append(f"kill {i + 1:2d} ({mode:10s}) at {time.monotonic() - att.start:5.2f} s: {phase:16s} "
                   f"(resumed at {att.resumed_at()})")
        print(log[-1], flush=True)
    last = Attempt(run_dir, resume=True)
    rc = last.finish(timeout=600)
    out = "\n".join(last.lines)
    assert rc == 0, out
    print(f"kills landed: {dict(landed)}; {time.monotonic() - t0:.0f} s in all (the last attempt resumed at "
          f"{last.resumed_at()})", flush=True)
    assert f"done: {total:,} frames" in out

    # Every checkpoint verifies, and restores into a model and learner of its config.
    assert _tmp_files(run_dir / "checkpoints") == [] and _tmp_files(run_dir / "eval") == []
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert [n for n in names if n.startswith("stage_")] == ["stage_000.pt", "stage_001.pt", "stage_002.pt"]
    for name in names:
        state = ckpts.load(run_dir / "checkpoints" / name)
        cfg = RunConfig.from_dict(state["config"])
        model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set)
        restore(state, model, Learner(model, cfg, torch.device("cpu")))
    latest = ckpts.load_latest()
    progress = latest["progress"]
    assert (progress["stage"], progress["total_frames"]) == (len(GAMES), total)

    # The store opens (every expert's crc32 verified) at the latest checkpoint's snapshot, equal to its replica.
    cfg = RunConfig.from_dict(latest["config"])
    assert latest["expert_snapshot"] == ckpts.latest_path().stem
    store = ExpertStore.open(run_dir / "experts", cfg.store.hbm_experts, cfg.store.dram_experts,
                             snapshot=latest["expert_snapshot"])
    try:
        assert store.recovered is None
        for e in range(cfg.model.num_experts):
            with store.use([e]) as (rec,):
                assert torch.equal(rec["F"], latest["model"]["core.expert_F"][e])
                assert torch.equal(rec["Z"], latest["model"]["core.expert_Z"][e])
    finally:
        store.close()

    # Each evaluation exactly once: in the checkpoint, curves.csv, forgetting.json and TensorBoard.
    expected = _expected_evaluations()
    history = progress["evaluations"]
    assert [(p["frames"], p["kind"], p["stage"]) for p in history] == expected
    on_disk = read_curves(run_dir / "eval", GAMES)
    assert [(p["frames"], p["kind"], p["stage"]) for p in on_disk] == expected
    assert [p["returns"] for p in on_disk] == [p["returns"] for p in history]
    doc = json.loads((run_dir / "eval" / "forgetting.json").read_text())
    assert doc["returns"] == [p["returns"] for p in history if p["kind"] != "periodic"]
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for game in GAMES:
        assert [e.step for e in acc.Scalars(tags.eval_return(game))] == [f for f, _, _ in expected], game
        assert [e.value for e in acc.Scalars(tags.eval_return(game))] == \
            [pytest.approx(p["returns"][GAMES.index(game)]) for p in history], game
    stage_points = [f for f, kind, _ in expected if kind != "periodic"]
    for tag in (tags.EVAL_MATRIX_IMAGE, tags.EVAL_CURVES_IMAGE):
        assert [e.step for e in acc.Images(tag)] == stage_points, tag
    assert [e.step for e in acc.Images(tags.EXPERT_USAGE_IMAGE)] == stage_points[1:]

    # The frame axis: every update's frame count exactly once, in order (logged at every update).
    updates = list(range(FPU, total + 1, FPU))
    for tag in (tags.FRAMES, tags.SPS):
        steps = [e.step for e in acc.Scalars(tag)]
        repeats = sorted(s for s, n in collections.Counter(steps).items() if n > 1)
        missing = sorted(set(updates) - set(steps))
        assert steps == updates, f"{tag}: repeated {repeats[:10]}, missing {missing[:10]} ({len(steps)} points)"
    assert [e.value for e in acc.Scalars(tags.FRAMES)] == [float(s) for s in updates]
    print("\n".join(log))
