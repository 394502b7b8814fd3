"""The expert store's links and cache policies, measured on this machine's disk and memory.

Rows (``python run.py bench store [--json]``):

``disk_raw``      ``O_DIRECT`` reads (1 MiB requests, page cache bypassed) of a scratch file as large
                  as the store, one request at a time (``gbps_qd1``) and :data:`IO_DEPTH` at a time
                  from as many threads (``gbps_qd``): the disk's own bandwidth, ``gbps`` the better
                  of the two, the reference for the next rows.
``nvme_to_dram/<read path>``  every expert demanded once from a cold store (slab pages dropped from
                  the page cache first): NVMe read + CRC-32C check + copy to hbm, through
                  ``ExpertStore.get`` with that read path (``storage/slab.py``: ``preadv``, ``direct``,
                  ``mmap``) and ``io_depth`` = :data:`IO_DEPTH`, demanded as the learner demands them
                  (``MoEELSTMCore.hbm_chunks``): :data:`LINK_HBM` experts per ``get``, whose misses
                  load concurrently; ``ratio`` = bandwidth / ``disk_raw``.
                  ``nvme_to_dram_one/<read path>``: one expert per ``get`` (the latency-bound case).
                  ``nvme_to_dram_prefetch/<read path>``: one per ``get``, with prefetches on the I/O
                  threads :data:`LINK_HBM` - 1 experts ahead of each demand (reads overlap the demands).
``dram_to_hbm``   every expert demanded from dram (all dram hits): ``ratio`` = bandwidth / a plain
                  ``dst.copy_(src)`` of the same bytes on the same device (``plain_copy_gbps``).
``trace/<mode>``  a synthetic sequential-games routing trace replayed through a real store with a
                  simulated compute time per step: ``none`` (no caching: hbm is emptied after every
                  step), ``lru`` (demand loads, LRU), ``cohort`` (the known schedule prefetches and
                  pins the next game's cohort ``lookahead`` steps before each switch), and
                  ``belady`` (the optimal offline replacement of the same trace at the same hbm
                  capacity: the bound on hit rate; it moves no data, so it has no stall figure).

Trace fields: ``hit_rate_hbm`` over all demand accesses; ``hit_rate_between_switches`` excludes the
first ``settle`` steps after each switch; ``misses_per_switch`` = hbm misses in those steps per
switch; ``stall_ms_per_step`` = ``ExpertStore`` stall time per step.
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from storage.belady import belady_hits, flatten
from storage.expert_store import ExpertStore
from storage.slab import ALIGN, CHUNK, READ_PATHS, TensorSpec

RECORD_SHAPE = (256, 512)
"""Each expert: two float32 kinds of this shape (an eLSTM input projection pair F, Z at N=256,
D=512): 1 MiB per expert."""
LINK_EXPERTS = 192
"""Experts in the bandwidth rows (192 MiB, larger than any CPU cache)."""
IO_DEPTH = 4
"""Read requests in flight in the bandwidth rows (``disk_raw``'s second figure and the store's ``io_depth``)."""
LINK_HBM = 8
"""The hbm tier of the bandwidth rows, in experts (the dram tier holds them all)."""
TRACE = dict(games=4, cohort=8, experts=64, hbm=20, dram=24, streams=4, top_k=2, steps_per_game=150,
             switches=12, compute_ms=2.0, lookahead=20, settle=10, record_shape=(64, 512))
"""The synthetic trace: each game routes every stream's top-k to its own cohort of experts; the
schedule cycles through the games (every cycle misses for LRU when hbm holds < all cohorts)."""


def run(seconds: float) -> dict:
    """All rows; ``seconds`` scales the number of repetitions of the bandwidth rows."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix=".bench-store-", dir=os.getcwd()))  # the disk run dirs live on
    try:
        spec = {k: TensorSpec(RECORD_SHAPE, torch.float32) for k in ("F", "Z")}
        record_bytes = sum(s.nbytes for s in spec.values())
        raw = _disk_raw(work / "scratch", LINK_EXPERTS * record_bytes, seconds)
        rows = [raw]
        rows += _links(work / "links", spec, device, raw["gbps"], seconds)
        rows += _trace_rows(work / "trace", device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = {"device": str(device), "record_mib": record_bytes / 2**20, "link_experts": LINK_EXPERTS,
              "trace": TRACE, "seconds": seconds}
    return {"config": config, "rows": rows}


def _disk_raw(path: Path, size: int, seconds: float) -> dict:
    with open(path, "wb") as f:
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    bufs = [mmap.mmap(-1, CHUNK) for _ in range(IO_DEPTH)]  # page-aligned, as O_DIRECT requires
    best = {1: 0.0, IO_DEPTH: 0.0}
    with ThreadPoolExecutor(IO_DEPTH) as pool:
        for depth in best:
            deadline = time.perf_counter() + seconds
            while True:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                try:
                    start = time.perf_counter()
                    # Thread i reads chunks i, i + depth, ...: ``depth`` requests in flight.
                    list(pool.map(lambda i: _read_every(fd, bufs[i], i * CHUNK, depth * CHUNK, size), range(depth)))
                    best[depth] = max(best[depth], size / (time.perf_counter() - start) / 1e9)
                finally:
                    os.close(fd)
                if time.perf_counter() > deadline:
                    break
    return {"name": "disk_raw", "gbps": max(best.values()), "gbps_qd1": best[1], "gbps_qd": best[IO_DEPTH],
            "io_depth": IO_DEPTH, "bytes": size}


def _read_every(fd: int, buf: mmap.mmap, offset: int, stride: int, size: int) -> None:
    while offset < size:
        os.preadv(fd, [buf], offset)
        offset += stride


def _links(directory: Path, spec: dict, device: torch.device, raw_gbps: float, seconds: float) -> list[dict]:
    n = LINK_EXPERTS
    record_bytes = sum(s.nbytes for s in spec.values())
    gen = torch.Generator().manual_seed(0)
    init = lambda e: {k: torch.randn(s.shape, generator=gen) for k, s in spec.items()}  # noqa: E731
    ExpertStore.create(directory, spec, n, 1, 1, device, init=init).close()
    rows = []
    for mode, read_path in [(m, r) for m in ("", "_one", "_prefetch") for r in READ_PATHS]:
        best = 0.0
        deadline = time.perf_counter() + seconds
        step = LINK_HBM if mode == "" else 1
        while True:
            store = ExpertStore.open(directory, hbm=LINK_HBM, dram=n, device=device, verify=False,
                                     read_path=read_path, io_depth=IO_DEPTH)
            store.drop_page_cache()
            start = time.perf_counter()
            for e in range(0, n, step):
                ids = list(range(e, min(n, e + step)))
                if mode == "_prefetch":
                    store.prefetch(range(e, min(n, e + LINK_HBM - 1)))
                store.get(ids)
                store.release(ids)
            _sync(device)
            best = max(best, n * record_bytes / (time.perf_counter() - start) / 1e9)
            stats = store.stats()
            store.close()
            if time.perf_counter() > deadline:
                break
        assert stats["bytes_nvme_to_dram"] == n * record_bytes
        name = f"nvme_to_dram{mode}/{read_path}"
        rows.append({"name": name, "gbps": best, "ratio": best / raw_gbps, "bytes": n * record_bytes})

    store = ExpertStore.open(directory, hbm=LINK_HBM, dram=n, device=device, verify=False)
    for e in range(n):  # fill dram
        store.get([e])
        store.release([e])
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for e in range(n):
            store.get([e])
            store.release([e])
        _sync(device)
        best = max(best, n * record_bytes / (time.perf_counter() - start) / 1e9)
    assert store.stats()["dram_misses"] == n  # the timed passes were all dram hits
    store.close()
    src = torch.randn(n * record_bytes // 4, pin_memory=device.type == "cuda")
    dst = torch.empty_like(src, device=device)
    plain = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or plain == 0.0:
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        plain = max(plain, src.numel() * 4 / (time.perf_counter() - start) / 1e9)
    rows.append({"name": "dram_to_hbm", "gbps": best, "ratio": best / plain, "plain_copy_gbps": plain,
                 "bytes": n * record_bytes})
    return rows


def make_trace(seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """The synthetic routing trace: per step the sorted union of every stream's top-k experts, and
    the game of each step. Game ``g``'s cohort is experts ``[g*cohort, (g+1)*cohort)``."""
    t = TRACE
    rng = random.Random(seed)
    steps, games = [], []
    for s in range(t["switches"] + 1):
        g = s % t["games"]
        cohort = range(g * t["cohort"], (g + 1) * t["cohort"])
        for _ in range(t["steps_per_game"]):
            steps.append(sorted({e for _ in range(t["streams"]) for e in rng.sample(cohort, t["top_k"])}))
            games.append(g)
    return steps, games


def create_trace_store(directory: Path, device: torch.device) -> None:
    """The store the trace rows replay through: ``TRACE["experts"]`` records of two float32 kinds."""
    spec = {k: TensorSpec(tuple(TRACE["record_shape"]), torch.float32) for k in ("F", "Z")}
    ExpertStore.create(directory, spec, TRACE["experts"], 1, 1, device).close()


def replay(directory: Path, device: torch.device, steps: list[list[int]], games: list[int], name: str,
           before_step: Callable[[ExpertStore, int], None] | None = None, evict_after: bool = False) -> dict:
    """Replay ``steps`` through a fresh open of the trace store; one trace row named ``name``.

    ``before_step(store, i)`` runs before step i's demand (a prefetch policy); ``evict_after``
    empties hbm after every step (no caching). Each step sleeps ``compute_ms`` while it holds its
    experts (the compute that prefetches overlap); the slabs leave the page cache at every switch,
    so NVMe reads are disk reads."""
    t = TRACE
    switch_steps = {i for i in range(1, len(games)) if games[i] != games[i - 1]}
    settling = {i + j for i in {0} | switch_steps for j in range(t["settle"])}
    store = ExpertStore.open(directory, t["hbm"], t["dram"], device, verify=False)
    store.drop_page_cache()
    misses = [0] * len(steps)
    for i, ids in enumerate(steps):
        if i in switch_steps:
            store.drop_page_cache()
        if before_step is not None:
            before_step(store, i)
        before = store.counters.hbm_misses
        store.get(ids)
        misses[i] = store.counters.hbm_misses - before
        time.sleep(t["compute_ms"] / 1000)
        store.release(ids)
        if evict_after:
            store.evict(ids)
    store.wait_idle()
    stall_s = store.stats()["stall_s"]
    store.close()
    total = sum(len(s) for s in steps)
    between = [i for i in range(len(steps)) if i not in settling]
    return {"name": name, "hit_rate_hbm": 1 - sum(misses) / total,
            "hit_rate_between_switches": 1 - sum(misses[i] for i in between) / sum(len(steps[i]) for i in between),
            "misses_per_switch": sum(misses[i] for i in settling) / (len(switch_steps) + 1),
            "stall_ms_per_step": stall_s * 1000 / len(steps)}


def belady_row(steps: list[list[int]]) -> dict:
    """The offline bound on the hbm hit rate at ``TRACE["hbm"]`` (and at the dram capacity)."""
    accesses = flatten(steps)
    return {"name": "trace/belady", "hit_rate_hbm": belady_hits(accesses, TRACE["hbm"]) / len(accesses),
            "hit_rate_between_switches": None, "misses_per_switch": None, "stall_ms_per_step": None,
            "dram_bound_hit_rate": belady_hits(accesses, TRACE["dram"]) / len(accesses)}


def _trace_rows(directory: Path, device: torch.device) -> list[dict]:
    create_trace_store(directory, device)
    steps, games = make_trace()
    return [replay(directory, device, steps, games, "trace/none", evict_after=True),
            replay(directory, device, steps, games, "trace/lru"),
            replay(directory, device, steps, games, "trace/cohort", before_step=lambda st, i: _oracle_prefetch(st, games, i)),
            belady_row(steps)]


def _oracle_prefetch(store: ExpertStore, games: list[int], i: int) -> None:
    """Pin the cohort of the game that will be running ``lookahead`` steps from now; unpin the old."""
    t = TRACE
    cohort = lambda g: range(g * t["cohort"], (g + 1) * t["cohort"])  # noqa: E731
    ahead = games[min(i + t["lookahead"], len(games) - 1)]
    if i == 0:
        store.pin(cohort(games[0]))
    if ahead != games[min(i + t["lookahead"] - 1, len(games) - 1)] and i > 0:
        store.pin(cohort(ahead))
    if i > 0 and games[i] != games[i - 1]:
        store.unpin(cohort(games[i - 1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(result: dict) -> str:
    """Bandwidth rows, then the trace rows."""
    lines = []
    for row in result["rows"]:
        if row["name"].startswith("trace/"):
            continue
        extra = f"  ratio {row['ratio']:.2f}" if "ratio" in row else ""
        extra += f"  (plain copy {row['plain_copy_gbps']:.2f} GB/s)" if "plain_copy_gbps" in row else ""
        extra += (f"  (1 request in flight {row['gbps_qd1']:.2f}, {row['io_depth']} in flight {row['gbps_qd']:.2f})"
                  if "gbps_qd" in row else "")
        lines.append(f"{row['name']:<29} {row['gbps']:7.2f} GB/s{extra}")
    lines.append(f"{'trace mode':<14} {'hbm hit':>8} {'between sw.':>12} {'miss/switch':>12} {'stall ms/step':>14}")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for row in result["rows"]:
        if row["name"].startswith("trace/"):
            lines.append(f"{row['name'][6:]:<14} {row['hit_rate_hbm']:>8.3f} "
                         f"{fmt(row['hit_rate_between_switches'], '.3f'):>12} "
                         f"{fmt(row['misses_per_switch'], '.1f'):>12} {fmt(row['stall_ms_per_step'], '.3f'):>14}")
    lines.append(f"note: trace = {TRACE['games']} games x cohort {TRACE['cohort']}, hbm {TRACE['hbm']}, "
                 f"dram {TRACE['dram']} of {TRACE['experts']} experts; {ALIGN}-byte slots")
    return "\n".join(lines)
