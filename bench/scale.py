"""The MoE learner out of core: training updates as the number of experts grows past the machine's RAM.

Rows (``python run.py bench scale [--json]``), one per E in (8, 256, E_big), each in a fresh process
(so its peak RSS is its own): the learner's real path of the MoE core (``learner_unroll``, a
backward of a fixed random linear loss on the outputs, ``learner_after_backward``, the RMSprop step
of the experts through ``ExpertOptimizer``), on random inputs, with the experts in a store of fixed
tiers (hbm :data:`HBM`, dram :data:`DRAM` experts) on this machine's disk. Routing: ``game`` over
E / k games that follow each other every :data:`UPDATES_PER_GAME` updates in order, so each
switch brings a new cohort of k experts in from NVMe (once the cycle has passed the dram tier's
size) and the experts written back go down to NVMe. ``E_big`` is the smallest E whose expert state
(one version of every record: parameters, optimizer state, sensitivities) is at least
:data:`RAM_FACTOR` times the machine's RAM; the row is skipped, with the reason, when its store
would not fit in 90% of the free disk.

Row fields: ``ms_between`` (median update time of the updates that are not the first of a game),
``ms_switch`` (median of the first updates of a game), ``stall_ms_switch`` (median store stall of
those), ``expected_stall_ms`` (the bytes that update read from NVMe / ``disk_gbps``, the machine's
O_DIRECT read bandwidth at 4 requests in flight, measured in the parent first), ``peak_rss_mib``,
``state_gib`` (E x one record), ``disk_gib`` (the store's files as allocated), ``bytes_<link>`` per
update and ``hit_rate_hbm`` / ``hit_rate_dram`` of the timed updates. The bench removes its files.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.moe import B, D, N, T, TOP_K, Learner
from bench.store import IO_DEPTH, _disk_raw
from train.expert_optimizer import RMSprop
from train.experts import expert_spec

HBM, DRAM = 8, 32
UPDATES_PER_GAME = 3
RAM_FACTOR = 1.5
SMALL = (8, 256)


def run(seconds: float, experts: tuple[int, ...] | None = None) -> dict:
    """The rows (``experts``: the E of each row; default :data:`SMALL` and ``E_big``); about
    ``seconds`` of timed updates per row (at least one whole game)."""
    rule = RMSprop(0.99, 0.01)
    record = sum(s.nbytes for s in expert_spec(N, D, B, rule).values())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    big = math.ceil(RAM_FACTOR * ram / record)
    work = Path(tempfile.mkdtemp(prefix=".bench-scale-", dir=os.getcwd()))  # the disk the run dirs live on
    try:
        disk = _disk_raw(work / "scratch", 256 * 2**20, min(seconds, 2.0))["gbps_qd"]
        (work / "scratch").unlink()
        rows = []
        ctx = multiprocessing.get_context("spawn")
        for E in experts or (*SMALL, big):
            need = _footprint(E, rule)
            free = shutil.disk_usage(work).free
            if need > 0.9 * free:
                rows.append({"name": f"E={E}", "experts": E, "skipped":
                             f"its store needs {need / 2**30:.1f} GiB, more than 90% of the {free / 2**30:.1f} GiB free"})
                continue
            with ctx.Pool(1, maxtasksperchild=1) as pool:
                row = pool.apply(_row, (work / f"E{E}", E, seconds, torch.get_num_threads()))
            row["expected_stall_ms"] = row.pop("switch_bytes") / (disk * 1e9) * 1000
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = {"N": N, "D": D, "B": B, "T": T, "top_k": TOP_K, "hbm": HBM, "dram": DRAM, "updates_per_game": UPDATES_PER_GAME,
              "record_bytes": record, "ram_bytes": ram, "e_big": big, "disk_gbps": disk, "io_depth": IO_DEPTH,
              "threads": torch.get_num_threads()}
    return {"config": config, "rows": rows}


def _footprint(E: int, rule: RMSprop) -> int:
    """Bytes the store of E experts allocates on disk (every durable kind 4 slots, scratch 1)."""
    spec = expert_spec(N, D, B, rule)
    return E * sum(s.slot_bytes * (1 if s.scratch else 4) for s in spec.values())


def _row(directory: Path, E: int, seconds: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    games = E // TOP_K
    learner = Learner(directory, E, games, hbm=HBM, dram=min(DRAM, E))
    store = learner.store
    between, switch, stalls, switch_bytes = [], [], [], []
    warm = 2 * UPDATES_PER_GAME * max(1, DRAM // TOP_K + 1)  # past the point where dram first fills
    deadline, u, base = None, 0, None
    while deadline is None or time.perf_counter() < deadline or len(between) < UPDATES_PER_GAME - 1:  # a whole game at least
        if u == warm:
            deadline, base = time.perf_counter() + seconds, store.stats()
        before = store.stats()
        start = time.perf_counter()
        learner.update((u // UPDATES_PER_GAME) % games)
        elapsed = (time.perf_counter() - start) * 1000
        after = store.stats()
        if deadline is not None:
            if u % UPDATES_PER_GAME == 0:
                switch.append(elapsed)
                stalls.append((after["stall_s"] - before["stall_s"]) * 1000)
                switch_bytes.append(after["bytes_nvme_to_dram"] - before["bytes_nvme_to_dram"])
            else:
                between.append(elapsed)
        u += 1
    stats = store.stats()
    timed = u - warm
    store.close()
    disk = sum(f.stat().st_blocks * 512 for f in directory.iterdir())
    shutil.rmtree(directory)
    row = {"name": f"E={E}", "experts": E, "games": games, "updates": timed,
           "ms_between": statistics.median(between), "ms_switch": statistics.median(switch),
           "stall_ms_switch": statistics.median(stalls), "switch_bytes": statistics.median(switch_bytes),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "state_gib": E * sum(s.nbytes for s in store.spec.values()) / 2**30, "disk_gib": disk / 2**30}
    for link in ("nvme_to_dram", "dram_to_hbm", "hbm_to_dram", "dram_to_nvme"):
        row[f"bytes_{link}"] = (stats[f"bytes_{link}"] - base[f"bytes_{link}"]) / timed
    for tier in ("hbm", "dram"):
        hits, misses = (stats[f"{tier}_{k}"] - base[f"{tier}_{k}"] for k in ("hits", "misses"))
        row[f"hit_rate_{tier}"] = hits / (hits + misses) if hits + misses else None  # no access (JSON has no NaN)
    return row


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"MoE learner out of core: N={c['N']} D={c['D']} B={c['B']} T={c['T']} k={c['top_k']}, game routing, "
             f"hbm {c['hbm']} / dram {c['dram']} experts, a new game every {c['updates_per_game']} updates; "
             f"RAM {c['ram_bytes'] / 2**30:.1f} GiB, disk {c['disk_gbps']:.2f} GB/s (E_big = {c['e_big']})",
             f"{'row':<8} {'state GiB':>9} {'disk GiB':>9} {'ms/update':>10} {'ms switch':>10} {'stall ms':>9} "
             f"{'expected':>9} {'peak RSS MiB':>13} {'hbm hit':>8} {'MB in/upd':>10}"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"{r['name']:<8} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['name']:<8} {r['state_gib']:>9.2f} {r['disk_gib']:>9.2f} {r['ms_between']:>10.1f} "
                     f"{r['ms_switch']:>10.1f} {r['stall_ms_switch']:>9.1f} {r['expected_stall_ms']:>9.1f} "
                     f"{r['peak_rss_mib']:>13.0f} {r['hit_rate_hbm']:>8.3f} {r['bytes_nvme_to_dram'] / 1e6:>10.2f}")  # hbm: always accessed
    return "\n".join(lines)
