"""`run.py bench`: the --json contract (one JSON object on stdout with a `rows` list) and its errors.

No wall-clock thresholds: the figures depend on the machine; only their consistency is checked.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def throughput() -> dict:
    proc = run_cli("bench", "throughput", "--json", "--seconds", "1", check=True)
    return json.loads(proc.stdout)  # the whole of stdout is one JSON object


def test_throughput_json_describes_machine_and_config(throughput):
    assert throughput["bench"] == "throughput"
    machine = throughput["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch_threads"] >= 1
    assert machine["torch"] and machine["device"] in ("cpu", "cuda")
    assert throughput["config"]["num_envs"] > 0 and throughput["config"]["rollout_length"] > 0


def test_throughput_has_the_pipeline_and_memory_task_rows_with_positive_finite_rates(throughput):
    rows = {row["name"]: row for row in throughput["rows"]}
    assert list(rows)[:3] == ["env_random", "actor_only", "train"]
    assert sorted(list(rows)[3:]) == ["memory_goal_locations", "memory_minigrid_memory", "memory_nonmatching",
                                      "memory_tmaze-100", "memory_watermaze"]
    for row in rows.values():
        for key in ("agent_steps_per_s", "frames_per_s", "seconds"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
        assert row["frames_per_s"] == pytest.approx(4 * row["agent_steps_per_s"], rel=1e-9)


def test_throughput_time_splits_are_fractions_of_wall_time(throughput):
    rows = {row["name"]: row for row in throughput["rows"]}
    assert {"env_frac", "act_frac"} <= set(rows["actor_only"])
    assert {"env_frac", "act_frac", "learn_frac", "wait_frac"} <= set(rows["train"])
    for row in rows.values():
        for key, value in row.items():
            if key.endswith("_frac"):
                assert 0.0 <= value <= 1.0, (row["name"], key, value)
                assert value == pytest.approx(row[key[:-len("_frac")] + "_s"] * row["rollouts"] / row["seconds"])
    # The actor thread's env + act, and the learner thread's learn + wait, each fit in the wall time.
    train = rows["train"]
    assert train["env_frac"] + train["act_frac"] <= 1.0 + 1e-6
    assert train["learn_frac"] + train["wait_frac"] <= 1.0 + 1e-6


def test_unknown_benchmark_is_a_one_line_error_with_exit_code_2():
    proc = run_cli("bench", "nosuch")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch" in lines[0] and "throughput" in lines[0]


def test_split_times_fit_the_measured_window_when_a_rollout_was_queued_before_it():
    """A slow warm-up lets the actor queue its next rollout; the one measured step then takes it at
    once. Its env and act seconds were spent before that step began, and the window must hold them."""
    import time

    import torch

    from agent.model import ActorCritic
    from bench import throughput as tp
    from envs.atari import NUM_ACTIONS
    from train.actor import Sampler
    from train.config import preset

    cfg = preset("smoke")
    cfg.env.games, cfg.env.num_envs = ["Pong"], 2
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set)
    env = tp._make_env(cfg, 1)
    sampler = Sampler(env, model, cfg.learner.rollout_length, cfg.env.reward_clip, torch.device("cpu"),
                      initial_version=0, seed=cfg.seed)
    calls = 0

    def step():
        nonlocal calls
        rollout, wait = sampler.next()
        calls += 1
        sampler.publish(calls, model)
        if calls <= tp.WARMUP_ROLLOUTS:  # the warm-up: slow enough for the actor to queue a rollout
            time.sleep(tp.WARMUP_SECONDS / tp.WARMUP_ROLLOUTS + 0.1)
        return rollout, wait

    sums, n, elapsed = tp._measure(sampler, env, step, seconds=0.0)
    assert calls == tp.WARMUP_ROLLOUTS + 1 and n == 1
    assert sums["env"] > 0 and sums["act"] > 0
    assert sums["env"] + sums["act"] <= elapsed
    assert sums["wait"] <= elapsed
