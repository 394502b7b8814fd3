"""The tiered expert store: byte-exact round trips under churn, counters, pins, snapshots,
corruption, a full disk, and SIGKILLs in the middle of write-backs."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import storage.slab
from storage.expert_store import CorruptExpertError, ExpertStore
from storage.manifest import Manifest
from storage.slab import TensorSpec
from common.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# Two kinds of different dtypes and sizes (one not a multiple of 4 KiB, one over a page).
SPEC = {"w": TensorSpec((3, 700), torch.float32), "m": TensorSpec((5,), torch.float64)}


def _random_record(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s.shape, dtype=s.dtype, generator=gen) for k, s in SPEC.items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Byte-exact equality of two records (NaN-safe: compares the raw bytes)."""
    return all(torch.equal(a[k].cpu().view(torch.uint8), b[k].cpu().view(torch.uint8)) for k in SPEC)


def _make(tmp_path: Path, n: int = 12, hbm: int = 3, dram: int = 6, seed: int = 0, **kw) -> tuple[ExpertStore, dict]:
    gen = torch.Generator().manual_seed(seed)
    truth = {e: _random_record(gen) for e in range(n)}
    store = ExpertStore.create(tmp_path / "experts", SPEC, n, hbm, dram, init=lambda e: truth[e], **kw)
    return store, truth


def test_round_trip_byte_exact_through_every_tier_under_churn_and_concurrent_prefetch(tmp_path: Path) -> None:
    n, hbm, dram = 40, 6, 12
    store, truth = _make(tmp_path, n, hbm, dram)
    errors: list[BaseException] = []
    stop = threading.Event()
    ops = {"reads": 0, "writes": 0, "accesses": 0}
    lock = threading.Lock()

    def worker(rank: int) -> None:
        # Each worker owns the experts e % 2 == rank: it alone writes them (the store does not
        # arbitrate between two writers of one expert; the learner is its only writer).
        rng = random.Random(rank)
        gen = torch.Generator().manual_seed(100 + rank)
        mine = [e for e in range(n) if e % 2 == rank]
        try:
            for i in range(1500):
                ids = rng.sample(mine, rng.choice([1, 2]))
                records = store.get(ids)
                for e, rec in zip(ids, records):
                    assert _equal(rec, truth[e]), f"read of expert {e} differs at op {i}"
                write = rng.random() < 0.5
                if write:
                    for e, rec in zip(ids, records):
                        new = _random_record(gen)
                        for k in SPEC:
                            rec[k].copy_(new[k])
                        truth[e] = new
                store.release(ids, dirty=write)
                with lock:
                    ops["reads" if not write else "writes"] += 1
                    ops["accesses"] += len(ids)
                if rank == 0 and i % 500 == 499:
                    store.flush()
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    def prefetcher(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            store.prefetch(rng.sample(range(n), 3))
            time.sleep(0.0005)

    workers = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    prefetchers = [threading.Thread(target=prefetcher, args=(10 + s,)) for s in range(3)]
    for t in workers + prefetchers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in prefetchers:
        t.join()
    assert not errors, errors[0]
    store.wait_idle()
    stats = store.stats()
    store.flush()
    store.close()

    assert ops["reads"] + ops["writes"] == 3000 and ops["writes"] > 1000
    for link in ("nvme_to_dram", "dram_to_hbm", "hbm_to_dram", "dram_to_nvme"):
        assert stats[f"bytes_{link}"] > 0, link
    assert stats["evictions_hbm"] > 100 and stats["evictions_dram"] > 100
    assert stats["prefetch_issued"] > 100 and stats["prefetch_used"] > 0
    assert stats["hbm_hits"] + stats["hbm_misses"] == ops["accesses"]
    assert 0 < stats["hit_rate_hbm"] < 1

    reopened = ExpertStore.open(tmp_path / "experts", hbm, dram)  # verifies every crc32
    for e in range(n):
        with reopened.use([e]) as (rec,):
            assert _equal(rec, truth[e]), f"expert {e} differs after reopen"
    reopened.close()


def test_counters_follow_demand_accesses_exactly(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=6, hbm=2, dram=3)
    with store.use([0]):
        pass  # miss in hbm and dram (from NVMe)
    with store.use([0]):
        pass  # hit
    store.prefetch([1])
    store.wait_idle()
    with store.use([1]) as (rec,):
        assert _equal(rec, truth[1])  # a hit, and a used prefetch
    store.prefetch([2])  # evicts 0 (LRU), brings 2
    store.wait_idle()
    with store.use([3]):
        pass  # evicts 1 from hbm; 2 is unused -> [1, 2] LRU: evicts 1 first
    with store.use([4]):
        pass  # evicts 2 from hbm: a wasted prefetch
    store.wait_idle()
    s = store.stats()
    assert (s["hbm_hits"], s["hbm_misses"]) == (2, 3)
    assert (s["dram_hits"], s["dram_misses"]) == (0, 3)
    assert (s["prefetch_issued"], s["prefetch_used"], s["prefetch_wasted"], s["prefetch_late"]) == (2, 1, 1, 0)
    assert s["hit_rate_hbm"] == pytest.approx(2 / 5)
    assert s["prefetch_precision"] == pytest.approx(1 / 2)
    assert s["prefetch_coverage"] == pytest.approx(1 / 4)
    record_bytes = 3 * 700 * 4 + 5 * 8
    assert s["bytes_nvme_to_dram"] == 5 * record_bytes  # 0, 1, 2, 3, 4 each read once
    assert s["bytes_hbm_to_dram"] == 0 and s["bytes_dram_to_nvme"] == 0  # nothing was dirty
    with store.use([2]):
        pass  # 2 is still in dram: an hbm miss that is a dram hit
    assert store.stats()["dram_hits"] == 1
    store.close()


def test_a_demand_of_several_misses_loads_them_concurrently_and_counts_each_once(
        tmp_path: Path, monkeypatch) -> None:
    store, truth = _make(tmp_path, n=8, hbm=4, dram=8, io_threads=2)
    with store.use([5]):
        pass  # 5 resident: a hit among the misses
    real = ExpertStore._read_nvme
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def slow(self, e, d):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.1)  # long enough that loads in flight together overlap
        try:
            real(self, e, d)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(ExpertStore, "_read_nvme", slow)
    with store.use([0, 5, 1, 2]) as records:
        for e, rec in zip([0, 5, 1, 2], records):
            assert _equal(rec, truth[e])
    assert state["most"] == 3  # 0 in the demanding thread, 1 and 2 on the two I/O threads
    s = store.stats()
    assert (s["hbm_hits"], s["hbm_misses"]) == (1, 4)  # 5 hits here; its first use, 0, 1, 2 missed
    assert (s["dram_hits"], s["dram_misses"]) == (0, 4)
    assert s["prefetch_issued"] == 0 and s["bytes_nvme_to_dram"] == 4 * (3 * 700 * 4 + 5 * 8)
    store.close()


def test_pinned_experts_are_never_evicted_and_dirty_ones_never_dropped(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=10, hbm=3, dram=4)
    store.pin([7])
    store.wait_idle()
    with store.use([5], dirty=True) as (rec,):
        rec["w"].fill_(5.0)
        truth[5] = {k: v.clone() for k, v in rec.items()}
    for e in [0, 1, 2, 3, 4, 6, 8, 9, 0, 1, 2]:
        with store.use([e]):
            pass
        assert store.tier_of(7) == "hbm"
    assert store.tier_of(5) == "nvme"  # evicted through both tiers, written back on the way
    with store.use([5]) as (rec,):
        assert _equal(rec, truth[5])
    store.unpin([7])
    for e in [0, 1, 2]:
        with store.use([e]):
            pass
    assert store.tier_of(7) != "hbm"
    with pytest.raises(UserError, match="cannot pin"):
        store.pin([0, 1, 2])
    store.close()


def test_late_prefetch_is_a_miss_that_stalls_and_counts_as_used(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=4, hbm=2, dram=2)
    pieces = storage.slab.SlabFile.read_pieces

    def delayed(self, slot, out):  # a slow disk, so the demand arrives while the prefetch is in flight
        return [lambda p=p: (time.sleep(0.05), p()) for p in pieces(self, slot, out)]

    storage.slab.SlabFile.read_pieces = delayed
    try:
        store.prefetch([1])
        with store.use([1]):
            pass
    finally:
        storage.slab.SlabFile.read_pieces = pieces
    s = store.stats()
    assert (s["hbm_misses"], s["prefetch_late"], s["prefetch_used"]) == (1, 1, 1)
    assert s["stall_s"] > 0.02
    assert s["prefetch_timeliness"] == 0.0
    store.close()


def test_capacities_are_validated(tmp_path: Path) -> None:
    for hbm, dram, n in [(0, 2, 4), (3, 2, 4), (2, 5, 4)]:
        with pytest.raises(UserError, match="0 < hbm <= dram <= experts"):
            ExpertStore.create(tmp_path / f"s{hbm}{dram}{n}", SPEC, n, hbm, dram)
    store, _ = _make(tmp_path, n=6, hbm=2, dram=3)
    with pytest.raises(UserError, match="3 experts requested at once"):
        store.get([0, 1, 2])
    store.close()
    with pytest.raises(UserError, match="already holds an expert store"):
        ExpertStore.create(tmp_path / "experts", SPEC, 6, 2, 3)
    with pytest.raises(UserError, match="no expert store"):
        ExpertStore.open(tmp_path / "nothing", 2, 3)


def test_snapshot_rolls_back_after_later_write_backs(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=6, hbm=2, dram=3)

    def write_all(value: float) -> None:
        for e in range(6):
            with store.use([e], dirty=True) as (rec,):
                rec["w"].fill_(value + e)

    write_all(1.0)
    store.checkpoint("frames_100")
    write_all(2.0)
    store.flush()
    write_all(3.0)  # evictions write these to free slots, uncommitted
    assert store.snapshots == ["frames_100"]
    store.close()
    for tag, value in [(None, 2.0), ("frames_100", 1.0)]:
        s = ExpertStore.open(tmp_path / "experts", 2, 3, snapshot=tag)
        for e in range(6):
            with s.use([e]) as (rec,):
                assert torch.all(rec["w"] == value + e)
                assert torch.equal(rec["m"], truth[e]["m"])
        s.close()


def test_snapshots_beyond_keep_are_released(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=3, hbm=1, dram=2, keep_snapshots=2)
    for i in range(4):
        with store.use([0], dirty=True) as (rec,):
            rec["w"].fill_(i)
        store.checkpoint(f"s{i}")
    assert store.snapshots == ["s2", "s3"]
    store.close()
    with pytest.raises(UserError, match="no snapshot 's0'"):
        ExpertStore.open(tmp_path / "experts", 1, 2, snapshot="s0")


def _flip_byte_of_committed_slot(directory: Path, expert: int, kind: str) -> None:
    m = Manifest.load(directory)
    offset = m.global_slot(expert, m.experts[expert].slot) * SPEC[kind].slot_bytes + 17
    with open(directory / f"{kind}.slab", "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_one_flipped_byte_names_the_expert_and_the_others_stay_readable(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=8, hbm=2, dram=4)
    store.close()
    _flip_byte_of_committed_slot(tmp_path / "experts", 5, "w")
    with pytest.raises(CorruptExpertError, match=r"expert 5 fails the crc32c check \(kind 'w'") as info:
        ExpertStore.open(tmp_path / "experts", 2, 4)
    assert info.value.experts == [5]
    store = ExpertStore.open(tmp_path / "experts", 2, 4, verify=False)
    for e in range(8):
        if e != 5:
            with store.use([e]) as (rec,):
                assert _equal(rec, truth[e])
    with pytest.raises(CorruptExpertError, match="expert 5"):
        store.get([5])
    store.close()


def test_corrupt_or_missing_manifest_and_slab_are_clear_errors(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=4, hbm=1, dram=2)
    store.close()
    directory = tmp_path / "experts"
    (directory / "m.slab").rename(directory / "m.slab.bak")
    with pytest.raises(UserError, match="m.slab is missing"):
        ExpertStore.open(directory, 1, 2)
    (directory / "m.slab.bak").rename(directory / "m.slab")
    text = (directory / "manifest.json").read_text()
    assert '"seq": 0,' in text
    (directory / "manifest.json").write_text(text.replace('"seq": 0,', '"seq": 7,'))
    with pytest.raises(UserError, match="fails its checksum"):
        ExpertStore.open(directory, 1, 2)


def _enospc_after(calls: int):
    real = os.pwrite
    count = {"n": 0}

    def pwrite(fd, data, offset):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    return pwrite


@pytest.mark.parametrize("where", ["flush", "eviction"])
def test_disk_full_during_write_back_is_a_clear_error_and_keeps_the_committed_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    store, truth = _make(tmp_path, n=6, hbm=1, dram=1)
    for e in range(6):  # commit version 1 of every expert
        with store.use([e], dirty=True) as (rec,):
            rec["m"].fill_(1.0 + e)
            truth[e] = {k: v.clone() for k, v in rec.items()}
    store.flush()
    monkeypatch.setattr(storage.slab.os, "pwrite", _enospc_after(1))
    with pytest.raises(UserError, match="No space left on device; the last committed state is kept"):
        with store.use([0], dirty=True) as (rec,):
            rec["m"].fill_(-1.0)
        with store.use([1], dirty=True) as (rec,):  # evicts 0: write-back of 2 kinds, the 2nd fails
            rec["m"].fill_(-1.0)
        if where == "flush":
            store.flush()
        with store.use([2]):
            pass
    with pytest.raises(UserError, match="No space left"):  # the store stays failed, not half-working
        store.get([3])
    monkeypatch.undo()
    store.close()
    reopened = ExpertStore.open(tmp_path / "experts", 1, 1)
    for e in range(6):
        with reopened.use([e]) as (rec,):
            assert _equal(rec, truth[e])
    reopened.close()


_WRITER = textwrap.dedent("""
    import json, random, sys, torch
    from storage.expert_store import ExpertStore
    from storage.slab import TensorSpec
    spec = {"a": TensorSpec((2048,), torch.float32), "b": TensorSpec((3, 1500), torch.float32)}
    directory, seed = sys.argv[1], int(sys.argv[2])
    try:
        store = ExpertStore.open(directory, 2, 3)
    except Exception:
        store = ExpertStore.create(directory, spec, 8, 2, 3)
    value = {}
    for e in range(8):  # every element of every kind of an expert holds one value: its version
        with store.use([e]) as (rec,):
            value[e] = int(rec["a"][0].item())
    rng = random.Random(seed)
    print("ready", flush=True)
    while True:
        for _ in range(rng.randint(1, 6)):
            e = rng.randrange(8)
            value[e] += 1
            with store.use([e], dirty=True) as (rec,):
                rec["a"].fill_(value[e])
                rec["b"].fill_(value[e])
        print("pending " + json.dumps(value), flush=True)
        store.flush()
        print("commit " + json.dumps(value), flush=True)
""")


def test_sigkill_mid_write_back_never_tears_a_committed_expert(tmp_path: Path) -> None:
    directory = tmp_path / "experts"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    committed = {e: 0 for e in range(8)}
    mid_flush = 0  # kills that landed after a "pending" line: during write-backs or the commit itself
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory), str(kill)], stdout=subprocess.PIPE,
                                text=True, env=env, cwd=REPO)
        assert proc.stdout.readline().strip() == "ready"
        # Kill after a random number of the writer's reports, then a random instant more: measured in
        # the writer's progress, not in wall time, so a busy machine still kills it mid-work (a pure
        # 0-0.3 s sleep let a starved writer commit almost nothing).
        seen = [proc.stdout.readline() for _ in range(rng.randint(1, 8))]
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        out = "".join(seen + [proc.communicate()[0]]).splitlines()
        pending = committed
        mid_flush += bool(out) and out[-1].startswith("pending")
        for line in out:
            kind, payload = line.split(" ", 1)
            values = {int(k): v for k, v in json.loads(payload).items()}
            if kind == "commit":
                committed = pending = values
            else:
                pending = values
        store = ExpertStore.open(directory, 2, 3)  # verifies every crc32
        for e in range(8):
            with store.use([e]) as (rec,):
                a, b = rec["a"], rec["b"]
                v = int(a[0].item())
                assert torch.all(a == v) and torch.all(b == v), f"kill {kill}: expert {e} is a mix of versions"
                assert v in (committed[e], pending[e]), f"kill {kill}: expert {e} holds {v}, " \
                    f"committed {committed[e]}, pending {pending[e]}"
                committed[e] = v  # what the next writer starts from
        store.close()
    assert sum(committed.values()) > 50, "the writers hardly committed anything"
    assert mid_flush >= 5, f"only {mid_flush} of 20 kills landed in a flush"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_uses_pinned_host_buffers_and_side_streams(tmp_path: Path) -> None:
    n = 16
    store, truth = _make(tmp_path, n, hbm=3, dram=6, device="cuda")
    assert all(t.is_pinned() for rec in store._dram.buffers for t in rec.values())
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(1)
    for i in range(300):
        ids = rng.sample(range(n), 2)
        store.prefetch(rng.sample(range(n), 2))
        records = store.get(ids)
        for e, rec in zip(ids, records):
            assert rec["w"].is_cuda
            assert _equal(rec, truth[e])
            new = _random_record(gen)
            for k in SPEC:
                rec[k].copy_(new[k].cuda(), non_blocking=True)  # queued on the compute stream
            truth[e] = new
        store.release(ids, dirty=True)
    store.flush()
    store.close()
    reopened = ExpertStore.open(tmp_path / "experts", 3, 6, device="cuda")
    for e in range(n):
        with reopened.use([e]) as (rec,):
            assert _equal(rec, truth[e])
    reopened.close()


def test_evict_writes_back_and_frees_hbm_but_skips_experts_in_use(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=5, hbm=2, dram=3)
    with store.use([0], dirty=True) as (rec,):
        rec["m"].fill_(9.0)
        truth[0] = {k: v.clone() for k, v in rec.items()}
    records = store.get([1])
    store.evict([0, 1])
    assert store.tier_of(0) == "dram" and store.tier_of(1) == "hbm"
    store.release([1])
    assert store.stats()["bytes_hbm_to_dram"] == 3 * 700 * 4 + 5 * 8
    with store.use([0]) as (rec,):
        assert _equal(rec, truth[0])
    assert records[0]["w"].shape == (3, 700)
    store.close()


def test_a_demand_waits_for_another_threads_leases_instead_of_failing(tmp_path: Path) -> None:
    store, truth = _make(tmp_path, n=8, hbm=3, dram=4)
    store.get([0, 1])  # another user holds two of the three hbm buffers for a moment
    got: list = []
    t = threading.Thread(target=lambda: got.append(store.get([2, 3])))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not got  # waiting, not failed
    store.release([0, 1])
    t.join(timeout=10)
    assert got and _equal(got[0][1], truth[3])
    store.close()


def test_capacity_shortage_of_one_thread_is_an_error_that_leaves_the_store_usable(tmp_path: Path) -> None:
    from storage.expert_store import CapacityError

    store, truth = _make(tmp_path, n=8, hbm=3, dram=4)
    store.pin([7])
    store.wait_idle()
    store.get([0])
    with pytest.raises(CapacityError, match="hbm tier"):
        store.get([1, 2])  # 1 lease + 1 pin + 2 more > 3
    assert [store._experts[e].uses for e in range(3)] == [1, 0, 0]  # no lease leaked
    store.release([0])
    with store.use([1, 2]) as recs:
        assert _equal(recs[1], truth[2])
    store.close()


def test_checkpoint_after_a_failed_write_back_raises_and_commits_nothing(tmp_path: Path, monkeypatch) -> None:
    store, _ = _make(tmp_path, n=4, hbm=1, dram=1, io_threads=1)
    with store.use([0], dirty=True) as (rec,):
        rec["m"].fill_(7.0)
    store.evict([0])  # dirty in dram only
    seq = Manifest.load(tmp_path / "experts").seq

    def failing(self, slot, src):
        time.sleep(0.05)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(storage.slab.SlabFile, "write", failing)
    store.prefetch([1])  # the I/O thread evicts dirty expert 0 from dram: its write-back fails
    with pytest.raises(OSError, match="I/O error"):
        store.checkpoint("t1")
    assert Manifest.load(tmp_path / "experts").seq == seq
    store.close()


def test_a_late_prefetch_that_is_dropped_is_neither_used_nor_late(tmp_path: Path, monkeypatch) -> None:
    store, _ = _make(tmp_path, n=8, hbm=2, dram=4, io_threads=1)
    real = ExpertStore._load_job

    def slow(self, e, prefetch):
        time.sleep(0.2)
        real(self, e, prefetch)

    monkeypatch.setattr(ExpertStore, "_load_job", slow)
    store.get([0, 1])  # hbm full of leased experts: the prefetch of 2 will find no buffer
    store.prefetch([2])
    t = threading.Thread(target=lambda: (store.get([2]), store.release([2])))
    t.start()
    time.sleep(0.3)
    store.release([0, 1])
    t.join(timeout=10)
    store.wait_idle()
    c = store.counters
    assert (c.prefetch_issued, c.prefetch_used, c.prefetch_late, c.prefetch_dropped) == (1, 0, 0, 1)
    assert (c.hbm_misses, c.dram_hits + c.dram_misses) == (3, 3)  # the demand loaded 2 itself
    store.close()


def test_prefetch_after_close_raises_and_leaves_nothing_in_flight(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=4, hbm=1, dram=2)
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.prefetch([3])
    assert not any(ent.busy for ent in store._experts)


def test_snapshot_count_comes_from_the_store_not_the_caller(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=3, hbm=1, dram=2, keep_snapshots=0)
    store.close()
    store = ExpertStore.open(tmp_path / "experts", 1, 2)
    for i in range(3):
        store.checkpoint(f"s{i}")
    assert store.keep_snapshots == 0 and store.snapshots == []
    store.close()


def _two_commits(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A closed store with two commits: the records of commit 1 and of commit 2 (expert 0 changed)."""
    store, truth = _make(tmp_path, n=4, hbm=1, dram=2)
    store.flush()
    first = {e: {k: v.clone() for k, v in r.items()} for e, r in truth.items()}
    with store.use([0], dirty=True) as (rec,):
        for k in rec:
            rec[k].add_(1)
        second = {**first, 0: {k: v.clone() for k, v in rec.items()}}
    store.flush()
    store.close()
    return tmp_path / "experts", first, second


def _records(store: ExpertStore) -> dict:
    out = {}
    for e in range(store.num_experts):
        with store.use([e]) as (rec,):
            out[e] = {k: v.clone() for k, v in rec.items()}
    return out


def test_a_damaged_manifest_falls_back_to_the_previous_commit_and_says_what_was_lost(tmp_path: Path) -> None:
    directory, first, second = _two_commits(tmp_path)
    store = ExpertStore.open(directory, 1, 2)
    assert store.recovered is None and all(_equal(a, second[e]) for e, a in _records(store).items())
    store.close()
    seq = Manifest.load(directory).seq
    (directory / "manifest.json").write_bytes(b"\xff" + (directory / "manifest.json").read_bytes()[1:])
    store = ExpertStore.open(directory, 1, 2)
    assert "manifest.json" in store.recovered and f"commit {seq}" in store.recovered and "lost" in store.recovered
    assert all(_equal(a, first[e]) for e, a in _records(store).items())
    store.close()


@pytest.mark.parametrize("previous", [True, False])
def test_twenty_random_single_byte_flips_in_the_manifest_open_the_store_or_give_one_clear_error(
        tmp_path: Path, previous: bool) -> None:
    directory, _, _ = _two_commits(tmp_path / "original")
    if not previous:  # a new store's only copy: every flip is refused in one line
        (directory / "manifest.prev.json").unlink()
    size = (directory / "manifest.json").stat().st_size
    rng = random.Random(17)
    outcomes = []
    for i in range(20):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(directory, copy)
        data = bytearray((copy / "manifest.json").read_bytes())
        data[rng.randrange(size)] ^= rng.randrange(1, 256)
        (copy / "manifest.json").write_bytes(bytes(data))
        try:
            ExpertStore.open(copy, 1, 2).close()
            outcomes.append("opened")
        except UserError as e:  # anything else fails the test with its traceback
            assert "\n" not in str(e)
            outcomes.append("refused")
    assert outcomes == ["opened" if previous else "refused"] * 20  # an intact previous copy is the fallback


def test_stale_manifest_temp_files_are_swept_when_the_store_opens(tmp_path: Path) -> None:
    directory, _, _ = _two_commits(tmp_path)
    for name in (".manifest.json.k1ll3d.tmp", ".manifest.prev.json.x.tmp"):
        (directory / name).write_text("{")
    ExpertStore.open(directory, 1, 2).close()
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []


def test_a_store_that_cannot_be_created_says_so_and_leaves_no_slab(tmpfs) -> None:
    mount = tmpfs("2m")
    spec = {"w": TensorSpec((2**18,), torch.float32)}  # 1 MiB per slot, 4 slots per expert
    with pytest.raises(UserError, match="No space left") as raised:
        ExpertStore.create(mount / "experts", spec, 2, 1, 1)
    assert "committed state is kept" not in str(raised.value) and "not created" in str(raised.value)
    assert list((mount / "experts").iterdir()) == []


def test_a_snapshot_lost_with_a_damaged_manifest_is_refused_naming_the_damage(tmp_path: Path) -> None:
    store, _ = _make(tmp_path, n=2, hbm=1, dram=1)
    store.checkpoint("first")
    store.checkpoint("second")
    store.close()
    directory = tmp_path / "experts"
    (directory / "manifest.json").write_bytes(b"{" + (directory / "manifest.json").read_bytes()[2:])
    ExpertStore.open(directory, 1, 1, snapshot="first").close()  # the previous commit holds it
    (directory / "manifest.json").write_bytes(b"{")
    with pytest.raises(UserError, match="no snapshot 'second'.*damaged") as raised:
        ExpertStore.open(directory, 1, 1, snapshot="second")
    assert "\n" not in str(raised.value)


# A durable kind and a scratch kind (state a resume does not need: the RTRL sensitivities).
MIXED = {"w": TensorSpec((3, 700), torch.float32), "s": TensorSpec((2, 1500), torch.float32, scratch=True)}


def _mixed_store(tmp_path: Path, n: int = 6) -> tuple[ExpertStore, dict]:
    gen = torch.Generator().manual_seed(3)
    truth = {e: {"w": torch.randn(3, 700, generator=gen)} for e in range(n)}
    store = ExpertStore.create(tmp_path / "experts", MIXED, n, 1, 2, init=lambda e: truth[e])
    return store, truth


def _write_through(store: ExpertStore, e: int, values: dict[str, torch.Tensor]) -> None:
    """Write ``values`` into expert ``e`` and push it down to NVMe (hbm 1, dram 2: two other experts evict it)."""
    with store.use([e], dirty=True) as (rec,):
        for k, v in values.items():
            rec[k].copy_(v)
    for other in [x for x in range(store.num_experts) if x != e][:2]:
        with store.use([other]):
            pass
    assert store.tier_of(e) == "nvme"


def test_scratch_kinds_take_one_slot_round_trip_while_open_and_read_zeros_after_an_open(tmp_path: Path) -> None:
    store, truth = _mixed_store(tmp_path)
    directory = store.directory
    # One slot per expert for the scratch kind, 2 + K (= 4) for the durable one.
    assert (directory / "s.slab").stat().st_size == 6 * MIXED["s"].slot_bytes
    assert (directory / "w.slab").stat().st_size == 6 * 4 * MIXED["w"].slot_bytes
    assert store.get([0])[0]["s"].abs().sum() == 0  # scratch starts at zero
    store.release([0])
    new_s, new_w = torch.full((2, 1500), 7.0), torch.full((3, 700), -2.0)
    _write_through(store, 0, {"s": new_s, "w": new_w})
    with store.use([0]) as (rec,):  # back from NVMe: the scratch value written in place, crc-checked
        assert torch.equal(rec["s"], new_s) and torch.equal(rec["w"], new_w)
    store.checkpoint("a")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert set(manifest["experts"][0][2]) == {"w"}  # no crc32 of a scratch kind is committed
    store.close()
    with ExpertStore.open(directory, 1, 2) as reopened:  # a resume: durable kept, scratch zero
        with reopened.use([0]) as (rec,):
            assert torch.equal(rec["w"], new_w) and rec["s"].abs().sum() == 0


def test_nvme_bytes_count_what_was_read_not_the_scratch_kinds_that_read_as_zeros(tmp_path: Path) -> None:
    store, _ = _mixed_store(tmp_path)
    durable, scratch = MIXED["w"].nbytes, MIXED["s"].nbytes
    with store.use([0]):
        pass  # scratch not written since the open: zeroed in dram, not read
    assert store.stats()["bytes_nvme_to_dram"] == durable
    _write_through(store, 0, {"s": torch.ones(2, 1500)})  # reads experts 1 and 2 (durable only)
    with store.use([0]):
        pass  # now its scratch slot holds data: read with the durable kind
    assert store.stats()["bytes_nvme_to_dram"] == 4 * durable + scratch
    store.close()


def test_a_corrupted_scratch_slot_is_caught_by_its_crc32_while_the_store_is_open(tmp_path: Path) -> None:
    store, _ = _mixed_store(tmp_path)
    _write_through(store, 1, {"s": torch.ones(2, 1500)})
    with open(store.directory / "s.slab", "r+b") as f:  # expert 1's scratch slot is slot 1
        f.seek(MIXED["s"].slot_bytes + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptExpertError, match="kind 's', its scratch slot") as err:
        store.get([1])
    assert err.value.experts == [1]
    store.close()


def test_a_manifest_from_before_scratch_kinds_opens_with_every_kind_durable() -> None:
    spec = TensorSpec.from_json({"shape": [3, 4], "dtype": "float32"})
    assert spec == TensorSpec((3, 4), torch.float32) and not spec.scratch


@pytest.mark.parametrize("read_path", ["preadv", "direct", "mmap"])
def test_every_read_path_round_trips_byte_exact_with_reads_of_several_chunks_in_flight(
        tmp_path: Path, read_path: str) -> None:
    # A kind of 6 MiB + 20 bytes (7 read requests), one below a page, a 0-d one and a scratch kind.
    spec = {"big": TensorSpec((3, 2**19 + 5), torch.float32), "w": TensorSpec((3, 700), torch.float32),
            "step": TensorSpec((), torch.float64), "s": TensorSpec((2, 1500), torch.float32, scratch=True)}
    gen = torch.Generator().manual_seed(1)
    truth = {e: {k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in spec.items() if not v.scratch}
             for e in range(4)}
    store = ExpertStore.create(tmp_path / "experts", spec, 4, 1, 2, init=lambda e: truth[e], read_path=read_path,
                               io_depth=4)
    for e in range(4):  # each expert read from NVMe, changed, and pushed back down by the next ones
        with store.use([e], dirty=True) as (rec,):
            assert all(torch.equal(rec[k], truth[e][k]) for k in truth[e]), f"expert {e} as created"
            rec["big"].add_(1.0)
            rec["s"].fill_(float(e))
        truth[e]["big"] = truth[e]["big"] + 1.0
    for e in range(4):
        assert store.tier_of(e) != "hbm" or e == 3
        with store.use([e]) as (rec,):
            assert torch.equal(rec["big"], truth[e]["big"]) and torch.equal(rec["s"], torch.full((2, 1500), float(e)))
    store.checkpoint("a")
    store.close()
    with ExpertStore.open(tmp_path / "experts", 1, 2, read_path=read_path) as reopened:  # verify() reads every chunk
        with reopened.use([2]) as (rec,):
            assert torch.equal(rec["big"], truth[2]["big"]) and torch.equal(rec["w"], truth[2]["w"])


def test_an_unknown_read_path_is_one_clear_error(tmp_path: Path) -> None:
    _make(tmp_path)[0].close()
    with pytest.raises(UserError, match="unknown read path 'aio'; choose one of preadv, direct, mmap"):
        ExpertStore.open(tmp_path / "experts", 3, 6, read_path="aio")
