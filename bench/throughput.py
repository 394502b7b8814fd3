"""Throughput of the default preset, in three rows that peel the pipeline apart.

All rows use ``train.config.preset("default")``: its first game, ``num_envs`` env streams, rollout
length T and network (Nature CNN + MoE eLSTM learning by RTRL, its experts in a store in a temporary
directory with the preset's tiers). One agent step is one action in one stream;
frames = agent steps x frame skip 4.

``env_random``  the vectorized env alone (``envs.registry.make_env``, envpool in sync mode, the thin
                ``AtariVecEnv`` wrapper the actor uses) stepped with uniformly random actions.
``actor_only``  the real :class:`train.actor.Actor` thread collecting rollouts with no learning: the
                main thread drains the rollout queue and publishes the (unchanged) parameters
                after each rollout, as the learner would, so the actor never blocks on them.
                Split: ``env`` / ``act`` = the rollouts' ``env_time`` / ``act_time``.
``train``       actor thread + :meth:`train.learner.Learner.update` on every rollout, as in
                ``train.loop._train_stage`` (without logging and checkpoints). Split: ``env`` and
                ``act`` run on the actor thread, ``learn`` (``Learner.update``) and ``wait`` (the
                learner waiting for the next rollout) on the main thread, so the two pairs overlap
                in time: each pair's fractions sum to at most 1, all four to at most 2.
``memory_<task>``  each memory task of ``envs.memory`` alone, batch 64, random actions, on one
                thread (torch and numpy): agent steps/s per core (frames = steps x 4, as DMLab's).

Every row first runs ``WARMUP_SECONDS`` (and at least ``WARMUP_ROLLOUTS`` rollouts, so the
one-update policy-lag pipeline is in its steady state) untimed, then counts whole steps or
rollouts for ``seconds``. Split fields: ``<part>_s`` = seconds per rollout (= per update),
``<part>_frac`` = share of the measured wall time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent.model import ActorCritic
from common.device import resolve_device
from envs.atari import FRAME_SKIP, NUM_ACTIONS
from envs.memory import MEMORY_EXAMPLES
from envs.registry import make_env
from storage.run_dir import RunDir
from train import tags
from train.actor import Rollout, Sampler
from train.config import RunConfig, preset
from train.experts import open_store
from train.learner import Learner

WARMUP_SECONDS = 1.5
"""Untimed run before each row's measurement (allocator, thread pools, env resets)."""
WARMUP_ROLLOUTS = 3
"""Rollouts at least in the warm-up of the actor rows: rollouts 0 and 1 never wait for parameters."""
MEMORY_BATCH = 64
"""Streams of the ``memory_<task>`` rows (the batch the tasks' speed goal is set at)."""


def run(seconds: float) -> dict:
    """Measure the three rows for ``seconds`` each; -> {"config": {...}, "rows": [...], "notes": [...]}."""
    cfg = preset("default")
    cfg.validate()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    config = {
        "preset": "default", "game": cfg.env.games[0], "num_envs": cfg.env.num_envs,
        "rollout_length": cfg.learner.rollout_length, "encoder": cfg.model.encoder, "core": cfg.model.core,
        "hidden_size": cfg.model.hidden_size, "env_backend": cfg.env.backend, "env_threads": cfg.env.num_threads,
        "device": str(device), "warmup_seconds": WARMUP_SECONDS, "seconds": seconds,
    }
    rows = [_env_random(cfg, seconds), _actor_only(cfg, device, seconds), _train(cfg, device, seconds)]
    rows += [_memory_env(game, seconds) for game in MEMORY_EXAMPLES]
    notes = ["train: env+act run on the actor thread, learn+wait on the learner thread, so they overlap",
             f"memory_<task>: the task alone, batch {MEMORY_BATCH}, random actions, 1 thread; "
             "agent_steps_per_cpu_s = per core, also on a shared machine"]
    return {"config": config, "rows": rows, "notes": notes}


def _make_env(cfg: RunConfig, seed_offset: int):
    ec = cfg.env
    return make_env(ec.games[0], ec.num_envs, seed=cfg.env_seed(seed_offset), backend=ec.backend,
                    sticky_action_prob=ec.sticky_action_prob, max_episode_steps=ec.max_episode_steps,
                    num_threads=ec.num_threads)


def _env_random(cfg: RunConfig, seconds: float) -> dict:
    env = _make_env(cfg, 0)
    steps, elapsed, _ = _step_randomly(env, np.random.default_rng(cfg.seed), seconds)
    return _row("env_random", steps * env.num_envs, elapsed)


def _memory_env(game: str, seconds: float) -> dict:
    """Memory task ``game`` alone at batch MEMORY_BATCH, random actions, torch and numpy on one thread.

    The numpy tasks run on the calling thread (MiniGrid in envpool's worker threads). Besides the wall
    rate, ``agent_steps_per_cpu_s`` divides by the process's CPU seconds (all its threads), which is
    the rate per core even on a machine shared with other work.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = make_env(game, MEMORY_BATCH, seed=0)
    try:
        steps, elapsed, cpu = _step_randomly(env, np.random.default_rng(0), seconds)
    finally:
        torch.set_num_threads(threads)
    row = _row(f"memory_{game}", steps * MEMORY_BATCH, elapsed)
    row.update(num_envs=MEMORY_BATCH, threads=1, cpu_seconds=cpu, agent_steps_per_cpu_s=steps * MEMORY_BATCH / cpu)
    return row


def _step_randomly(env, rng: np.random.Generator, seconds: float) -> tuple[int, float, float]:
    """Warm up, then step ``env`` with uniformly random actions for ``seconds``.

    -> (batched steps, wall seconds, process CPU seconds) of the measured phase. Closes ``env``.
    """
    try:
        env.reset()
        for phase_seconds in (WARMUP_SECONDS, seconds):
            steps = 0
            start, cpu_start = time.perf_counter(), time.process_time()
            while (elapsed := time.perf_counter() - start) < phase_seconds:
                env.step(rng.integers(0, env.num_actions, size=env.num_envs))
                steps += 1
            cpu = time.process_time() - cpu_start
    finally:
        env.close()
    return steps, elapsed, cpu


def _actor_only(cfg: RunConfig, device: torch.device, seconds: float) -> dict:
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set).to(device)
    env = _make_env(cfg, 1)
    sampler = Sampler(env, model, cfg.learner.rollout_length, cfg.env.reward_clip, device, initial_version=0,
                      seed=cfg.seed)
    version = 0

    def step() -> tuple[Rollout, float]:
        nonlocal version
        rollout, wait = sampler.next()
        version += 1
        sampler.publish(version, model)
        return rollout, wait

    sums, n, elapsed = _measure(sampler, env, step, seconds)
    return _row("actor_only", n * cfg.learner.rollout_length * cfg.env.num_envs, elapsed, n,
                {"env": sums["env"], "act": sums["act"]})


def _train(cfg: RunConfig, device: torch.device, seconds: float) -> dict:
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set).to(device)
    learner = Learner(model, cfg, device)
    with tempfile.TemporaryDirectory(prefix=".bench-throughput-", dir=os.getcwd()) as work:
        store = open_store(cfg, model, learner, RunDir(Path(work)), device, snapshot=None)  # MoE core: its experts
        try:
            return _train_with(cfg, model, learner, device, seconds)
        finally:
            if store is not None:
                store.close()


def _train_with(cfg: RunConfig, model: ActorCritic, learner: Learner, device: torch.device, seconds: float) -> dict:
    env = _make_env(cfg, 2)
    sampler = Sampler(env, model, cfg.learner.rollout_length, cfg.env.reward_clip, device,
                      initial_version=learner.version, seed=cfg.seed)
    lags: list[float] = []

    def step() -> tuple[Rollout, float, float]:
        rollout, wait = sampler.next()
        stats = learner.update(rollout)
        sampler.publish(learner.version, model)
        lags.append(stats[tags.POLICY_LAG])
        return rollout, wait, stats[tags.LEARN_TIME]

    sums, n, elapsed = _measure(sampler, env, step, seconds)
    row = _row("train", n * cfg.learner.rollout_length * cfg.env.num_envs, elapsed, n, sums)
    row["policy_lag"] = float(np.mean(lags[-n:]))
    return row


def _measure(sampler: Sampler, env, step, seconds: float) -> tuple[dict[str, float], int, float]:
    """Start ``sampler``, warm up, then call ``step`` for ``seconds``; -> (summed split seconds, rollouts, wall s).

    ``step()`` takes one rollout and returns (rollout, wait seconds[, learn seconds]).
    """
    sampler.start()
    try:
        for phase_seconds, min_rollouts in ((WARMUP_SECONDS, WARMUP_ROLLOUTS), (seconds, 1)):
            sums = {"env": 0.0, "act": 0.0, "learn": 0.0, "wait": 0.0}
            n = 0
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < phase_seconds or n < min_rollouts:
                rollout, wait, *learn = step()
                # A rollout queued before the phase began was made before it: the window opens when
                # the first one consumed began, so both threads' split times fit inside it.
                start = min(start, rollout.started) if n == 0 else start
                sums["env"] += rollout.env_time
                sums["act"] += rollout.act_time
                sums["wait"] += wait
                sums["learn"] += learn[0] if learn else 0.0
                n += 1
            elapsed = time.perf_counter() - start
    finally:
        try:
            sampler.close()
        finally:
            env.close()
    return sums, n, elapsed


def _row(name: str, agent_steps: int, elapsed: float, rollouts: int | None = None,
         split: dict[str, float] | None = None) -> dict:
    row = {"name": name, "agent_steps_per_s": agent_steps / elapsed,
           "frames_per_s": agent_steps * FRAME_SKIP / elapsed, "seconds": elapsed, "agent_steps": agent_steps}
    if rollouts is not None:
        row["rollouts"] = rollouts
        for part, total in (split or {}).items():
            row[f"{part}_s"] = total / rollouts
            row[f"{part}_frac"] = total / elapsed
    return row


def format_table(result: dict) -> str:
    """A readable table: rates per row, then each row's time split (``<part>_frac`` / ``<part>_s``)."""
    lines = ["config: " + ", ".join(f"{k}={v}" for k, v in result.get("config", {}).items())]
    lines.append(f"{'row':<22} {'agent steps/s':>14} {'frames/s':>10} {'seconds':>8}   "
                 "time split: fraction of wall time (seconds per rollout)")
    for row in result["rows"]:
        parts = [k[:-len("_frac")] for k in row if k.endswith("_frac")]
        split = "  ".join(f"{p} {row[p + '_frac']:.2f} ({row[p + '_s']:.3f} s)" for p in parts)
        if "agent_steps_per_cpu_s" in row:
            split = f"{row['agent_steps_per_cpu_s']:,.0f} agent steps per CPU second (per core)"
        lines.append(f"{row['name']:<22} {row['agent_steps_per_s']:>14,.0f} {row['frames_per_s']:>10,.0f} "
                     f"{row['seconds']:>8.1f}   {split}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
