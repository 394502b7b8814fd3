"""Checkpoints: round trip, latest pointer, rotation, corruption detection, crash safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.checkpoint import HEADER_SIZE, CheckpointManager
from common.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((8,), float(step))}


def _temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_round_trip_tensors_nested_dicts_and_rng_states(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    gen = np.random.default_rng(3)
    state = {
        "step": 123,
        "model": {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4, dtype=torch.float64)},
        "optim": {
            "state": {0: {"exp_avg": torch.ones(2)}},
            "param_groups": [{"lr": 2.5e-4, "params": [0]}],
        },
        "rng": {
            "python": random.getstate(),
            "numpy_legacy": np.random.get_state(),
            "numpy_gen": gen.bit_generator.state,
            "torch": torch.get_rng_state(),
        },
        "obs_mean": np.arange(5, dtype=np.float32),
        "best_return": np.float64(21.5),
        "names": ("pong", "breakout"),
        "flags": {"done": True, "note": None},
    }
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(state, "step_000000123")
    assert path == tmp_path / "checkpoints" / "step_000000123.pt"
    loaded = mgr.load(path)

    assert loaded["step"] == 123 and loaded["names"] == ("pong", "breakout")
    assert loaded["flags"] == {"done": True, "note": None}
    for k in ("fc.weight", "fc.bias"):
        assert torch.equal(loaded["model"][k], state["model"][k])
        assert loaded["model"][k].dtype == state["model"][k].dtype
    assert torch.equal(loaded["optim"]["state"][0]["exp_avg"], torch.ones(2))
    assert loaded["optim"]["param_groups"] == state["optim"]["param_groups"]
    np.testing.assert_array_equal(loaded["obs_mean"], state["obs_mean"])
    assert loaded["best_return"] == 21.5
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])

    # The restored RNG states reproduce the same streams.
    expected = (random.random(), np.random.rand(), gen.random(), torch.rand(1).item())
    random.setstate(loaded["rng"]["python"])
    np.random.set_state(loaded["rng"]["numpy_legacy"])
    gen2 = np.random.default_rng()
    gen2.bit_generator.state = loaded["rng"]["numpy_gen"]
    torch.set_rng_state(loaded["rng"]["torch"])
    assert (random.random(), np.random.rand(), gen2.random(), torch.rand(1).item()) == expected


def test_latest_follows_newest_save(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    assert mgr.latest_path() is None and mgr.load_latest() is None and mgr.stage_checkpoints() == []
    for step in (10, 20, 5):  # newest save wins, whatever its name sorts like
        p = mgr.save(_state(step), f"step_{step:09d}")
        assert mgr.latest_path() == p
        assert (tmp_path / "checkpoints" / "latest").read_text().strip() == p.name
        assert mgr.load_latest()["step"] == step
    stage = mgr.save(_state(99), "stage_000", keep=True)
    assert mgr.latest_path() == stage and mgr.load_latest()["step"] == 99
    # A fresh manager (a resumed process) sees the same thing.
    assert CheckpointManager(tmp_path).load_latest()["step"] == 99


def test_rotation_keeps_stage_checkpoints_and_newest_periodic(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    ckpt = tmp_path / "checkpoints"
    for i in range(7):
        mgr.save(_state(i), f"step_{i:09d}")
        if i % 3 == 2:
            mgr.save(_state(i), f"stage_{i // 3:03d}", keep=True)
    names = sorted(p.name for p in ckpt.glob("*.pt"))
    assert names == ["stage_000.pt", "stage_001.pt", "step_000000005.pt", "step_000000006.pt"]
    assert [p.name for p in mgr.stage_checkpoints()] == ["stage_000.pt", "stage_001.pt"]
    assert mgr.latest_path().name == "step_000000006.pt"

    # keep_last=0 still never deletes the checkpoint latest points to.
    mgr0 = CheckpointManager(tmp_path, keep_last=0)
    mgr0.save(_state(7), "step_000000007")
    names = sorted(p.name for p in ckpt.glob("*.pt"))
    assert names == ["stage_000.pt", "stage_001.pt", "step_000000007.pt"]
    assert mgr0.load_latest()["step"] == 7


def test_no_leftover_temp_files(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    for i in range(4):
        mgr.save(_state(i), f"step_{i:09d}", keep=(i == 1))
    assert _temp_files(tmp_path / "checkpoints") == []
    # A temp file left by a writer killed mid-save is cleaned up by the next save.
    stale = tmp_path / "checkpoints" / ".step_000000009.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    mgr.save(_state(5), "step_000000005")
    assert _temp_files(tmp_path / "checkpoints") == []


def test_truncated_checkpoint_raises_user_error(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    path = mgr.save({"w": torch.randn(1000)}, "step_000000001")
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, HEADER_SIZE + 1, 10, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match=r"step_000000001\.pt is corrupt \(truncated"):
            mgr.load_latest()


def test_flipped_byte_in_the_middle_raises_user_error(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    path = mgr.save({"w": torch.randn(10_000)}, "step_000000001")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as exc:
        mgr.load(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg and "corrupt" in msg and "CRC32" in msg and "start a new run" in msg


def test_damaged_header_or_foreign_file_raises_user_error(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(_state(1), "step_000000001")
    data = bytearray(path.read_bytes())
    data[12] ^= 0x80  # payload length field
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="header checksum"):
        mgr.load(path)
    plain = tmp_path / "plain.pt"
    torch.save(_state(1), plain)  # a bare torch.save file, not ours
    with pytest.raises(UserError, match="bad magic"):
        mgr.load(plain)
    with pytest.raises(UserError, match="does not exist"):
        mgr.load(tmp_path / "nope.pt")


def test_latest_pointing_at_missing_file_raises_user_error(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(_state(1), "step_000000001")
    path.unlink()
    with pytest.raises(UserError, match=r"points at .*step_000000001\.pt, which does not exist"):
        mgr.latest_path()
    with pytest.raises(UserError):
        mgr.load_latest()
    (tmp_path / "checkpoints" / "latest").write_text("")
    with pytest.raises(UserError, match="latest is corrupt"):
        mgr.load_latest()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CheckpointManager(Path("/nonexistent"), keep_last=-1)
    mgr = CheckpointManager(Path("/nonexistent"))
    for name in ("", "a/b", ".hidden", "latest", "x.tmp"):
        with pytest.raises(ValueError):
            mgr.save({}, name)


# A "zygote" process imports torch once (about 2 s) and then forks one saver per kill, so that
# many kills stay cheap. Each saver writes 16 MB checkpoints in a loop until it is SIGKILLed.
_ZYGOTE = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from storage.checkpoint import CheckpointManager
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # auto-reap killed savers
    print("ready", flush=True)
    for line in sys.stdin:
        run_dir, start = line.split()
        pid = os.fork()
        if pid == 0:
            mgr = CheckpointManager(run_dir, keep_last=2)
            step = int(start)
            while True:
                state = {"step": step, "w": torch.full((4_000_000,), float(step)),
                         "nested": {"b": torch.arange(step % 97)}}
                mgr.save(state, f"step_{step:09d}")
                if step % 4 == 0:
                    mgr.save(state, f"stage_{step:09d}", keep=True)
                step += 1
        print(pid, flush=True)
    """
)


def _check_committed(mgr: CheckpointManager) -> int:
    """Every committed checkpoint loads and verifies; returns the step `latest` names."""
    latest = mgr.load_latest()
    assert latest is not None
    assert torch.equal(latest["w"], torch.full((4_000_000,), float(latest["step"])))
    assert torch.equal(latest["nested"]["b"], torch.arange(latest["step"] % 97))
    for p in mgr.dir.glob("*.pt"):  # the saver is dead: nothing changes under us
        mgr.load(p)
    return latest["step"]


def test_sigkill_during_saves_never_leaves_a_torn_latest(tmp_path: Path) -> None:
    rnd = random.Random(0)
    mgr = CheckpointManager(tmp_path, keep_last=2)
    zygote = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE, str(REPO)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert zygote.stdout.readline().strip() == "ready"
        last_step, start = -1, 0
        for _ in range(6):
            zygote.stdin.write(f"{tmp_path} {start}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            deadline = time.monotonic() + 10
            while not mgr.latest_file.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rnd.uniform(0.0, 0.25))  # land somewhere inside a save, usually
            os.kill(pid, signal.SIGKILL)
            while True:  # wait until it is gone (the zygote reaps it)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.002)
            step = _check_committed(mgr)
            assert step >= last_step
            last_step, start = step, step + 1
    finally:
        zygote.kill()
        zygote.wait()
    # Stale temp files from the kills are swept by the next save; rotation holds again.
    mgr.save({"step": last_step + 1, "w": torch.full((4_000_000,), float(last_step + 1)),
              "nested": {"b": torch.arange((last_step + 1) % 97)}}, f"step_{last_step + 1:09d}")
    assert _temp_files(mgr.dir) == []
    periodic = [p for p in mgr.dir.glob("step_*.pt")]
    assert len(periodic) == 2
    assert _check_committed(mgr) == last_step + 1


def test_resume_without_latest_finds_the_newest_valid_checkpoint(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save(_state(0), "stage_000", keep=True)
    mgr.save(_state(1), "frames_1")
    newest = mgr.save(_state(2), "frames_2")
    mgr.latest_file.unlink()
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF  # the newest one fails its CRC: the one before it is the resume point
    newest.write_bytes(bytes(data))
    point = mgr.load_resume()
    assert point.path.name == "frames_1.pt" and point.state["step"] == 1
    assert "latest" in point.warning and "frames_1.pt" in point.warning and "frames_2.pt" in point.warning


def test_resume_without_latest_and_without_a_valid_checkpoint_is_refused(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    assert mgr.load_resume() is None  # nothing saved: a new run
    path = mgr.save(_state(0), "stage_000", keep=True)
    mgr.latest_file.unlink()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="no valid checkpoint"):
        mgr.load_resume()


def test_resume_follows_latest_without_a_warning(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(0), "stage_000", keep=True)
    mgr.save(_state(1), "frames_1")
    point = mgr.load_resume()
    assert point.path.name == "frames_1.pt" and point.warning is None
