"""Cost of the eLSTM's exact RTRL against BPTT and truncated BPTT: time per step, peak memory, and ratio.

Everything here is the bare core (:class:`agent.cores.elstm.ELSTMCore`, input size D = hidden size N,
B = 32 streams, float32, no resets) on synthetic inputs: a pool of ``POOL`` random rollouts, each
cloned when used (a stand-in for an encoder's output, so BPTT's graph holds distinct inputs per
step), and a loss at every step, ``sum_t sum_b h_t[b] . w`` with a fixed random w [N].

Scaling rows (``kind: "scaling"``), for N in :data:`HIDDEN_SIZES` and credit horizon T in :data:`HORIZONS`:

``rtrl``   segment-form RTRL as the learner runs it: rollouts of R = :data:`ROLLOUT` steps through
           ``learner_unroll`` (R + 1 inputs, the last one only bootstraps) -> loss -> backward ->
           ``learner_after_backward``, the cell and sensitivities carried from rollout to rollout.
``tbptt``  truncated BPTT with M = R: the same rollouts (R steps + a bootstrap step), the cell
           carried but detached every R steps.
``bptt``   full BPTT: one graph over all T steps (inputs still made R steps at a time), one backward.

Each (method, N, T) runs in a fresh subprocess (``python -m bench.rtrl --one METHOD N T``) that
imports torch, builds the core and the input pool, reads its resident set size (``base_rss_mib``),
warms up on one rollout, then runs the full T steps (repeating whole passes until
:data:`MIN_PASS_SECONDS` have gone by, for short T) and reads ``ru_maxrss`` at the end
(``peak_rss_mib``); ``peak_delta_mib`` = peak - base is the method's own memory. ``s_per_step`` is
the median pass time / T: forward + backward + RTRL update, no optimizer step. A BPTT run whose
estimated peak (the per-step growth measured at a shorter T for the same N, or an analytic count
for the first) exceeds :data:`MEMORY_LIMIT_GIB` or 80% of the available memory is not started:
its row has ``skipped`` (the reason) and ``estimated_peak_delta_mib``.

Ratio row (``kind: "ratio"``), at N = :data:`RATIO_HIDDEN`, B = 32, one rollout of R = 20 steps:
per-rollout time (median over repeats, the three methods interleaved round by round for about
``seconds`` each) of segment-form RTRL, of per-step-form RTRL (the reference) and of TBPTT through
the same rollout (no carried term); ``rtrl_over_tbptt`` and ``rtrl_step_over_tbptt`` are the ratios
of the medians. ``breakdown`` splits the segment form's rollout into its pieces, each timed alone
(median seconds per rollout): forward and backward (autograd), then the phases of the core's own
segment-form update (``ELSTMCore.segment_phases``, ``agent/rtrl.py``'s functions) timed as they
run; ``breakdown_matches_core``: the timed run ends with the carry and gradients that a copy of the
core gets from ``learner_after_backward`` on the same rollout.

Reading the memory figures: ``peak_delta_mib`` also holds a constant ~10-20 MiB that torch sets up
on its first backward, and glibc's allocator keeps a few freed S-sized blocks (the [B, N, N]
sensitivities are below its 32 MiB mmap ceiling) during the first ~10-60 rollouts, so RTRL's peak
at T = 100 (5 rollouts) can read a few S-sizes (~5-10%) under its steady value; from T = 1000 on it
is flat. The notes compare the longest horizon with each shorter one.

Environment: ``BENCH_RTRL_THREADS=K`` runs every measurement with K torch threads (default: torch's
own, the core count). On a machine other processes keep busy, use 1: with 2 threads on 2 busy
cores each parallel op waits for a descheduled thread and a rollout runs ~10-100x slower.
``config`` records the threads and the load average before and after.
``BENCH_RTRL_TINY=1``: N = 16, B = 4, T in {20, 40}, ratio at N = 16, 1 thread (for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HIDDEN_SIZES = (128, 256, 512)
HORIZONS = (100, 1000, 10000)
BATCH = 32
ROLLOUT = 20
"""Rollout length R of rtrl and tbptt (= TBPTT's truncation M), and the ratio row's rollout."""
RATIO_HIDDEN = 256
METHODS = ("rtrl", "bptt", "tbptt")
POOL = 4
"""Distinct random input rollouts, cycled (each use clones one)."""
MEMORY_LIMIT_GIB = 12.0
"""A BPTT run whose estimated peak resident memory exceeds this is skipped."""
MIN_PASS_SECONDS = 1.0
"""Short horizons repeat whole T-step passes until this much time has gone by (median pass is reported)."""
ONE_RUN_TIMEOUT = 900.0
"""Seconds before a scaling subprocess is abandoned (its row is then ``skipped``)."""
BPTT_BYTES_PER_STEP_FACTOR = 24
"""Analytic estimate of BPTT's graph: about this many [B, N] float32 tensors kept per step."""
REPO = Path(__file__).resolve().parents[1]


def _tiny() -> bool:
    return os.environ.get("BENCH_RTRL_TINY", "") == "1"


# --------------------------------------------------------------------------------------------------
# Parent: the scaling rows (one subprocess each) and the ratio row (in process)


def run(seconds: float) -> dict:
    """-> {"config": {...}, "rows": [scaling rows..., ratio row], "notes": [...]}."""
    tiny = _tiny()
    sizes, horizons, batch, ratio_hidden = ((16,), (20, 40), 4, 16) if tiny else \
        (HIDDEN_SIZES, HORIZONS, BATCH, RATIO_HIDDEN)
    min_pass = 0.05 if tiny else MIN_PASS_SECONDS
    import torch

    default_threads = torch.get_num_threads()
    threads = int(os.environ.get("BENCH_RTRL_THREADS", 1 if tiny else default_threads))
    config = {"hidden_sizes": list(sizes), "input_size": "= hidden size", "batch": batch, "horizons": list(horizons),
              "rollout": ROLLOUT, "tbptt_truncation": ROLLOUT, "ratio_hidden": ratio_hidden,
              "memory_limit_gib": MEMORY_LIMIT_GIB, "min_pass_seconds": min_pass, "seconds": seconds,
              "dtype": "float32", "torch_threads": threads, "tiny": tiny,
              "loadavg_before": list(os.getloadavg())}
    start = time.perf_counter()
    rows = []
    for n in sizes:
        for T in horizons:
            for method in METHODS:
                rows.append(_scaling_row(method, n, T, batch, min_pass, threads, rows))
    torch.set_num_threads(threads)
    try:
        rows.append(ratio_row(ratio_hidden, batch, ROLLOUT, seconds))
    finally:
        torch.set_num_threads(default_threads)
    config["loadavg_after"] = list(os.getloadavg())
    notes = [f"total bench time {time.perf_counter() - start:.0f} s; load average (1, 5, 15 min) before "
             f"{_load(config['loadavg_before'])}, after {_load(config['loadavg_after'])} on {os.cpu_count()} cores"]
    notes += _memory_notes(rows, horizons)
    return {"config": config, "rows": rows, "notes": notes}


def _load(avg: list[float]) -> str:
    return "/".join(f"{a:.2f}" for a in avg)


def _scaling_row(method: str, n: int, T: int, batch: int, min_pass: float, threads: int, done: list[dict]) -> dict:
    row = {"name": f"{method}_N{n}_T{T}", "kind": "scaling", "method": method, "hidden_size": n, "input_size": n,
           "batch": batch, "horizon": T, "rollout": None if method == "bptt" else ROLLOUT}
    if method == "bptt":
        estimate = _bptt_estimate_mib(n, T, batch, done)
        limit = min(MEMORY_LIMIT_GIB * 1024, 0.8 * _available_mib())
        if estimate > limit:
            row.update(skipped=f"estimated peak {estimate / 1024:.1f} GiB > limit {limit / 1024:.1f} GiB",
                       estimated_peak_delta_mib=estimate)
            return row
    cmd = [sys.executable, "-m", "bench.rtrl", "--one", method, str(n), str(T), "--batch", str(batch),
           "--min-seconds", str(min_pass), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=ONE_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        row["skipped"] = f"timed out after {ONE_RUN_TIMEOUT:.0f} s"
        return row
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return row


def _bptt_estimate_mib(n: int, T: int, batch: int, done: list[dict]) -> float:
    """Peak growth of full BPTT over T steps: linear in T from the longest measured BPTT row at this N."""
    measured = [r for r in done if r["method"] == "bptt" and r["hidden_size"] == n and "peak_delta_mib" in r]
    if measured:
        ref = max(measured, key=lambda r: r["horizon"])
        return ref["peak_delta_mib"] * T / ref["horizon"]
    return BPTT_BYTES_PER_STEP_FACTOR * batch * n * 4 * T / 2 ** 20


def _available_mib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def _memory_notes(rows: list[dict], horizons) -> list[str]:
    """Per N: each method's peak delta by horizon, the longest horizon against each shorter one, and
    BPTT's growth per step."""
    notes = []
    hs = sorted(horizons)
    by = {(r["method"], r["hidden_size"], r["horizon"]): r for r in rows if r.get("kind") == "scaling"}
    for n in sorted({r["hidden_size"] for r in by.values()}):
        parts = []
        for method in ("rtrl", "tbptt"):
            got = {T: by[(method, n, T)] for T in hs if "peak_delta_mib" in by.get((method, n, T), {})}
            if len(got) >= 2:
                last = got[max(got)]
                vs = ", ".join(f"vs T={T} {_pct(last['peak_delta_mib'], r['peak_delta_mib'])} "
                               f"(total RSS {_pct(last['peak_rss_mib'], r['peak_rss_mib'])})"
                               for T, r in got.items() if T != max(got))
                parts.append(f"{method} peak delta " + "/".join(f"{r['peak_delta_mib']:.1f}" for r in got.values())
                             + " MiB at T=" + "/".join(map(str, got)) + f": T={max(got)} {vs}")
        bp = [by[("bptt", n, T)] for T in hs if "peak_delta_mib" in by.get(("bptt", n, T), {})]
        if len(bp) >= 2:
            slopes = ", ".join(f"T={r['horizon']}: {r['peak_delta_mib'] / r['horizon'] * 1024:.0f} KiB/step"
                               for r in bp)
            parts.append(f"bptt peak delta per step {slopes}")
        if parts:
            notes.append(f"N={n}: " + "; ".join(parts))
    return notes


def _pct(a: float, b: float) -> str:
    return f"{(a - b) / b * 100:+.1f}%" if b > 0 else "n/a"


# --------------------------------------------------------------------------------------------------
# Shared pieces


def _setup(n: int, batch: int, learning: str, rtrl_form: str = "segment", seed: int = 0):
    """-> (core, input pool [POOL] of [R + 1, B, N], first [R + 1, B] (no resets), loss weights w [N])."""
    import torch

    from agent.cores.elstm import ELSTMCore

    torch.manual_seed(seed)
    core = ELSTMCore(n, n, learning=learning, rtrl_form=rtrl_form)
    pool = [torch.randn(ROLLOUT + 1, batch, n) for _ in range(POOL)]
    first = torch.zeros(ROLLOUT + 1, batch, dtype=torch.bool)
    w = torch.randn(n)
    return core, pool, first, w


def _zero_grad(core) -> None:
    for p in core.parameters():
        p.grad = None


def _rtrl_rollout(core, inputs, first, w, carry):
    """One learner update's core work (segment or step form); -> new carry."""
    out, record = core.learner_unroll(inputs, first, (), carry, 0)
    (out[:-1] * w).sum().backward()  # the last output only bootstraps: no loss on it
    return core.learner_after_backward(record)


def _tbptt_rollout(core, inputs, first, w, state):
    """BPTT through one rollout from the detached carried state (+ the bootstrap step); -> new state."""
    state = tuple(s.detach() for s in state)
    out, state = core(inputs[:-1], first[:-1], state)
    core.step(inputs[-1], state)  # the bootstrap step, as in the learner's T + 1 convention
    (out * w).sum().backward()
    return state


# --------------------------------------------------------------------------------------------------
# Child: one (method, N, T) in a fresh process


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def one(method: str, n: int, T: int, batch: int, min_seconds: float = MIN_PASS_SECONDS) -> dict:
    """Run ``method`` over T steps at hidden size n (see the module docstring); -> the row's measured fields."""
    import torch

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if T % ROLLOUT:
        raise ValueError(f"T must be a multiple of {ROLLOUT}, got {T}")
    core, pool, first, w = _setup(n, batch, "rtrl" if method == "rtrl" else "tbptt")
    base = _rss_mib()
    rollouts = T // ROLLOUT

    if method == "rtrl":
        carry = core.learner_carry(batch, "cpu")

        def one_pass(k0: int) -> None:
            nonlocal carry
            for k in range(k0, k0 + rollouts):
                carry = _rtrl_rollout(core, pool[k % POOL].clone(), first, w, carry)
                _zero_grad(core)
    elif method == "tbptt":
        state = core.initial_state(batch)

        def one_pass(k0: int) -> None:
            nonlocal state
            for k in range(k0, k0 + rollouts):
                state = _tbptt_rollout(core, pool[k % POOL].clone(), first, w, state)
                _zero_grad(core)
    else:
        def one_pass(k0: int) -> None:
            state, loss = core.initial_state(batch), 0.0
            for k in range(k0, k0 + rollouts):
                out, state = core(pool[k % POOL][:-1].clone(), first[:-1], state)
                loss = loss + (out * w).sum()
            loss.backward()
            _zero_grad(core)

    # Warm-up: one rollout's worth (bptt: a one-rollout graph), untimed.
    saved, rollouts = rollouts, 1
    one_pass(0)
    rollouts = saved
    times, k0, start = [], 1, time.perf_counter()
    while not times or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        one_pass(k0)
        times.append(time.perf_counter() - t0)
        k0 += rollouts
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    s_per_step = statistics.median(times) / T
    return {"s_per_step": s_per_step, "steps_per_s": 1.0 / s_per_step, "passes": len(times),
            "seconds": sum(times), "base_rss_mib": base, "peak_rss_mib": peak, "peak_delta_mib": peak - base,
            "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------------
# Ratio row


def ratio_row(n: int, batch: int, R: int, seconds: float) -> dict:
    """Per-rollout time of RTRL (segment and step forms) vs TBPTT at hidden size n, with the breakdown."""
    import torch

    assert R == ROLLOUT, "the input pool is built for ROLLOUT steps"
    seg, pool, first, w = _setup(n, batch, "rtrl", "segment")
    step, _, _, _ = _setup(n, batch, "rtrl", "step")
    tb, _, _, _ = _setup(n, batch, "tbptt")
    carries = {"seg": seg.learner_carry(batch, "cpu"), "step": step.learner_carry(batch, "cpu")}
    state = [tb.initial_state(batch)]
    k = [0]

    def inputs():
        k[0] += 1
        return pool[k[0] % POOL].clone()

    def do_seg():
        carries["seg"] = _rtrl_rollout(seg, inputs(), first, w, carries["seg"])
        _zero_grad(seg)

    def do_step():
        carries["step"] = _rtrl_rollout(step, inputs(), first, w, carries["step"])
        _zero_grad(step)

    def do_tbptt():
        state[0] = _tbptt_rollout(tb, inputs(), first, w, state[0])
        _zero_grad(tb)

    fns = {"rtrl_segment": do_seg, "rtrl_step": do_step, "tbptt": do_tbptt}
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}
    # Interleave: every round runs each method for about a tenth of a second (at least once), so a
    # change of machine load hits all three alike.
    while min(spent.values()) < seconds:
        for name, fn in fns.items():
            t_round = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent[name] += dt
                if time.perf_counter() - t_round > 0.1:
                    break
    med = {name: statistics.median(v) for name, v in times.items()}
    breakdown, matches = _segment_breakdown(seg, pool, first, w, carries["seg"], seconds / 2)
    return {"name": f"ratio_N{n}_T{R}", "kind": "ratio", "hidden_size": n, "input_size": n, "batch": batch,
            "rollout": R, "rtrl_segment_s": med["rtrl_segment"], "rtrl_step_s": med["rtrl_step"],
            "tbptt_s": med["tbptt"], "rtrl_over_tbptt": med["rtrl_segment"] / med["tbptt"],
            "rtrl_step_over_tbptt": med["rtrl_step"] / med["tbptt"],
            "repeats": {name: len(v) for name, v in times.items()}, "seconds": sum(spent.values()),
            "breakdown": breakdown, "breakdown_matches_core": matches, "torch_threads": torch.get_num_threads()}


def _segment_breakdown(core, pool, first, w, carry, seconds: float) -> tuple[dict, bool]:
    """Median seconds per rollout of each piece of segment-form RTRL; and whether the timed run gives
    what ``learner_after_backward`` gives (so the breakdown times the same work).

    Pieces: ``forward`` (``learner_unroll`` + loss), ``backward``, then the phases of
    ``ELSTMCore.segment_phases`` (``agent/rtrl.py``), timed as they run: ``derivatives`` (zh, fh, J
    over [T, B, N]), ``decay_cumprod`` (reverse cumulative product of J, [T, B, N]), ``carried_grad``
    (the e_0 . S_0 contractions into the grads), ``S_decay`` (total * S_0 in place over [B, N, D], F
    and Z), ``S_bmm`` (the [B, N, T] x [B, T, D] products added in place), ``vector_S`` (the four
    [B, N] sensitivities) and ``telemetry`` (max |J|, max |S| over [B, N, D]).
    """
    import copy

    import torch

    from agent.cores.elstm import RTRLCarry
    from agent.rtrl import last_cell

    pieces: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        pieces.setdefault(name, []).append(t1 - t0)
        return t1

    matches = True
    k, start, reps = 0, time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - start < seconds:
        k += 1
        reps += 1
        if reps == 1:  # the reference: a copy of the core and carry through learner_after_backward
            ref_core, ref_carry = copy.deepcopy(core), copy.deepcopy(carry)
            ref_carry = _rtrl_rollout(ref_core, pool[k % POOL].clone(), first, w, ref_carry)
        t = time.perf_counter()
        inputs = pool[k % POOL].clone()
        out, r = core.learner_unroll(inputs, first, (), carry, 0)
        loss = (out[:-1] * w).sum()
        t = tick("forward", t)
        loss.backward()
        t = tick("backward", t)
        for name in core.segment_phases(r):
            t = tick(name, t)
        carry = RTRLCarry(c=last_cell(r.f, r.z, r.c_prev), S=r.carry.S)
        if reps == 1:
            same_grads = all(torch.equal(a.grad, b.grad) for a, b in zip(ref_core.parameters(), core.parameters()))
            matches = bool(same_grads and torch.equal(ref_carry.c, carry.c)
                           and all(torch.equal(ref_carry.S[key], carry.S[key]) for key in carry.S))
        _zero_grad(core)
    out = {f"{name}_s": statistics.median(v) for name, v in pieces.items()}
    out["sum_of_pieces_s"] = sum(out.values())
    out["repeats"] = reps
    return out, matches


# --------------------------------------------------------------------------------------------------
# Table (plain-text) output


def format_table(result: dict) -> str:
    """A readable table of the rows (the ``--json`` output carries the same figures)."""
    lines = ["config: " + ", ".join(f"{k}={v}" for k, v in result.get("config", {}).items()),
             f"{'method':<6} {'N':>4} {'T':>6} {'us/step':>9} {'peak MiB':>9} {'base MiB':>9} {'delta MiB':>10}"]
    for row in result["rows"]:
        if row.get("kind") == "scaling":
            head = f"{row['method']:<6} {row['hidden_size']:>4} {row['horizon']:>6}"
            if "skipped" in row:
                lines.append(f"{head}   skipped: {row['skipped']}")
            else:
                lines.append(f"{head} {row['s_per_step'] * 1e6:>9.0f} {row['peak_rss_mib']:>9.0f} "
                             f"{row['base_rss_mib']:>9.0f} {row['peak_delta_mib']:>10.1f}")
        elif row.get("kind") == "ratio":
            lines.append(f"ratio at N={row['hidden_size']}, B={row['batch']}, rollout {row['rollout']}: per rollout "
                         f"rtrl segment {row['rtrl_segment_s'] * 1e3:.1f} ms, rtrl step {row['rtrl_step_s'] * 1e3:.1f}"
                         f" ms, tbptt {row['tbptt_s'] * 1e3:.1f} ms; rtrl/tbptt {row['rtrl_over_tbptt']:.2f}, "
                         f"step/tbptt {row['rtrl_step_over_tbptt']:.2f}")
            bd = row["breakdown"]
            lines.append("  segment breakdown (ms per rollout): " + ", ".join(
                f"{k[:-2]} {v * 1e3:.2f}" for k, v in bd.items() if k.endswith("_s")))
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rtrl", description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "N", "T"),
                        help="run one scaling configuration (rtrl|bptt|tbptt, hidden size, horizon) and "
                             "print its measured fields as one JSON line")
    parser.add_argument("--batch", type=int, default=BATCH, help="streams B (default: %(default)s)")
    parser.add_argument("--min-seconds", type=float, default=MIN_PASS_SECONDS,
                        help="with --one: repeat whole passes until this many seconds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="with --one: torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="ratio row measuring time per method")
    args = parser.parse_args(argv)
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, n, T = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(one(method, n, T, args.batch, args.min_seconds)))
    else:
        print(format_table(run(args.seconds)))


if __name__ == "__main__":
    main()
