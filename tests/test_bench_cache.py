"""`run.py bench cache --json`: the prefetch modes on the multi-game trace with real frames. Only
counts are asserted (hit rates, misses), never times."""

from __future__ import annotations

import json

import pytest

from bench.store import TRACE
from conftest import run_cli


@pytest.fixture(scope="module")
def cache_bench() -> dict:
    return json.loads(run_cli("bench", "cache", "--json", check=True).stdout)


def test_every_mode_has_a_row(cache_bench):
    names = [r["name"] for r in cache_bench["rows"]]
    assert names == ["cache/none", "cache/lru", "cache/detector", "cache/oracle", "cache/belady"]


def test_detector_prefetch_keeps_the_cohort_hot_and_matches_the_oracle(cache_bench):
    rows = {r["name"][6:]: r for r in cache_bench["rows"]}
    det, oracle, lru, none = rows["detector"], rows["oracle"], rows["lru"], rows["none"]
    assert det["accuracy"] >= 0.99 and det["switch_latency_steps"] <= TRACE["lookahead"]
    assert det["hit_rate_between_switches"] >= 0.99
    assert det["misses_per_switch"] <= 2 * TRACE["cohort"]
    assert det["misses_per_switch"] <= oracle["misses_per_switch"] + 1.0
    assert det["misses_per_switch"] < lru["misses_per_switch"] < none["misses_per_switch"]
    assert none["hit_rate_hbm"] == 0.0


def test_cohort_map_and_prefetcher(tmp_path):
    import torch

    from agent.prefetch import CohortMap, CohortPrefetcher
    from storage.expert_store import ExpertStore
    from storage.slab import TensorSpec

    cohorts = CohortMap(num_games=2, num_experts=6, max_size=3, decay=1.0, share=0.9)
    for _ in range(10):
        cohorts.update(0, [0, 1])
    cohorts.update(0, [5])
    cohorts.update(1, [2, 3, 4, 4])
    assert cohorts.cohort(0) == [0, 1]  # expert 5 carries < 10% of game 0's routing
    assert cohorts.cohort(1) == [4, 2, 3]
    store = ExpertStore.create(tmp_path / "s", {"w": TensorSpec((4,), torch.float32)}, 6, 4, 5)
    pf = CohortPrefetcher(store, cohorts)
    pf.switch(0)
    store.wait_idle()
    assert [store.tier_of(e) for e in (0, 1)] == ["hbm", "hbm"] and store.stats()["pinned"] == 2
    pf.switch(1)
    store.wait_idle()
    assert store.stats()["pinned"] == 3 and all(store.tier_of(e) == "hbm" for e in (2, 3, 4))
    store.close()
