"""The training main loop: one stage per game, each ending in a checkpoint and an evaluation.

Before the first stage the initial parameters are saved as ``checkpoints/stage_000.pt`` and every
game of the schedule is evaluated (the matrix's ``before`` row). Stage i (1-based) trains
``games[i - 1]`` for ``frames_per_game`` frames (actor thread + learner, see ``train/actor.py`` and
``train/learner.py``), evaluating every game every ``eval.every`` frames if that is set, then:
  1. saves the stage checkpoint ``checkpoints/stage_<i>.pt`` (kept for ``run.py eval``),
  2. evaluates every game of the schedule (seen and not yet seen), appends the point to the
     evaluation history and rewrites ``eval/forgetting.json|.csv|.png`` and ``eval/curves.csv|.png``,
  3. saves a checkpoint that marks the stage evaluated.
So ``stage_<i>.pt`` holds the parameters of row i of the forgetting matrix.
The run's wall time is counted in ``Progress.train_seconds`` (the training segments) and
``Progress.eval_seconds`` (the evaluations), saved in every checkpoint and so summed over resumes;
start-up, stage-end checkpoints and writing the evaluation files are in neither. Each evaluation
point records their sum before it (``wall_s``), and ``forgetting.json`` both (``wall_seconds``).
Periodic checkpoints every ``checkpoint_every`` frames make a killed run resumable mid-stage:
``--resume`` restores model, optimizer, LR schedule, RNG states, counters and the evaluation
history, rewrites the evaluation files from that history, and TensorBoard continues at the
checkpoint's frame count. An evaluation a killed attempt took after its checkpoint is dropped
(from the files by the rewrite, from TensorBoard by its purge step, ``train/logger.py``) and taken
again at the same frame count, so the history is neither lost nor duplicated; that includes the
evaluation at a checkpoint's own frame count that ``stage_000`` and ``stage_<i>`` precede. The env
streams restart their episodes on resume (emulator states are not saved), with a seed that depends
on the frame count so a resumed stage does not replay the episodes it started with.

Under torchrun (``train/distributed.py``) every rank runs this same loop on its share of the env
streams, in lockstep (the schedule is global: all ranks train the same game at the same frame
count). Rank 0 alone writes checkpoints, TensorBoard, the evaluation and the console; every rank
commits its own expert store's snapshot at each checkpoint, and a resumed run broadcasts rank 0's
checkpoint to every rank.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.model import ActorCritic
from common.device import resolve_device
from common.errors import UserError
from envs.atari import NUM_ACTIONS
from envs.registry import make_env
from eval import curves
from eval.curves import BEFORE, PERIODIC, STAGE, eval_columns, eval_point, matrix_episodes, matrix_returns
from eval.evaluate import evaluate_games, record_returns
from eval.forgetting import PNG_NAME, mean_or_none
from storage.checkpoint import CheckpointManager
from storage.run_dir import RunDir
from train import tags
from train import run_dir as run_dirs
from train.actor import Rollout, Sampler
from train.checkpointing import Progress, checkpoint_state, replica, restore, seed_everything
from train.config import RunConfig
from train.distributed import World, replica_checksum
from train.expert_metrics import usage_png
from train.experts import (CacheWindow, ExpertRun, cache_scalars, checkpoint_store, moe_core, start_experts,
                           usage_labels)
from train.learner import Learner
from train.logger import Logger
from train.schedule import crossed, evaluation_due, game_at, game_index
from train.screen_use import screen_kl


@dataclass
class _Run:
    """What every stage of one run works with."""

    cfg: RunConfig
    model: ActorCritic
    learner: Learner
    xr: ExpertRun
    ckpts: CheckpointManager
    rd: RunDir
    logger: Logger
    device: torch.device
    world: World
    show_progress: bool
    screen_rng: torch.Generator
    """Draws the frame shuffles of ``policy/screen_kl`` (apart from the learner's RNG, which checkpoints keep)."""


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, allow_config_change: bool = False,
          show_progress: bool = True, world: World | None = None) -> Progress:
    """Train the schedule of ``cfg`` in ``run_dir`` (new, or resumed from its latest checkpoint), as
    one rank of ``world`` (None: this process alone)."""
    world = world or World()
    world.check_config(cfg.to_json())  # before validating: different flags on different ranks say so
    try:
        cfg.validate()
        cfg.eval.validate()
        device = world.device(resolve_device(cfg.device))
    except UserError as e:  # the same config, so the same error on every rank: said once
        world.fail(str(e))
    _check_world(cfg, world, device)
    world.limit_threads()
    if world.main:
        print(f"run dir: {run_dir}" + (f" ({world.size} ranks)" if world.size > 1 else ""), flush=True)
    rd = RunDir(Path(run_dir))
    world.on_rank0(lambda: run_dirs.start(rd, cfg, resume, allow_config_change))
    seed_everything(cfg.seed)

    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set,
                        world.collectives(cfg.model.num_experts)).to(device)
    learner = Learner(model, cfg, device, world)
    ckpts = CheckpointManager(rd.root)
    progress = Progress()
    # RNG states must stay on the CPU; load_state_dict moves model and optimizer tensors to the device.
    point = world.on_rank0(lambda: ckpts.load_resume(map_location="cpu") if resume else None)
    state = None if point is None else point.state
    if resume and world.size > 1:
        state = world.broadcast(state)
    if state is not None:
        if state.get("world_size", 1) != world.size:
            world.fail(f"this run was trained by {state.get('world_size', 1)} rank(s); resume it with the same "
                         f"world size, not {world.size}")
        progress = restore(state, model, learner)
        if world.main:
            if point.warning is not None:
                print(f"warning: {point.warning}", file=sys.stderr, flush=True)
            print(f"resuming from {point.path} at frame {progress.total_frames:,} "
                  f"(stage {progress.stage + 1}/{len(cfg.env.games)})", flush=True)
            if progress.evaluations:  # drop what a killed attempt evaluated after its checkpoint
                _write_eval_files(cfg, progress, rd)
    xr = start_experts(cfg, model, learner, rd, device, state)
    # Drop what a killed attempt logged after its checkpoint (steps > F); a restart without a
    # checkpoint drops everything. Steps <= F were logged (and flushed) before the checkpoint was
    # saved, except when an evaluation at F follows the checkpoint (stage_000, a stage end): the
    # killed attempt may have logged it, so step F is dropped too and its training scalars replayed.
    due = state is not None and _evaluation_due(cfg, progress)
    purge = 0 if state is None else progress.total_frames + (0 if due else 1)
    logger = Logger(rd.tb, purge_step=purge, enabled=world.main)
    if purge == 0 and moe_core(model) is not None:
        # The cache dashboard (TensorBoard's Custom Scalars tab) is a summary at step 0: a resume's
        # purge step > 0 keeps the one written at the start, a purge at 0 drops it. So: once per run.
        logger.custom_scalars(tags.cache_dashboard(detector=xr.detector is not None))
    if due:
        logger.replay(state.get("tb_tail"), progress.total_frames)
    run = _Run(cfg, model, learner, xr, ckpts, rd, logger, device, world, show_progress and world.main,
               torch.Generator().manual_seed(cfg.seed))
    try:
        if not progress.evaluations:
            # The initial parameters: `run.py eval` recomputes the before row from this checkpoint.
            _save(run, progress, "stage_000", keep=True)
            _evaluate(run, progress, BEFORE)
            _save(run, progress, f"frames_{progress.total_frames:012d}")
        while progress.stage < len(cfg.env.games):
            if progress.stage_frames < cfg.schedule.frames_per_game:
                _train_stage(run, progress)
            # A run killed during the evaluation resumes from this checkpoint and redoes it; the
            # point is in no checkpoint until the one below, so it is recorded once.
            _save(run, progress, f"stage_{progress.stage + 1:03d}", keep=True)
            _evaluate(run, progress, STAGE)
            progress.stage += 1
            progress.stage_frames = 0
            _log_expert_usage(run, progress)  # before the checkpoint that ends the stage, so it is logged once
            _save(run, progress, f"frames_{progress.total_frames:012d}")
    finally:
        logger.close()
        xr.close()
    if world.main:
        print(f"done: {progress.total_frames:,} frames. TensorBoard: tensorboard --logdir {rd.tb}  "
              f"forgetting table: {rd.eval / 'forgetting.csv'}", flush=True)
    return progress


def _evaluation_due(cfg: RunConfig, progress: Progress) -> bool:
    """Whether a checkpoint with ``progress`` comes before an evaluation at its own frame count: the
    initial one (``stage_000``, no evaluation yet) or a stage end's ``stage_<i>`` (trained, not evaluated)."""
    return not progress.evaluations or (progress.stage < len(cfg.env.games)
                                        and progress.stage_frames >= cfg.schedule.frames_per_game)


def _check_world(cfg: RunConfig, world: World, device: torch.device) -> None:
    """Settings a multi-rank run cannot take (said once, by rank 0)."""
    world.local_envs(cfg.env.num_envs)
    if world.size > 1 and cfg.model.core == "moe" and cfg.model.rtrl_form == "step":
        world.fail("--rtrl-form step is the single-process reference: a distributed MoE run uses the segment form")
    if world.comm_device.type != device.type:
        world.fail(f"the ranks talk over {'NCCL' if world.comm_device.type == 'cuda' else 'gloo'} but the run "
                   f"computes on {device.type}: give --device {device.type} on the command line")


def _train_stage(run: _Run, progress: Progress) -> None:
    """Train the current stage to its end: one segment, or with ``--switch-every`` one per game visit."""
    cfg = run.cfg
    bar = tqdm(total=cfg.schedule.frames_per_game, initial=progress.stage_frames, unit="frame", unit_scale=True,
               desc=f"stage {progress.stage + 1}/{len(cfg.env.games)}", disable=not run.show_progress,
               dynamic_ncols=True)
    try:
        while progress.stage_frames < cfg.schedule.frames_per_game:
            _train_segment(run, progress, bar)
    finally:
        bar.close()


def _train_segment(run: _Run, progress: Progress, bar: tqdm) -> None:
    """Train one game (``train.schedule.game_at``) until the stage ends or ``--switch-every`` moves to the next game.

    This rank steps its own streams, ``first_stream`` onwards of the world's ``num_envs``: their
    env seeds and action samplers follow from their index among all ranks' streams. The segment's
    wall time, from here to its envs' close less its periodic evaluations (periodic checkpoints
    included), goes to ``progress.train_seconds``, brought up to date before each evaluation and
    checkpoint so that they hold it."""
    mark = time.perf_counter()
    cfg, world = run.cfg, run.world
    game = game_at(cfg, progress.stage, progress.total_frames)
    ec = cfg.env
    streams, first = world.local_envs(ec.num_envs), world.first_stream(ec.num_envs)
    seed = cfg.env_seed(progress.total_frames)
    env = make_env(game, streams, seed=seed + first, backend=ec.backend, sticky_action_prob=ec.sticky_action_prob,
                   max_episode_steps=ec.max_episode_steps, num_threads=world.env_threads(ec.num_threads))
    driver = run.xr.driver(cfg, game, streams)
    sampler = Sampler(env, run.model, cfg.learner.rollout_length, ec.reward_clip, run.device,
                      initial_version=run.learner.version, seed=seed,
                      on_frames=None if driver is None else driver.frame_hook, first_stream=first)
    frames_per_update = cfg.frames_per_update()
    window = _Window()
    cache = CacheWindow(run.model)
    recent: list[float] = []
    bar.set_description(f"stage {progress.stage + 1}/{len(cfg.env.games)} {game}")
    sampler.start()
    try:
        while True:
            rollout, wait = sampler.next()
            stats = run.learner.update(rollout)
            if world.main and cfg.schedule.screen_every and run.learner.version % cfg.schedule.screen_every == 0:
                stats[tags.SCREEN_KL] = screen_kl(run.model, rollout, ec.reward_clip, run.screen_rng)
            stage_end = progress.stage_frames + frames_per_update >= cfg.schedule.frames_per_game
            switch = bool(cfg.schedule.switch_every) and crossed(
                progress.total_frames + frames_per_update, frames_per_update, cfg.schedule.switch_every)
            last = stage_end or switch
            if not last:
                sampler.publish(run.learner.version, run.model)
            progress.stage_frames += frames_per_update
            progress.total_frames += frames_per_update
            window.add(rollout, stats, wait, streams * cfg.learner.rollout_length, progress.total_frames)
            if world.any(window.elapsed() >= cfg.schedule.log_every or last):  # any rank's clock
                _log_window(run, progress, game, window, cache, driver, bar, recent)
                window = _Window()
            bar.update(frames_per_update)
            if stage_end:  # the stage's end is evaluated (and checkpointed) by the caller
                break
            # The periodic evaluation comes before the checkpoint of the same update, so that
            # checkpoint holds its point.
            if cfg.eval.every and evaluation_due(progress.total_frames, frames_per_update, cfg.eval.every,
                                                 cfg.schedule.frames_per_game - progress.stage_frames):
                t_eval = _count_training(progress, mark)
                _evaluate(run, progress, PERIODIC, cache)
                world.barrier()  # the other ranks wait for rank 0's evaluation here
                mark = time.perf_counter()  # the evaluation is not training time
                window.start += mark - t_eval  # keep evaluation time out of SPS
            if crossed(progress.total_frames, frames_per_update, cfg.schedule.checkpoint_every):
                mark = _count_training(progress, mark)  # the checkpoint holds the time trained so far
                _save(run, progress, f"frames_{progress.total_frames:012d}")
            if switch:
                break
    finally:
        try:
            sampler.close()
        finally:
            env.close()
    _count_training(progress, mark)
    run.logger.flush()


def _count_training(progress: Progress, mark: float) -> float:
    """Add the wall time since ``mark`` (a ``time.perf_counter()``) to ``progress.train_seconds``; -> now."""
    now = time.perf_counter()
    progress.train_seconds += now - mark
    return now


def _log_window(run: _Run, progress: Progress, game: str, window: "_Window", cache: CacheWindow,
                driver, bar: tqdm, recent: list[float]) -> None:
    """Gather every rank's window and write it (rank 0): rank 0's learner figures, ``charts/game``
    (the index of the game trained in the window: ``train.schedule.game_index``), ``charts/SPS`` and
    the ``cache/*`` figures of all ranks summed, each rank's own under ``rank<r>/`` (more than one
    rank), and every rank's finished episodes at the frame counts they ended at."""
    detector = {} if driver is None else driver.stats()
    mine = {"sps": window.sps(), "cache": cache.take(), "episodes": window.episodes}
    ranks = run.world.gather(mine)
    if not run.world.main:
        return
    scalars = {**window.summary(progress), tags.GAME: game_index(run.cfg, game), tags.SPS: sum(r["sps"] for r in ranks),
               **detector}
    if cache.core is not None:
        total = {k: sum(r["cache"][k] for r in ranks) for k in mine["cache"]}
        scalars.update(cache.scalars(total, window.n))
    if run.world.size > 1:
        for rank, r in enumerate(ranks):
            scalars[tags.per_rank(rank, tags.SPS)] = r["sps"]
            if cache.core is not None:
                scalars.update(cache_scalars(r["cache"], window.n, prefix=tags.per_rank(rank, "")))
    run.logger.scalars(scalars, progress.total_frames)
    for r in ranks:
        for frames, ret, length in r["episodes"]:
            run.logger.scalars({tags.episodic_return(game): ret, tags.episode_length(game): length}, frames)
            recent.append(ret)
    del recent[:-20]
    bar.set_postfix(SPS=f"{scalars[tags.SPS]:.0f}", ret=f"{np.mean(recent[-20:]):.1f}" if recent else "-",
                    refresh=False)


def _log_expert_usage(run: _Run, progress: Progress) -> None:
    """The image ``experts/usage`` (game x expert routing shares) after a stage, for the MoE core."""
    core = moe_core(run.model)
    if core is not None and run.world.main:
        labels = usage_labels(run.cfg, core)
        run.logger.png(tags.EXPERT_USAGE_IMAGE, usage_png(core.usage.cpu().numpy(), labels), progress.total_frames)
        run.logger.flush()


class _Window:
    """Sums over the updates since the last TensorBoard write (this rank's)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.n = 0
        self.steps = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        """Updates that reported each figure (some, like ``policy/screen_kl``, come now and then)."""
        self.episodes: list[tuple[int, float, int]] = []
        """Finished episodes: (total frames at the update that delivered them, return, length)."""

    def add(self, rollout: Rollout, stats: dict[str, float], wait: float, agent_steps: int, frames: int) -> None:
        self.n += 1
        self.steps += agent_steps
        self.episodes += [(frames, ret, length) for ret, length in rollout.episodes]
        for k, v in {**stats, tags.ENV_TIME: rollout.env_time, tags.ACT_TIME: rollout.act_time,
                     tags.QUEUE_WAIT_TIME: wait}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sps(self) -> float:
        return self.steps / max(self.elapsed(), 1e-9)

    def summary(self, progress: Progress) -> dict[str, float]:
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        return {**means, tags.FRAMES: progress.total_frames, tags.STAGE: progress.stage}


def _evaluate(run: _Run, progress: Progress, kind: str, window: CacheWindow | None = None) -> None:
    """Evaluate every game of the schedule, append the point, rewrite the evaluation files and log (rank 0).

    ``kind`` is ``before`` (initial parameters), ``periodic`` or ``stage`` (the end of the stage
    being trained). TensorBoard gets, at the current frame count, ``eval/return/<game>`` and
    ``eval/hns/<game>`` for every game and ``eval/avg_hns`` (their mean, the average performance);
    before and after a stage also ``eval/forgetting`` (the mean forgetting of the matrix so far,
    when defined) and the images ``eval/forgetting_matrix`` and ``eval/curves``. A MoE run also logs
    the evaluation's expert traffic (``eval/cache/*``, ``eval/detector/accuracy``; ``train/experts.py``),
    which is left out of the training cache ``window`` it interrupts.

    The point's ``wall_s`` is the run's training and evaluation seconds before this evaluation;
    its own time, from here to the end of its episodes, then goes to ``progress.eval_seconds``
    (before the files are written, so ``forgetting.json`` holds it). Writing the files and logging
    are not counted.
    """
    if not run.world.main:
        return
    start = time.perf_counter()
    wall_s = progress.train_seconds + progress.eval_seconds
    cfg, rd, logger = run.cfg, run.rd, run.logger
    columns = eval_columns(cfg.env.games)
    stage = 0 if kind == BEFORE else progress.stage + 1
    where = "before training" if kind == BEFORE else f"{kind} evaluation, stage {stage}, frame {progress.total_frames:,}"
    _say(f"{where}: evaluating {', '.join(columns)} ({cfg.eval.episodes} episodes each) ...")
    traffic = run.xr.eval_cache(cfg, run.model)
    try:
        results = evaluate_games(run.model, columns, cfg.env, cfg.eval, run.device,
                                 None if traffic is None else traffic.on_step)
    finally:
        traffic_scalars = {} if traffic is None else traffic.close()
    progress.eval_seconds += time.perf_counter() - start
    if window is not None and traffic is not None:
        window.exclude(traffic.counts)
    progress.evaluations.append(eval_point(progress.total_frames, stage, kind, [results[g].mean for g in columns],
                                           [results[g].episodes for g in columns], wall_s))
    doc = _write_eval_files(cfg, progress, rd)
    scalars = dict(traffic_scalars)
    for game, result in results.items():
        scalars[tags.eval_return(game)] = result.mean
        scalars[tags.eval_hns(game)] = result.hns
    avg = mean_or_none(np.array([result.hns for result in results.values()]))
    if avg is not None:
        scalars[tags.EVAL_AVG_HNS] = avg
    if kind != PERIODIC and doc["metrics"]["mean_forgetting"] is not None:
        scalars[tags.EVAL_FORGETTING] = doc["metrics"]["mean_forgetting"]
    logger.scalars(scalars, progress.total_frames)
    if kind != PERIODIC:
        logger.png(tags.EVAL_MATRIX_IMAGE, (rd.eval / PNG_NAME).read_bytes(), progress.total_frames)
        logger.png(tags.EVAL_CURVES_IMAGE, (rd.eval / curves.PNG_NAME).read_bytes(), progress.total_frames)
    logger.flush()
    _say("  " + "  ".join(f"{g}: {r.mean:.1f} (hns {r.hns:.3f})" for g, r in results.items()))


def _say(line: str) -> None:
    """Print a line without breaking a progress bar, flushed so that logs show it at once."""
    tqdm.write(line)
    sys.stdout.flush()


def _write_eval_files(cfg: RunConfig, progress: Progress, rd: RunDir) -> dict:
    """Rewrite ``eval/forgetting.*`` and ``eval/curves.*`` from the history; returns the forgetting document."""
    for stale in rd.eval.glob(".*.tmp"):  # one writer: a temp file here is a killed attempt's
        stale.unlink(missing_ok=True)
    columns = eval_columns(cfg.env.games)
    returns = matrix_returns(progress.evaluations, len(columns))
    doc = record_returns(rd.eval, columns, cfg.env.games[:returns.shape[0] - 1], returns,
                         matrix_episodes(progress.evaluations, len(columns)),
                         wall_seconds={"train": progress.train_seconds, "eval": progress.eval_seconds})
    curves.write_curves(rd.eval, columns, cfg.env.games, progress.evaluations)
    return doc


def _save(run: _Run, progress: Progress, name: str, keep: bool = False) -> None:
    """Checkpoint ``name``: every rank's expert store commits the snapshot of the same name first
    (``train/experts.py``); rank 0 then checks that every rank's replica (parameters and buffers,
    the experts' replica included) has the same checksum and writes the checkpoint."""
    snapshot = checkpoint_store(run.model, run.learner, run.cfg, name)
    checksums = run.world.gather(replica_checksum(replica(run.model)))
    if not run.world.main:
        return
    if len(set(checksums)) > 1:
        raise RuntimeError(f"the ranks' replicas diverged (checksums {checksums}): a bug, please report it")
    # What was logged up to this checkpoint is in the event files before the checkpoint exists (a
    # resume keeps it, train/logger.py), and the scalars at its own frame count are in it (replayed
    # when a resume drops that step).
    run.logger.flush()
    run.ckpts.save({**checkpoint_state(run.cfg, run.model, run.learner, progress), "expert_snapshot": snapshot,
                    "detector": run.xr.state_dict(), "world_size": run.world.size, "rank_checksums": checksums,
                    "tb_tail": run.logger.tail()}, name, keep=keep)


