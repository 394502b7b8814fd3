"""Data-parallel training over torch.distributed (gloo, CPU): real torchrun launches of 2 ranks on a
smoke-sized MoE run, compared with a 1-rank run that steps both ranks' streams in one batch; a
SIGKILLed rank, then ``--resume``; and the launch errors (mismatched configs, indivisible env
count, a changed world size), each said once by rank 0 with every rank exiting 2."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from storage.checkpoint import CheckpointManager
from storage.expert_store import ExpertStore
from tests.conftest import ROOT, run_cli
from train.distributed import replica_checksum

E = 12
# Learned routing with its balance loss: short rollouts route each rank's streams to a part of the
# experts, so the agreed union matters, and the balance loss's routing shares must be the global batch's.
RUN = ["--preset", "smoke", "--core", "moe", "--learning", "rtrl", "--num-experts", str(E), "--top-k", "2",
       "--routing", "learned", "--rollout-length", "5", "--hbm-experts", "4", "--dram-experts", "6",
       "--prefetch", "detector", "--eval-every", "0", "--no-progress", "--log-every", "0"]
SHARED = ("F", "Z", "sq_F", "sq_Z")  # the parts of an expert record every rank holds identically


def torchrun(*args: str, ranks: int = 2) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node RANKS run.py train ARGS`` (gloo on this CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "run.py", "train", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-rank run (2 streams each) and a 1-rank run of the same 4 streams, 16 updates each."""
    base = tmp_path_factory.mktemp("dist")
    args = [*RUN, "--num-envs", "4", "--frames-per-game", "640"]
    proc = torchrun(*args, "--run-dir", str(base / "two"))
    run_cli("train", *args, "--run-dir", str(base / "one"), check=True)
    code, out, err = finish(proc)
    assert code == 0, out + err
    return base / "two", base / "one"


def test_every_rank_holds_bit_identical_parameters_and_experts(pair):
    two, _ = pair
    state = CheckpointManager(two).load_latest()
    assert state["world_size"] == 2
    checksums = state["rank_checksums"]  # dense parameters and buffers, gathered from every rank
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    stores = [ExpertStore.open(two / "experts" / f"rank{r}", E, E, snapshot=state["expert_snapshot"]) for r in (0, 1)]
    for e in range(E):
        with stores[0].use([e]) as (r0,), stores[1].use([e]) as (r1,):
            for key in SHARED:
                assert torch.equal(r0[key], r1[key]), (e, key)
            assert torch.equal(r0["F"], state["model"]["core.expert_F"][e])
            # Each rank's sensitivities are its own streams' scratch state: not kept across an open.
            assert stores[0].spec["S_F"].scratch and not r0["S_F"].any() and not r1["S_F"].any()
    for store in stores:
        store.close()


def test_two_ranks_equal_one_rank_with_both_ranks_streams(pair):
    two, one = pair
    a, b = (CheckpointManager(d).load_latest()["model"] for d in pair)
    initial = CheckpointManager(one).load(one / "checkpoints" / "stage_000.pt")["model"]
    for key, ref in b.items():
        if not ref.dtype.is_floating_point:
            continue
        scale = ref.double().abs().max().clamp(min=1e-12)
        assert (a[key].double() - ref.double()).abs().max() <= 1e-6 * scale, key
    # Not vacuous: training moved the parameters by far more than the tolerance.
    moved = (b["policy.weight"] - initial["policy.weight"]).abs().max() / b["policy.weight"].abs().max()
    assert moved > 1e-4


def test_union_of_experts_is_agreed_and_figures_are_per_rank_and_summed(pair):
    ea = EventAccumulator(str(pair[0] / "tb"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    for tag in ("charts/SPS", "rank0/charts/SPS", "rank1/charts/SPS", "cache/hit_rate/hbm", "rank1/cache/hit_rate/hbm",
                "rank0/cache/bytes/dram_to_hbm", "dist/allreduce_bytes"):
        assert tag in scalars, tag
        assert all(math.isfinite(e.value) for e in ea.Scalars(tag)), tag
    total = [e.value for e in ea.Scalars("charts/SPS")]
    per_rank = [x.value + y.value for x, y in zip(ea.Scalars("rank0/charts/SPS"), ea.Scalars("rank1/charts/SPS"))]
    assert total == pytest.approx(per_rank)
    assert min(e.value for e in ea.Scalars("dist/allreduce_bytes")) > 0
    # Rank 0 materialised experts only the other rank had routed to on some update.
    active = [e.value for e in ea.Scalars("experts/active")]
    agreed = [e.value for e in ea.Scalars("experts/agreed")]
    assert all(g >= a for a, g in zip(active, agreed)) and any(g > a for a, g in zip(active, agreed))
    # Only rank 0 writes TensorBoard and checkpoints.
    assert len(list((pair[0] / "tb").glob("events.*"))) == 1


def test_killed_rank_ends_the_job_then_resume_restarts_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    args = [*RUN, "--num-envs", "4", "--frames-per-game", "3200", "--checkpoint-every", "320", "--run-dir", str(run_dir),
            "--dist-timeout", "60"]
    proc = torchrun(*args)
    ckpts = CheckpointManager(run_dir)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        latest = ckpts.latest_path() if (run_dir / "checkpoints").exists() else None
        if latest is not None and latest.name.startswith("frames_") and int(latest.stem[7:]) >= 640:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before a rank could be killed"
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    t0 = time.time()
    code, out, err = finish(proc, timeout=120)
    assert code != 0 and time.time() - t0 < 90  # no hang
    assert "rank 0" in err and ("lost contact" in err or "stopped by signal" in err), err[-2000:]

    proc = torchrun(*args, "--resume")
    code, out, err = finish(proc)
    assert code == 0, out + err
    assert "resuming from" in out
    state = ckpts.load_latest()
    assert state["progress"]["total_frames"] == 2 * 3200
    assert state["rank_checksums"][0] == state["rank_checksums"][1]


def _rank_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=``rank``."""
    for child in Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {torchrun_pid}")


def _launch_by_hand(rank_args: list[list[str]]) -> list[tuple[int, str]]:
    """Start one ``run.py train`` per entry as ranks of one world (the variables torchrun would set);
    -> [(exit code, stderr)] in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, args in enumerate(rank_args):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(rank_args)), "LOCAL_WORLD_SIZE": str(len(rank_args))}
        procs.append(subprocess.Popen([sys.executable, "run.py", "train", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=120), p.communicate()[1]) for p in procs]


@pytest.mark.parametrize("extra, message", [
    ([["--lr", "0.001"], []], "the ranks were given different configs"),
    ([["--num-envs", "3"], ["--num-envs", "3"]], "--num-envs (3) must be a multiple of the world size (2)"),
])
def test_bad_world_is_one_line_on_rank_0_and_every_rank_exits(tmp_path, extra, message):
    results = _launch_by_hand([[*RUN, "--run-dir", str(tmp_path / "r"), *x] for x in extra])
    assert [code for code, _ in results] == [2, 2]
    lines = results[0][1].strip().splitlines()
    assert len(lines) == 1 and message in lines[0], results[0][1]
    assert results[1][1].strip() == ""
    assert not (tmp_path / "r").exists()


def test_resuming_with_another_world_size_is_refused(pair):
    proc = run_cli("train", "--run-dir", str(pair[0]), "--resume", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: this run was trained by 2 rank(s); resume it with the same world size, not 1"]


def test_balance_loss_of_shards_sums_to_the_whole_batch():
    """The learned router's balance loss with its counts summed over two shards (as the ranks do)
    adds up to the loss of the whole batch, in value and in gradient; without the sum it does not."""
    from agent.router import Router

    torch.manual_seed(0)
    router = Router(5, E, 2, "learned", schedule=[3, 7], num_games=10).double()
    x, games = torch.randn(40, 5, dtype=torch.float64), torch.tensor([3, 7] * 20)
    idx, _, probs = router(x, games)
    whole = router.balance_loss(idx, probs, games)
    (g_whole,) = torch.autograd.grad(whole, router.linear.weight, retain_graph=True)
    halves = [slice(0, 16), slice(16, 40)]

    def shard_losses(summed: bool) -> torch.Tensor:
        losses = []
        for part in halves:  # each shard's counts are summed with the other's, as all_reduce_sum would
            other = halves[1] if part == halves[0] else halves[0]

            def add_other(tensors, other=other):
                o_idx, o_games = idx[other], games[other]
                o_counts = torch.zeros_like(tensors[0])
                slots = router.game_slot[o_games]
                o_counts.index_put_((slots.unsqueeze(-1).expand_as(o_idx).reshape(-1), o_idx.reshape(-1)),
                                    torch.ones(o_idx.numel(), dtype=o_counts.dtype), accumulate=True)
                tensors[0] += o_counts
                tensors[1] += torch.bincount(slots, minlength=tensors[1].numel()).to(tensors[1].dtype)

            losses.append(router.balance_loss(idx[part], probs[part], games[part], add_other if summed else None))
        return sum(losses)

    total = shard_losses(True)
    (g_total,) = torch.autograd.grad(total, router.linear.weight, retain_graph=True)
    assert torch.allclose(total, whole, rtol=1e-12) and torch.allclose(g_total, g_whole, rtol=1e-10)
    assert not torch.allclose(shard_losses(False), whole, rtol=1e-3)  # per-shard shares: another loss


def test_replica_checksum_sees_one_changed_element():
    tensors = {"a": torch.arange(6.0), "b": torch.ones(2, 3)}
    before = replica_checksum(tensors)
    tensors["b"][1, 2] = 1.0 + 2 ** -20
    assert replica_checksum(tensors) != before
    assert replica_checksum({"a": torch.arange(6.0), "b": torch.ones(2, 3)}) == before
