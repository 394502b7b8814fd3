"""Learner cost of the MoE eLSTM core against the number of experts, lazy against eager RTRL.

One learner update of the core alone (segment-form RTRL: the unroll over T + 1 steps, backward of a
fixed random linear loss on the outputs, ``learner_after_backward`` and the RMSprop step of the
experts), on random inputs, for E in ``EXPERTS`` at k = 2, with every expert in hbm so that the
rows measure compute, not disk. Routing: ``game`` (one game: the same k experts every step), the
regime of a router that has specialised; the others are idle, which is what lazy updates are for.
The sizes are the default preset's core: N = 256, D = 256 + 1 + 18, B = 8 streams, T = 20.

Row fields: ``ms_per_update`` (median over the timed updates of a row; the fastest of ``ROUNDS``
interleaved rounds), ``active`` (experts routed per
rollout), ``store_mib`` (one copy of every expert record: parameters, RMSprop state, sensitivities),
``carry_mib`` (the rho/gamma vectors of all experts), ``peak_rss_mib`` (the process's peak resident
memory after the row).
"""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agent.cores.moe_elstm import MoEELSTMCore
from train.expert_optimizer import ExpertOptimizer, RMSprop
from train.experts import create_store

EXPERTS = (8, 64, 256)
TOP_K = 2
N, D, B, T = 256, 256 + 1 + 18, 8, 20
WARMUP = 2
ROUNDS = 2


def run(seconds: float) -> dict:
    """Rows for every E, lazy then eager; about ``seconds`` of timed updates per row (at least 3)."""
    torch.manual_seed(0)
    best: dict[tuple[int, bool], dict] = {}
    work = Path(tempfile.mkdtemp(prefix=".bench-moe-"))
    try:
        # Rounds interleave the configurations, and each keeps its fastest round: on a 2-core
        # machine the median of one row drifts by up to ~40% between neighbouring rows.
        for rnd in range(ROUNDS):
            for lazy in (True, False):
                for E in EXPERTS:
                    row = _row(work / f"{E}-{lazy}-{rnd}", E, lazy, seconds)
                    if (E, lazy) not in best or row["ms_per_update"] < best[(E, lazy)]["ms_per_update"]:
                        best[(E, lazy)] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [best[(E, lazy)] for lazy in (True, False) for E in EXPERTS]
    by = {(r["experts"], r["lazy"]): r["ms_per_update"] for r in rows}
    for r in rows:
        r["ratio_to_smallest"] = r["ms_per_update"] / by[(EXPERTS[0], r["lazy"])]
    config = {"N": N, "D": D, "B": B, "T": T, "top_k": TOP_K, "routing": "game", "threads": torch.get_num_threads()}
    return {"config": config, "rows": rows}


class Learner:
    """The MoE core's learner path on fixed random inputs x [T + 1, B, D] and a fixed random linear
    loss W [T, B, N] on its outputs, with its experts in a store (``bench/scale.py`` uses it too)."""

    def __init__(self, directory: Path, E: int, games: int, hbm: int, dram: int, lazy: bool = True) -> None:
        self.core = MoEELSTMCore(D, N, E, TOP_K, "game", schedule=list(range(games)), num_games=games, lazy=lazy)
        rule = RMSprop(0.99, 0.01)
        self.store = create_store(self.core, directory, B, hbm=hbm, dram=dram, device="cpu", rule=rule)
        self.core.attach_store(self.store)
        self.optimizer = ExpertOptimizer(self.core, rule)
        self.carry = self.core.learner_carry(B, "cpu")
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(T + 1, B, D, generator=gen)
        self.W = torch.randn(T, B, N, generator=gen)
        self.first = torch.zeros(T + 1, B, dtype=torch.bool)

    def update(self, game: int) -> None:
        """One update (unroll, backward, sensitivities, the experts' RMSprop step) with every stream on ``game``."""
        game_id = torch.full((T + 1, B), game, dtype=torch.long)
        out, ctx = self.core.learner_unroll(self.x, self.first, (), self.carry, 0, game_id)
        (self.W * out[:T]).sum().backward()
        self.carry = self.core.learner_after_backward(ctx)
        self.optimizer.step(1e-4)


def _row(directory: Path, E: int, lazy: bool, seconds: float) -> dict:
    learner = Learner(directory, E, 1, hbm=E, dram=E, lazy=lazy)
    store = learner.store
    times = []
    deadline = None
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        learner.update(0)
        elapsed = time.perf_counter() - start
        if deadline is None and len(times) + 1 >= WARMUP:
            deadline = time.perf_counter() + seconds
            times.clear()
            continue
        times.append(elapsed)
    record_bytes = sum(s.nbytes for s in store.spec.values())
    store.close()
    shutil.rmtree(directory)
    return {"name": f"{'lazy' if lazy else 'eager'}/E={E}", "experts": E, "lazy": lazy,
            "ms_per_update": statistics.median(times) * 1000, "updates": len(times), "active": TOP_K,
            "store_mib": E * record_bytes / 2**20, "carry_mib": 2 * E * B * N * 4 / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"MoE learner update, N={c['N']} D={c['D']} B={c['B']} T={c['T']} k={c['top_k']}, routing {c['routing']}",
             f"{'row':<14} {'ms/update':>10} {'x E=8':>7} {'store MiB':>10} {'carry MiB':>10} {'peak RSS MiB':>13}"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<14} {r['ms_per_update']:>10.1f} {r['ratio_to_smallest']:>7.2f} "
                     f"{r['store_mib']:>10.0f} {r['carry_mib']:>10.1f} {r['peak_rss_mib']:>13.0f}")
    return "\n".join(lines)
