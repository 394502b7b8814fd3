"""`bench scale`: rows for the E asked, each measured in its own process; the store's traffic is
real (a cycle of games larger than dram reads from NVMe at every switch); a store that would not fit
the free disk is skipped with the reason; the bench leaves no file behind. No wall-clock thresholds."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench import scale
from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def result() -> dict:
    return scale.run(0.01, experts=(8, 48, 10**7))


def test_rows_measure_real_traffic_past_the_dram_tier(result):
    small, mid, huge = result["rows"]
    assert (small["experts"], mid["experts"]) == (8, 48)
    for row in (small, mid):
        assert math.isfinite(row["ms_between"]) and row["ms_between"] > 0 and row["ms_switch"] > 0
        assert row["peak_rss_mib"] > 0 and row["disk_gib"] > 0 and row["updates"] >= scale.UPDATES_PER_GAME
    assert small["bytes_nvme_to_dram"] == 0 and small["hit_rate_hbm"] == 1.0  # 8 experts: all stay in hbm
    assert small["hit_rate_dram"] is None  # never asked: no rate (and the JSON stays valid)
    json.dumps(result, allow_nan=False)
    # 24 games of 2 experts cycle through a dram tier of 32 experts: every switch reads a cohort from NVMe.
    record = result["config"]["record_bytes"]
    assert mid["bytes_nvme_to_dram"] * scale.UPDATES_PER_GAME == pytest.approx(scale.TOP_K * record, rel=0.5)
    assert mid["bytes_dram_to_nvme"] > 0 and mid["stall_ms_switch"] > 0 and mid["expected_stall_ms"] > 0
    assert mid["state_gib"] == pytest.approx(48 * record / 2**30)
    assert "skipped" in huge and "GiB free" in huge["skipped"]


def test_the_bench_removes_its_files(result):
    assert not [p for p in Path(os.getcwd()).iterdir() if p.name.startswith(".bench-scale-")]


def test_e_big_is_the_first_e_past_one_and_a_half_times_ram(result):
    c = result["config"]
    assert c["e_big"] * c["record_bytes"] >= scale.RAM_FACTOR * c["ram_bytes"] > (c["e_big"] - 1) * c["record_bytes"]
