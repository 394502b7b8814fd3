"""The memory tasks' rows of `run.py bench throughput`: batch 64, one thread, rates per wall and per CPU second."""

import math

import pytest

from bench.throughput import MEMORY_BATCH, _memory_env, format_table


@pytest.mark.parametrize("game", ["watermaze", "minigrid_memory", "tmaze-100"])
def test_memory_row_reports_consistent_rates_at_batch_64_on_one_thread(game):
    row = _memory_env(game, seconds=0.3)
    assert row["name"] == f"memory_{game}" and row["num_envs"] == MEMORY_BATCH == 64 and row["threads"] == 1
    assert row["agent_steps"] % MEMORY_BATCH == 0 and row["agent_steps"] > 0
    for key in ("agent_steps_per_s", "agent_steps_per_cpu_s", "seconds", "cpu_seconds"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert row["agent_steps_per_s"] == pytest.approx(row["agent_steps"] / row["seconds"])
    assert row["agent_steps_per_cpu_s"] == pytest.approx(row["agent_steps"] / row["cpu_seconds"])
    assert row["frames_per_s"] == pytest.approx(4 * row["agent_steps_per_s"])
    assert f"memory_{game}" in format_table({"rows": [row]})
