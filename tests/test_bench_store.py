"""`run.py bench store --json`: every row present, bandwidths positive, ratios consistent, and the
trace rows ordered as the policies must be (Belady >= LRU; cohort prefetch ahead of LRU; no caching
never hits). No wall-clock thresholds."""

from __future__ import annotations

import json
import math

import pytest

from bench.store import TRACE, make_trace
from storage.slab import READ_PATHS
from conftest import run_cli


@pytest.fixture(scope="module")
def store_bench() -> dict:
    proc = run_cli("bench", "store", "--json", "--seconds", "0.05", check=True)
    return json.loads(proc.stdout)


def test_bandwidth_rows_are_positive_and_ratios_match_their_references(store_bench):
    rows = {r["name"]: r for r in store_bench["rows"]}
    links = [f"{link}/{path}" for link in ("nvme_to_dram", "nvme_to_dram_one", "nvme_to_dram_prefetch") for path in READ_PATHS]
    assert list(rows)[:11] == ["disk_raw", *links, "dram_to_hbm"]
    for name in ("disk_raw", *links, "dram_to_hbm"):
        assert math.isfinite(rows[name]["gbps"]) and rows[name]["gbps"] > 0
    raw = rows["disk_raw"]
    assert raw["gbps"] == max(raw["gbps_qd1"], raw["gbps_qd"]) and raw["io_depth"] == 4
    for name in links:
        assert rows[name]["ratio"] == pytest.approx(rows[name]["gbps"] / raw["gbps"])
    assert rows["dram_to_hbm"]["ratio"] == pytest.approx(rows["dram_to_hbm"]["gbps"] / rows["dram_to_hbm"]["plain_copy_gbps"])


def test_trace_rows_rank_the_policies(store_bench):
    rows = {r["name"]: r for r in store_bench["rows"]}
    none, lru, cohort, belady = (rows[f"trace/{m}"] for m in ("none", "lru", "cohort", "belady"))
    assert none["hit_rate_hbm"] == 0.0  # emptied after every step
    assert belady["hit_rate_hbm"] >= lru["hit_rate_hbm"]
    assert cohort["misses_per_switch"] < lru["misses_per_switch"]
    # LRU cycling through more cohorts than hbm holds misses each new cohort once per switch.
    assert lru["misses_per_switch"] >= TRACE["cohort"] * 0.9
    for row in (none, lru, cohort):
        assert 0.0 <= row["hit_rate_between_switches"] <= 1.0 and row["stall_ms_per_step"] >= 0.0


def test_synthetic_trace_routes_each_game_to_its_own_cohort():
    steps, games = make_trace()
    assert len(steps) == len(games) == (TRACE["switches"] + 1) * TRACE["steps_per_game"]
    for ids, g in zip(steps, games):
        assert ids == sorted(set(ids)) and 1 <= len(ids) <= TRACE["cohort"]
        assert all(g * TRACE["cohort"] <= e < (g + 1) * TRACE["cohort"] for e in ids)
    assert sorted(set(games)) == list(range(TRACE["games"]))
