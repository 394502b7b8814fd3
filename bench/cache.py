"""Prefetch modes on a multi-game routing trace with real frames: none, lru, detector, oracle, Belady.

The routing trace is ``bench/store.py``'s (``TRACE``: 4 games, each routing its streams' top-k to
its own cohort of experts, cycling through the games with 12 switches); each step also gets a real
frame of its game (envpool, random play). The game detector (``agent/detector.py``) learns online
as a trainer would teach it: it predicts each step's frame before it observes it with the true
game, trains every 8 steps, and its predictions are smoothed by a ``SwitchTracker``. The cohort map
(``agent/prefetch.py``) counts each step's routing under the true game (the stage's known game).
The actor runs ahead of the learner: a rollout (``TRACE["lookahead"]`` = T = 20 steps) is played
before the learner trains on it and demands its experts, so the prefetch for the learner's step i
can use the frames (and the detector's verdict) of step i + 20; the oracle gets the true game of
step i + 20. Each mode replays the trace through a real store (``bench.store.replay``):

``none``      hbm emptied after every step          ``lru``     demand loads only
``detector``  on a detected game change: pin and prefetch the game's cohort, unpin the old one
``oracle``    the same on the true game change      ``belady``  the offline bound on hit rate

Rows as in ``bench store``'s trace rows, plus ``stall_vs_oracle`` (stall time / oracle's; detector
and oracle are replayed ``ROUNDS`` times, alternating, and report their median round, with every
round's stall in ``stall_ms_per_step_rounds``) and, in
the detector row, ``accuracy`` (raw per-step predictions after the first pass through every game)
and ``switch_latency_steps`` (mean steps from a true switch until the smoothed detection follows,
over the switches to games seen before).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from agent.detector import GameDetector, SwitchTracker, switch_latency_steps
from agent.prefetch import CohortMap, CohortPrefetcher
from bench.store import TRACE, belady_row, create_trace_store, make_trace, replay
from envs.registry import make_env

GAMES = ("Pong", "Breakout", "SpaceInvaders", "Seaquest")
ROUNDS = 3
"""Alternating replays of the detector and oracle modes; their rows report the median-stall round."""
TRAIN_EVERY, TRAIN_BATCH = 8, 32


def run(seconds: float) -> dict:
    """All rows (``seconds`` is unused: the trace has a fixed length)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, games = make_trace()
    detected, accuracy, latency = _detections(games)
    work = Path(tempfile.mkdtemp(prefix=".bench-cache-", dir=os.getcwd()))
    try:
        create_trace_store(work / "experts", device)
        rows = [replay(work / "experts", device, steps, games, "cache/none", evict_after=True),
                replay(work / "experts", device, steps, games, "cache/lru")]
        # Detector and oracle differ by a few percent at most, below the disk's run-to-run noise:
        # alternate them for ROUNDS rounds and keep each one's median-stall round.
        rounds: dict[str, list[dict]] = {"detector": [], "oracle": []}
        for _ in range(ROUNDS):
            for mode, signal in (("detector", detected), ("oracle", games)):
                rounds[mode].append(replay(work / "experts", device, steps, games, f"cache/{mode}",
                                           before_step=_policy(steps, games, signal)))
        for mode, replays in rounds.items():
            stalls = [r["stall_ms_per_step"] for r in replays]
            rows.append({**sorted(replays, key=lambda r: r["stall_ms_per_step"])[len(replays) // 2],
                         "stall_ms_per_step_rounds": stalls})
        rows.append({**belady_row(steps), "name": "cache/belady"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    oracle = next(r for r in rows if r["name"] == "cache/oracle")["stall_ms_per_step"]
    for r in rows:
        if r["stall_ms_per_step"] is not None:
            r["stall_vs_oracle"] = r["stall_ms_per_step"] / oracle if oracle else None
        if r["name"] == "cache/detector":
            r.update(accuracy=accuracy, switch_latency_steps=latency)
    return {"config": {"games": list(GAMES), "trace": TRACE, "device": str(device)}, "rows": rows}


def _detections(games: list[int]) -> tuple[list[int], float, float]:
    """The smoothed detected game of every step, raw accuracy after the first cycle, mean latency."""
    envs = {g: make_env(GAMES[g], 1, seed=100 + g) for g in sorted(set(games))}
    last = {g: env.reset().obs for g, env in envs.items()}
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    detector, tracker = GameDetector(len(envs), seed=0), SwitchTracker(1)
    first_cycle = games.index(max(games)) + TRACE["steps_per_game"]
    detected, correct = [], []
    for i, g in enumerate(games):
        last[g] = envs[g].step(rng.integers(0, 18, size=1)).obs
        prediction = detector.predict(last[g])
        detected.append(int(tracker.update(prediction)[0][0]))
        if i >= first_cycle:
            correct.append(int(prediction[0]) == g)
        detector.observe(last[g], g)
        if i % TRAIN_EVERY == TRAIN_EVERY - 1:
            detector.train_step(TRAIN_BATCH)
    for env in envs.values():
        env.close()
    later = [x for x in switch_latency_steps(games[first_cycle:], detected[first_cycle:]) if x is not None]
    return detected, float(np.mean(correct)), float(np.mean(later)) if later else float("nan")


def _policy(steps: list[list[int]], games: list[int], signal: list[int]):
    """before_step for the replay: count the previous step's routing, then follow ``signal``'s game."""
    t = TRACE
    cohorts = CohortMap(t["games"], t["experts"], max_size=t["hbm"] - t["cohort"])
    state: dict = {}

    def before_step(store, i: int) -> None:
        if "prefetcher" not in state:
            state["prefetcher"] = CohortPrefetcher(store, cohorts)
        if i > 0:
            cohorts.update(games[i - 1], steps[i - 1])
        ahead = signal[min(i + t["lookahead"], len(signal) - 1)]  # what the actor plays a rollout ahead
        if ahead >= 0:
            state["prefetcher"].switch(ahead)

    return before_step


def format_table(result: dict) -> str:
    lines = [f"{'mode':<10} {'hbm hit':>8} {'between sw.':>12} {'miss/switch':>12} {'stall ms/step':>14} {'vs oracle':>10}"]
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in result["rows"]:
        lines.append(f"{r['name'][6:]:<10} {r['hit_rate_hbm']:>8.3f} {fmt(r['hit_rate_between_switches'], '.3f'):>12} "
                     f"{fmt(r['misses_per_switch'], '.1f'):>12} {fmt(r['stall_ms_per_step'], '.3f'):>14} "
                     f"{fmt(r.get('stall_vs_oracle'), '.2f'):>10}")
        if "accuracy" in r:
            lines.append(f"  detector: accuracy {r['accuracy']:.3f}, switch latency {r['switch_latency_steps']:.1f} steps")
    return "\n".join(lines)
