"""Sequential multi-game training: one stage per game, each ending in a checkpoint and an evaluation.

Before the first stage the initial parameters are saved as ``checkpoints/stage_000.pt`` and every
game of the schedule is evaluated (the matrix's ``before`` row). Stage i (1-based) trains
``games[i - 1]`` for ``frames_per_game`` frames (actor thread + learner, see ``train/actor.py`` and
``train/learner.py``), evaluating every game every ``eval.every`` frames if that is set, then:
  1. saves the stage checkpoint ``checkpoints/stage_<i>.pt`` (kept for ``run.py eval``),
  2. evaluates every game of the schedule (seen and not yet seen), appends the point to the
     evaluation history and rewrites ``eval/forgetting.json|.csv|.png`` and ``eval/curves.csv|.png``,
  3. saves a checkpoint that marks the stage evaluated.
So ``stage_<i>.pt`` holds the parameters of row i of the forgetting matrix.
Periodic checkpoints every ``checkpoint_every`` frames make a killed run resumable mid-stage:
``--resume`` restores model, optimizer, LR schedule, RNG states, counters and the evaluation
history, rewrites the evaluation files from that history, and TensorBoard continues at the
checkpoint's frame count. An evaluation a killed attempt took after its checkpoint is dropped
(from the files by the rewrite, from TensorBoard by its purge step) and taken again at the same
frame count, so the history is neither lost nor duplicated. The env streams restart their episodes
on resume (emulator states are not saved), with a seed that depends on the frame count so a
resumed stage does not replay the episodes it started with.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.model import ActorCritic
from envs.atari import FRAME_SKIP, NUM_ACTIONS
from envs.registry import make_env
from eval import curves
from eval.curves import BEFORE, PERIODIC, STAGE, eval_columns, eval_point, matrix_returns
from eval.evaluate import evaluate_games, record_returns
from eval.forgetting import PNG_NAME, mean_or_none
from storage.checkpoint import CheckpointManager
from train import logger as tags
from train.actor import Actor, ParamChannel, Rollout, next_rollout
from train.config import RunConfig, resolve_device
from train.errors import UserError
from train.expert_metrics import usage_png
from train.experts import CacheWindow, ExpertRun, checkpoint_store, moe_core, start_experts
from train.learner import Learner
from train.logger import Logger
from train.run_dir import RunDir


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    stage: int = 0
    """Index of the stage being trained (== number of games when the run is complete)."""
    stage_frames: int = 0
    """Frames trained in the current stage."""
    total_frames: int = 0
    """Frames trained in the whole run (the TensorBoard step)."""
    evaluations: list[dict] = field(default_factory=list)
    """Every evaluation so far, in order: points ``{"frames", "stage", "kind", "returns"}`` (``eval/curves.py``)."""


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, allow_config_change: bool = False,
          show_progress: bool = True) -> Progress:
    """Train the schedule of ``cfg`` in ``run_dir`` (new, or resumed from its latest checkpoint)."""
    cfg.validate()
    cfg.eval.validate()
    device = resolve_device(cfg.device)
    rd = RunDir(Path(run_dir))
    rd.start(cfg, resume, allow_config_change)
    _seed_everything(cfg.seed)

    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games).to(device)
    learner = Learner(model, cfg, device)
    ckpts = CheckpointManager(rd.root)
    progress = Progress()
    # RNG states must stay on the CPU; load_state_dict moves model and optimizer tensors to the device.
    state = ckpts.load_latest(map_location="cpu") if resume else None
    if state is not None:
        progress = _restore(state, model, learner)
        print(f"resuming from {ckpts.latest_path()} at frame {progress.total_frames:,} "
              f"(stage {progress.stage + 1}/{len(cfg.env.games)})", flush=True)
        if progress.evaluations:  # drop what a killed attempt evaluated after its checkpoint
            _write_eval_files(cfg, progress, rd)
    xr = start_experts(cfg, model, learner, rd, device, state)
    # Drop what a killed attempt logged after its checkpoint (steps > F); a restart without a
    # checkpoint drops everything. Steps <= F were logged before the checkpoint was saved.
    logger = Logger(rd.tb, purge_step=progress.total_frames + 1 if state is not None else 0)
    try:
        if not progress.evaluations:
            # The initial parameters: `run.py eval` recomputes the before row from this checkpoint.
            _save(ckpts, cfg, model, learner, xr, progress, "stage_000", keep=True)
            _evaluate(cfg, model, progress, rd, logger, device, BEFORE, xr)
            _save(ckpts, cfg, model, learner, xr, progress, f"frames_{progress.total_frames:012d}")
        while progress.stage < len(cfg.env.games):
            if progress.stage_frames < cfg.schedule.frames_per_game:
                _train_stage(cfg, model, learner, xr, progress, ckpts, rd, logger, device, show_progress)
            # A run killed during the evaluation resumes from this checkpoint and redoes it; the
            # point is in no checkpoint until the one below, so it is recorded once.
            _save(ckpts, cfg, model, learner, xr, progress, f"stage_{progress.stage + 1:03d}", keep=True)
            _evaluate(cfg, model, progress, rd, logger, device, STAGE, xr)
            progress.stage += 1
            progress.stage_frames = 0
            _save(ckpts, cfg, model, learner, xr, progress, f"frames_{progress.total_frames:012d}")
            _log_expert_usage(cfg, model, logger, progress)
    finally:
        logger.close()
        xr.close()
    print(f"done: {progress.total_frames:,} frames. TensorBoard: tensorboard --logdir {rd.tb}  "
          f"forgetting table: {rd.eval / 'forgetting.csv'}", flush=True)
    return progress


def _train_stage(cfg: RunConfig, model: ActorCritic, learner: Learner, xr: ExpertRun, progress: Progress,
                 ckpts: CheckpointManager, rd: RunDir, logger: Logger, device: torch.device,
                 show_progress: bool) -> None:
    """Train the current stage to its end: one segment, or with ``--switch-every`` one per game visit."""
    bar = tqdm(total=cfg.schedule.frames_per_game, initial=progress.stage_frames, unit="frame", unit_scale=True,
               desc=f"stage {progress.stage + 1}/{len(cfg.env.games)}", disable=not show_progress,
               dynamic_ncols=True)
    try:
        while progress.stage_frames < cfg.schedule.frames_per_game:
            _train_segment(cfg, model, learner, xr, progress, ckpts, rd, logger, device, bar)
    finally:
        bar.close()


def _train_segment(cfg: RunConfig, model: ActorCritic, learner: Learner, xr: ExpertRun, progress: Progress,
                   ckpts: CheckpointManager, rd: RunDir, logger: Logger, device: torch.device, bar: tqdm) -> None:
    """Train one game (``cfg.game_at``) until the stage ends or ``--switch-every`` moves to the next game."""
    game = cfg.game_at(progress.stage, progress.total_frames)
    ec = cfg.env
    env = make_env(game, ec.num_envs, seed=cfg.env_seed(progress.total_frames), backend=ec.backend,
                   sticky_action_prob=ec.sticky_action_prob, max_episode_steps=ec.max_episode_steps,
                   num_threads=ec.num_threads)
    rollouts: queue.Queue = queue.Queue(maxsize=1)
    params = ParamChannel()
    driver = xr.driver(cfg, game, ec.num_envs)
    actor = Actor(env, copy.deepcopy(model), cfg.learner.rollout_length, ec.reward_clip, rollouts, params,
                  device, initial_version=learner.version, seed=cfg.env_seed(progress.total_frames),
                  on_frames=None if driver is None else driver.on_frames)
    frames_per_update = cfg.frames_per_update()
    window = _Window()
    cache = CacheWindow(model)
    recent: list[float] = []
    bar.set_description(f"stage {progress.stage + 1}/{len(cfg.env.games)} {game}")
    actor.start()
    try:
        while True:
            t0 = time.perf_counter()
            rollout = next_rollout(rollouts, actor)
            wait = time.perf_counter() - t0
            stats = learner.update(rollout)
            stage_end = progress.stage_frames + frames_per_update >= cfg.schedule.frames_per_game
            switch = bool(cfg.schedule.switch_every) and _crossed(
                progress.total_frames + frames_per_update, frames_per_update, cfg.schedule.switch_every)
            last = stage_end or switch
            if not last:
                params.publish(learner.version, model, actor.stop_event)
            progress.stage_frames += frames_per_update
            progress.total_frames += frames_per_update
            for ret, length in rollout.episodes:
                logger.scalars({tags.episodic_return(game): ret, tags.episode_length(game): length},
                               progress.total_frames)
                recent = (recent + [ret])[-20:]
            window.add(rollout, stats, wait, frames_per_update // FRAME_SKIP)
            if window.elapsed() >= cfg.schedule.log_every or last:
                detector = {} if driver is None else driver.stats()
                logger.scalars({**window.summary(progress), **cache.summary(window.n), **detector}, progress.total_frames)
                bar.set_postfix(SPS=f"{window.sps():.0f}", ret=f"{np.mean(recent):.1f}" if recent else "-",
                                refresh=False)
                window = _Window()
            bar.update(frames_per_update)
            if stage_end:  # the stage's end is evaluated (and checkpointed) by the caller
                break
            # The periodic evaluation comes before the checkpoint of the same update, so that
            # checkpoint holds its point.
            if cfg.eval.every and _crossed(progress.total_frames, frames_per_update, cfg.eval.every):
                t_eval = time.perf_counter()
                _evaluate(cfg, model, progress, rd, logger, device, PERIODIC, xr, cache)
                window.start += time.perf_counter() - t_eval  # keep evaluation time out of SPS
            if _crossed(progress.total_frames, frames_per_update, cfg.schedule.checkpoint_every):
                _save(ckpts, cfg, model, learner, xr, progress, f"frames_{progress.total_frames:012d}")
            if switch:
                break
    finally:
        actor.stop()
        actor.join(timeout=30)
        if actor.is_alive():
            raise RuntimeError("actor thread did not stop within 30 s")
        env.close()
    logger.flush()


def _log_expert_usage(cfg: RunConfig, model: ActorCritic, logger: Logger, progress: Progress) -> None:
    """The image ``experts/usage`` (game x expert routing shares) after a stage, for the MoE core."""
    core = moe_core(model)
    if core is not None:
        games = list(dict.fromkeys(cfg.env.games))
        logger.png(tags.EXPERT_USAGE_IMAGE, usage_png(core.usage.cpu().numpy(), games), progress.total_frames)
        logger.flush()


def _crossed(total_frames: int, step: int, every: int) -> bool:
    """Whether the last ``step`` frames, ending at ``total_frames``, crossed a multiple of ``every``."""
    return total_frames // every != (total_frames - step) // every


class _Window:
    """Sums over the updates since the last TensorBoard write."""

    def __init__(self):
        self.start = time.perf_counter()
        self.n = 0
        self.steps = 0
        self.sums: dict[str, float] = {}

    def add(self, rollout: Rollout, stats: dict[str, float], wait: float, agent_steps: int) -> None:
        self.n += 1
        self.steps += agent_steps
        for k, v in {**stats, tags.ENV_TIME: rollout.env_time, tags.ACT_TIME: rollout.act_time,
                     tags.QUEUE_WAIT_TIME: wait}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sps(self) -> float:
        return self.steps / max(self.elapsed(), 1e-9)

    def summary(self, progress: Progress) -> dict[str, float]:
        means = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        return {**means, tags.SPS: self.sps(), tags.FRAMES: progress.total_frames, tags.STAGE: progress.stage}


def _evaluate(cfg: RunConfig, model: ActorCritic, progress: Progress, rd: RunDir, logger: Logger,
              device: torch.device, kind: str, xr: ExpertRun, window: CacheWindow | None = None) -> None:
    """Evaluate every game of the schedule, append the point, rewrite the evaluation files and log.

    ``kind`` is ``before`` (initial parameters), ``periodic`` or ``stage`` (the end of the stage
    being trained). TensorBoard gets, at the current frame count, ``eval/return/<game>`` and
    ``eval/hns/<game>`` for every game and ``eval/avg_hns`` (their mean, the average performance);
    before and after a stage also ``eval/forgetting`` (the mean forgetting of the matrix so far,
    when defined) and the images ``eval/forgetting_matrix`` and ``eval/curves``. A MoE run also logs
    the evaluation's expert traffic (``eval/cache/*``, ``eval/detector/accuracy``; ``train/experts.py``),
    which is left out of the training cache ``window`` it interrupts.
    """
    columns = eval_columns(cfg.env.games)
    stage = 0 if kind == BEFORE else progress.stage + 1
    where = "before training" if kind == BEFORE else f"{kind} evaluation, stage {stage}, frame {progress.total_frames:,}"
    _say(f"{where}: evaluating {', '.join(columns)} ({cfg.eval.episodes} episodes each) ...")
    traffic = xr.eval_cache(cfg, model)
    try:
        results = evaluate_games(model, columns, cfg.env, cfg.eval, device,
                                 None if traffic is None else traffic.on_step)
    finally:
        cache_scalars = {} if traffic is None else traffic.close()
    if window is not None and traffic is not None:
        window.exclude(traffic.counts)
    progress.evaluations.append(eval_point(progress.total_frames, stage, kind, [results[g][0] for g in columns]))
    doc = _write_eval_files(cfg, progress, rd)
    scalars = dict(cache_scalars)
    for game, (ret, hns) in results.items():
        scalars[tags.eval_return(game)] = ret
        scalars[tags.eval_hns(game)] = hns
    avg = mean_or_none(np.array([hns for _, hns in results.values()]))
    if avg is not None:
        scalars[tags.EVAL_AVG_HNS] = avg
    if kind != PERIODIC and doc["metrics"]["mean_forgetting"] is not None:
        scalars[tags.EVAL_FORGETTING] = doc["metrics"]["mean_forgetting"]
    logger.scalars(scalars, progress.total_frames)
    if kind != PERIODIC:
        logger.png(tags.EVAL_MATRIX_IMAGE, (rd.eval / PNG_NAME).read_bytes(), progress.total_frames)
        logger.png(tags.EVAL_CURVES_IMAGE, (rd.eval / curves.PNG_NAME).read_bytes(), progress.total_frames)
    logger.flush()
    _say("  " + "  ".join(f"{g}: {r:.1f} (hns {h:.3f})" for g, (r, h) in results.items()))


def _say(line: str) -> None:
    """Print a line without breaking a progress bar, flushed so that logs show it at once."""
    tqdm.write(line)
    sys.stdout.flush()


def _write_eval_files(cfg: RunConfig, progress: Progress, rd: RunDir) -> dict:
    """Rewrite ``eval/forgetting.*`` and ``eval/curves.*`` from the history; returns the forgetting document."""
    columns = eval_columns(cfg.env.games)
    returns = matrix_returns(progress.evaluations, len(columns))
    doc = record_returns(rd.eval, columns, cfg.env.games[:returns.shape[0] - 1], returns)
    curves.write_curves(rd.eval, columns, cfg.env.games, progress.evaluations)
    return doc


def _save(ckpts: CheckpointManager, cfg: RunConfig, model: ActorCritic, learner: Learner, xr: ExpertRun,
          progress: Progress, name: str, keep: bool = False) -> None:
    """Checkpoint ``name``: the expert store's snapshot of the same name first (``train/experts.py``)."""
    snapshot = checkpoint_store(model, learner, cfg, name)
    ckpts.save({**_checkpoint(cfg, model, learner, progress), "expert_snapshot": snapshot,
                "detector": xr.state_dict()}, name, keep=keep)


def _checkpoint(cfg: RunConfig, model: ActorCritic, learner: Learner, progress: Progress) -> dict:
    return {
        "config": cfg.to_dict(),
        "progress": dataclasses.asdict(progress),
        "model": model.state_dict(),
        "learner": learner.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def _restore(state: dict, model: ActorCritic, learner: Learner) -> Progress:
    if "eval_returns" in state["progress"]:
        raise UserError("the checkpoint was written by an older version (no before-training evaluation "
                        "history); start a new run dir")
    model.load_state_dict(state["model"])
    learner.load_state_dict(state["learner"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Progress(**state["progress"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
