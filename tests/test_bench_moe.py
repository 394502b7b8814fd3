"""`bench moe` rows: the fields the README table is built from, for the smallest setting."""

from __future__ import annotations

import math

from bench.moe import _row


def test_moe_bench_row_reports_time_memory_and_active_experts(tmp_path):
    for lazy in (True, False):
        row = _row(tmp_path / str(lazy), 8, lazy, 0.01)
        assert row["name"] == f"{'lazy' if lazy else 'eager'}/E=8" and row["updates"] >= 3
        assert math.isfinite(row["ms_per_update"]) and row["ms_per_update"] > 0
        assert row["active"] == 2 and row["store_mib"] > 0 and row["peak_rss_mib"] > 0
