"""The MoE core's expert store during training: its life cycle with the checkpoints, and its figures.

Life cycle
    A new run creates the store in ``<run_dir>/experts`` from the model's initial experts. Every
    training checkpoint first applies the experts' pending gradients (``ExpertOptimizer.flush``), then
    commits the store as a snapshot named after the checkpoint (``ExpertStore.checkpoint``), then
    saves the model (whose expert replica now matches) with that name: so the checkpoint and the
    snapshot describe the same moment. ``--resume`` opens the store at the snapshot of the checkpoint
    it resumes from, discarding any write-back a killed run made after it. The store keeps the two
    newest snapshots, so a kill between the snapshot and the checkpoint file still finds the
    previous one. An expert's record (:func:`expert_spec`) holds its parameters, their optimizer
    state (``train/expert_optimizer.py``: RMSprop's square averages, or Adam's moments and the
    expert's step count) and the core's sensitivities. The learner's
    per-stream carry (cell, sensitivities, lazy vectors) is not saved: a resumed run restarts every
    episode, which zeroes it anyway.

Figures (per logging window, from the store's counters; ``storage/stats.py`` defines them):
    ``cache/hit_rate/hbm``, ``cache/hit_rate/dram``, ``cache/prefetch/{precision,coverage,timeliness}``
    (only once there are prefetches), ``cache/stall_ms_per_step`` (per learner update),
    ``cache/bytes/<link>``, and from the router's usage counts ``experts/nmi_game_expert`` and
    ``experts/utilization_entropy`` (``train/expert_metrics.py``). Every evaluation logs the same
    ``cache/*`` figures of its own traffic under ``eval/cache/*`` (stall per env step), plus
    ``eval/detector/accuracy`` where there is a detector; they are left out of the training windows.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.cores.moe_elstm import SENSITIVITIES, MoEELSTMCore
from agent.detector import GameDetector
from agent.model import ActorCritic
from agent.prefetch import CohortPrefetcher
from envs.registry import game_id
from storage.expert_store import ExpertStore
from storage.manifest import MANIFEST
from storage.run_dir import RunDir
from storage.slab import RecordSpec, TensorSpec
from storage.stats import LINKS, StoreCounters
from train.config import RunConfig
from train import tags
from train.detection import DetectorDriver, EvalDetection, UsageCohorts
from train.distributed import World
from train.expert_optimizer import ExpertRule, expert_rule
from train.expert_metrics import nmi_game_expert, utilization_entropy
from train.learner import Learner
from train.schedule import game_index


@dataclass
class ExpertRun:
    """A run's MoE extras: the store, the game detector (None without 84 x 84 frames) and the cohort
    prefetcher (None when unused)."""

    store: ExpertStore | None = None
    detector: GameDetector | None = None
    prefetcher: CohortPrefetcher | None = None
    prefetch: str = "lru"

    def driver(self, cfg: RunConfig, game: str, num_streams: int) -> DetectorDriver | None:
        """The detector driver of a stage training ``game`` (None without a detector, unless the
        oracle's prefetcher needs one to pin the stage's cohort)."""
        if self.detector is None and not (self.prefetch == "oracle" and self.prefetcher is not None):
            return None
        return DetectorDriver(self.detector, num_streams, game_index(cfg, game), self.prefetch, self.prefetcher)

    def eval_cache(self, cfg: RunConfig, model: ActorCritic) -> "EvalCache | None":
        """The expert traffic of one evaluation (None without a store)."""
        return None if self.store is None else EvalCache(self, cfg, model)

    def state_dict(self) -> dict | None:
        return None if self.detector is None else self.detector.state_dict()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def start_experts(cfg: RunConfig, model: ActorCritic, learner: Learner, rd: RunDir, device: torch.device,
                  state: dict | None) -> ExpertRun:
    """The store (new, or reopened at ``state``'s snapshot), the detector (restored from ``state``;
    None where the games have no 84 x 84 frames for it to read, e.g. the T-maze) and, for
    ``--prefetch detector|oracle``, the prefetcher; an empty ExpertRun for other cores."""
    core = moe_core(model)
    if core is None:
        return ExpertRun()
    store = open_store(cfg, model, learner, rd, device, None if state is None else state.get("expert_snapshot"))
    detector = None
    if cfg.has_frames():
        detector = GameDetector(len(dict.fromkeys(cfg.env.games)), device=device, seed=cfg.seed)
    if detector is not None and state is not None and state.get("detector") is not None:
        detector.load_state_dict(state["detector"])
    prefetcher = None
    if cfg.store.prefetch in ("detector", "oracle"):
        prefetcher = CohortPrefetcher(store, UsageCohorts(core, pin_reserve(cfg), usage_rows(cfg, core)))
    return ExpertRun(store, detector, prefetcher, cfg.store.prefetch)


def usage_rows(cfg: RunConfig, core: MoEELSTMCore) -> list[int]:
    """The ``core.usage`` row of each of the schedule's distinct games, in the order of first
    appearance (the detector's and the prefetcher's classes). The core counts by game id, so games
    that share one (``tmaze-10`` and ``tmaze-20``: one id per number of exits) share a row."""
    return [int(core.router.game_slot[game_id(g)]) for g in dict.fromkeys(cfg.env.games)]


def usage_labels(cfg: RunConfig, core: MoEELSTMCore) -> list[str]:
    """A label for each row of ``core.usage``: its games, joined by ``/`` where they share it."""
    labels: list[list[str]] = [[] for _ in range(core.usage.shape[0])]
    for g, row in zip(dict.fromkeys(cfg.env.games), usage_rows(cfg, core)):
        labels[row].append(g)
    return ["/".join(names) for names in labels]


def moe_core(model: ActorCritic) -> MoEELSTMCore | None:
    core = model.core
    return core if isinstance(core, MoEELSTMCore) else None


def open_store(cfg: RunConfig, model: ActorCritic, learner: Learner, rd: RunDir, device: torch.device,
               snapshot: str | None) -> ExpertStore | None:
    """Create (``snapshot`` None: a new run) or reopen at ``snapshot`` the run's expert store and
    attach it to the learner's core; None for cores without experts."""
    core = moe_core(model)
    if core is None:
        return None
    st = cfg.store
    directory = expert_dir(rd, learner.world)
    if snapshot is None:
        if (directory / MANIFEST).exists():  # a killed attempt that never checkpointed: start over
            shutil.rmtree(directory)
        streams = learner.world.local_envs(cfg.env.num_envs)
        store = create_store(core, directory, streams, st.hbm_experts, st.dram_experts, device,
                             expert_rule(cfg.learner), **io_settings(cfg))
    else:
        store = ExpertStore.open(directory, st.hbm_experts, st.dram_experts, device, snapshot=snapshot,
                                 **io_settings(cfg))
        if store.recovered is not None:
            print(f"warning: {store.recovered}", file=sys.stderr, flush=True)
    core.attach_store(store, pin_reserve(cfg))
    return store


def io_settings(cfg: RunConfig) -> dict:
    """The store's I/O keyword arguments from ``cfg.store``."""
    return {"io_threads": cfg.store.io_threads, "read_path": cfg.store.read_path, "io_depth": cfg.store.io_depth}


def pin_reserve(cfg: RunConfig) -> int:
    """The hbm slots the cohort prefetcher (``--prefetch detector|oracle``) may pin at any moment: its
    largest cohort; 0 without one."""
    return cfg.store.hbm_experts - cfg.model.top_k if cfg.store.prefetch in ("detector", "oracle") else 0


def expert_spec(hidden_size: int, input_size: int, batch_size: int, rule: ExpertRule,
                dtype: torch.dtype = torch.float32) -> RecordSpec:
    """The store record of one expert: parameters ``F``, ``Z`` [N, D] and the optimizer state of
    ``rule`` (RMSprop: ``sq_F``, ``sq_Z`` [N, D]; Adam: also ``m_F``, ``m_Z`` [N, D] and ``step`` []),
    durable; the core's sensitivities ``S_F``, ``S_Z`` [B, N, D] of B streams, scratch (every stream
    starts a fresh episode on resume, which zeroes them)."""
    N, D, B = hidden_size, input_size, batch_size
    spec = {k: TensorSpec((N, D), dtype) for k in ("F", "Z")}
    spec.update({k: TensorSpec(tuple(t.shape), t.dtype) for k, t in rule.state((N, D), dtype).items()})
    spec.update({k: TensorSpec((B, N, D), dtype, scratch=True) for k in SENSITIVITIES.values()})
    return spec


def create_store(core: MoEELSTMCore, directory: Path, batch_size: int, hbm: int, dram: int,
                 device: torch.device | str, rule: ExpertRule, **kwargs) -> ExpertStore:
    """A new store in ``directory`` holding every expert of ``core``: the replica's parameters,
    ``rule``'s initial optimizer state (RMSprop: square averages of 0 as torch's or 1 as
    TensorFlow's; Adam: zero moments and step counts) and (the store's scratch kinds start at zero)
    zero sensitivities for ``batch_size`` streams; ``kwargs`` go to ``ExpertStore.create``."""
    N, D, dtype = core.output_size, core.input_size, core.expert_F.dtype
    state = rule.state((N, D), dtype)
    init = lambda e: {"F": core.expert_F[e].cpu(), "Z": core.expert_Z[e].cpu(), **state}  # noqa: E731
    return ExpertStore.create(directory, expert_spec(N, D, batch_size, rule, dtype), core.num_experts, hbm, dram,
                              device, init=init, **kwargs)


def expert_dir(rd: RunDir, world: World) -> Path:
    """This rank's store: ``<run_dir>/experts`` alone, ``<run_dir>/experts/rank<r>`` in a world of several."""
    return rd.experts if world.size == 1 else rd.experts / f"rank{world.rank}"


def checkpoint_store(model: ActorCritic, learner: Learner, cfg: RunConfig, tag: str) -> str | None:
    """Apply pending expert gradients and commit the store as snapshot ``tag`` (before the model is saved)."""
    core = moe_core(model)
    if core is None:
        return None
    learner.expert_optimizer.flush(learner.carry, learner.scheduler.get_last_lr()[0], cfg.learner.grad_norm_clip)
    core.store.checkpoint(tag)
    return tag


def store_counts(store: ExpertStore) -> dict[str, float]:
    """The store's cumulative counters (``storage/stats.py``)."""
    stats = store.stats()
    return {f.name: stats[f.name] for f in dataclasses.fields(StoreCounters)}


def cache_scalars(d: dict[str, float], steps: int, prefix: str = "") -> dict[str, float]:
    """``<prefix>cache/*`` scalars from counter differences ``d`` over ``steps`` steps (learner updates
    in training, env steps in evaluation); rates without a denominator are left out."""
    demand_loads = d["dram_hits"] + d["dram_misses"]
    out = {
        tags.CACHE_HIT_HBM: _ratio(d["hbm_hits"], d["hbm_hits"] + d["hbm_misses"]),
        tags.CACHE_HIT_DRAM: _ratio(d["dram_hits"], demand_loads),
        tags.CACHE_STALL: 1000.0 * d["stall_s"] / max(steps, 1),
        **{tags.cache_bytes(link): float(d[f"bytes_{link}"]) for link in LINKS},
    }
    if d["prefetch_issued"]:
        out[tags.CACHE_PRECISION] = d["prefetch_used"] / d["prefetch_issued"]
        out[tags.CACHE_COVERAGE] = _ratio(d["prefetch_used"], d["prefetch_used"] + demand_loads)
        out[tags.CACHE_TIMELINESS] = _ratio(d["prefetch_used"] - d["prefetch_late"], d["prefetch_used"])
    return {prefix + k: v for k, v in out.items() if math.isfinite(v)}


class CacheWindow:
    """The store's counters since the previous :meth:`take` (one logging window of one rank)."""

    def __init__(self, model: ActorCritic) -> None:
        self.core = moe_core(model)
        self.last = {} if self.core is None else store_counts(self.core.store)

    def exclude(self, counts: dict[str, float]) -> None:
        """Leave counter differences ``counts`` (an evaluation's) out of the current window."""
        for k, v in counts.items():
            self.last[k] += v

    def take(self) -> dict[str, float]:
        """The counter differences since the previous call (empty without a store)."""
        if self.core is None:
            return {}
        now = store_counts(self.core.store)
        d = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return d

    def scalars(self, d: dict[str, float], updates: int) -> dict[str, float]:
        """``cache/*`` for counter differences ``d`` over ``updates`` learner updates (summed over the
        ranks by the caller in a distributed run) and ``experts/*`` from the routing counts (the same
        on every rank)."""
        usage = self.core.usage.cpu().numpy()
        return {**cache_scalars(d, updates), tags.EXPERTS_NMI: nmi_game_expert(usage),
                tags.EXPERTS_ENTROPY: utilization_entropy(usage)}


class EvalCache:
    """An evaluation's expert traffic (``train/detection.py``'s :class:`EvalDetection`) and its
    ``eval/cache/*`` and ``eval/detector/accuracy`` figures."""

    def __init__(self, xr: ExpertRun, cfg: RunConfig, model: ActorCritic) -> None:
        core = moe_core(model)
        self.store = core.store
        self.before = store_counts(self.store)
        self.detection = EvalDetection(xr.detector, list(dict.fromkeys(cfg.env.games)), xr.prefetch,
                                       xr.prefetcher, core, evict_after_use=xr.prefetch == "none")
        self.on_step = self.detection.on_step
        self.counts: dict[str, float] = {}

    def close(self) -> dict[str, float]:
        """The evaluation's scalars, once the prefetcher is back on the training game (that reload
        counts as the evaluation's traffic). :attr:`counts` then holds the evaluation's counter
        differences (for :meth:`CacheWindow.exclude`)."""
        detector = self.detection.close()
        self.store.wait_idle()
        now = store_counts(self.store)
        self.counts = {k: now[k] - self.before[k] for k in now}
        return {**cache_scalars(self.counts, self.detection.steps, prefix=tags.EVAL_PREFIX), **detector}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
