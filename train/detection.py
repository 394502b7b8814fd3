"""The game detector in the actor thread: it learns the stage's game online, watches for game
changes, and drives the expert prefetch (``agent/prefetch.py``).

Every actor step, :meth:`DetectorDriver.on_frames` (called by ``train/actor.py`` with the step's
frames [B, 4, 84, 84]):
  1. predicts each stream's game (before learning from the frames, so accuracy is measured on
     frames the detector has not trained on), smoothed per stream by a ``SwitchTracker``;
  2. teaches the detector the stage's known game (``observe``; ``train_step`` every 8 steps);
  3. in ``--prefetch detector`` mode, when the streams' detected game (their majority) changes,
     pins and prefetches that game's expert cohort (unpinning the previous one); in ``oracle`` mode
     the cohort of the stage's known game is pinned when the stage starts.
The cohort of a game comes from the MoE core's routing counts of the learner's rollouts
(``MoEELSTMCore.usage``, decayed). TensorBoard: ``detector/accuracy`` (share of raw per-step
predictions equal to the true game in the window) and ``detector/switch_latency_steps`` (steps from
the stage's first frame until the smoothed majority detection named the stage's game).

A run whose games have no 84 x 84 frames (the T-maze) has no detector (``RunConfig.has_frames``):
its stage driver exists only in ``oracle`` mode, to pin the stage's cohort, and reads no frames;
``--prefetch detector`` is refused there at validation.

Evaluation (:class:`EvalDetection`) plays every game of the schedule in turn, so it switches games
the way a deployed agent would: the detector (a copy; it gets no label and does not learn) switches
the prefetched cohort in ``detector`` mode, the oracle at each game's start, and every step demands
the experts the policy routed to from the store, as an actor without a replica would. The store's
counters over the evaluation become the ``eval/cache/*`` figures (``train/experts.py``). Without a
detector the evaluation still switches the oracle's cohort and demands the experts (no
``eval/detector/accuracy``).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch

from agent.detector import GameDetector, SwitchTracker, majority_game
from agent.prefetch import CohortPrefetcher, cohort_of
from train import tags

TRAIN_EVERY = 8
"""Actor steps between detector training steps (about 0.5 ms per 8-stream step in all)."""
TRAIN_BATCH = 32
COHORT_SHARE = 0.99
"""A game's cohort: its most used experts carrying this share of its routing."""


class UsageCohorts:
    """Game cohorts from the MoE core's decayed routing counts (read from the actor thread)."""

    def __init__(self, core, max_size: int, rows: list[int]) -> None:
        """``rows``: the ``core.usage`` row of each class (``train/experts.py``'s ``usage_rows``)."""
        self.core, self.max_size, self.rows = core, max_size, rows

    def cohort(self, game: int) -> list[int]:
        """The cohort of class ``game`` (the schedule's ``game``-th distinct game)."""
        return cohort_of(self.core.usage[self.rows[game]].cpu().numpy(), COHORT_SHARE, self.max_size)


class DetectorDriver:
    """One stage's detector, tracker and prefetch policy (see the module docstring)."""

    def __init__(self, detector: GameDetector | None, num_streams: int, game: int, mode: str,
                 prefetcher: CohortPrefetcher | None) -> None:
        """``game``: the stage's class (the game's index among the schedule's distinct games);
        ``detector`` None: a run without frames, whose driver only pins the oracle's cohort."""
        self.detector, self.game, self.mode, self.prefetcher = detector, game, mode, prefetcher
        self.tracker = SwitchTracker(num_streams)
        self.steps = 0
        self.correct = self.predicted = 0
        self._counts = threading.Lock()  # the actor thread counts, the logging thread reads and resets
        self.latency: int | None = None
        self.majority = -1
        if mode == "oracle" and prefetcher is not None:
            prefetcher.switch(game)

    @property
    def frame_hook(self):
        """What the actor calls with every step's frames: :meth:`on_frames`, None without a detector."""
        return None if self.detector is None else self.on_frames

    def on_frames(self, frames: np.ndarray) -> None:
        with torch.no_grad():
            prediction = self.detector.predict(frames).cpu()
        detected, _ = self.tracker.update(prediction)
        hits, n = int((prediction == self.game).sum()), prediction.numel()
        with self._counts:
            self.correct += hits
            self.predicted += n
        majority = majority_game(detected, self.detector.num_classes)
        if majority == self.game and self.latency is None:
            self.latency = self.steps
        if majority != self.majority and majority >= 0:
            self.majority = majority
            if self.mode == "detector" and self.prefetcher is not None:
                self.prefetcher.switch(majority)
        self.detector.observe(frames, self.game)
        self.steps += 1
        if self.steps % TRAIN_EVERY == 0:
            self.detector.train_step(TRAIN_BATCH)

    def stats(self) -> dict[str, float]:
        """Scalars for the window since the previous call (accuracy) and the stage so far (latency)."""
        with self._counts:
            correct, predicted = self.correct, self.predicted
            self.correct = self.predicted = 0
        out = {}
        if predicted:
            out[tags.DETECTOR_ACCURACY] = correct / predicted
        if self.latency is not None:
            out[tags.DETECTOR_LATENCY] = float(self.latency)
        return out


class EvalDetection:
    """One evaluation's detector, prefetch and expert demands (see the module docstring)."""

    def __init__(self, detector: GameDetector | None, classes: list[str], mode: str,
                 prefetcher: CohortPrefetcher | None, core, evict_after_use: bool) -> None:
        """``classes``: the schedule's distinct games (the detector's classes); ``core``: the MoE core
        the evaluation acts with (its ``last_routing``) and whose store serves the demands;
        ``detector`` None: a run without frames (no detection, the rest as with one)."""
        self.detector = copy.deepcopy(detector)  # the actor thread's detector may be learning meanwhile
        self.classes, self.mode, self.prefetcher, self.core = classes, mode, prefetcher, core
        self.evict_after_use = evict_after_use
        self.game: str | None = None
        self.tracker: SwitchTracker | None = None
        self.majority = -1
        self.steps = self.correct = self.predicted = 0

    def on_step(self, game: str, frames: np.ndarray) -> None:
        """After the policy acted on ``frames`` [K, ...] of ``game``: detect (frames [K, 4, 84, 84]
        only), prefetch, demand."""
        truth = self.classes.index(game)
        if game != self.game:  # a new game's streams
            self.game, self.tracker = game, SwitchTracker(frames.shape[0])
            if self.mode == "oracle" and self.prefetcher is not None:
                self.prefetcher.switch(truth, training=False)
        if self.detector is not None:
            self._detect(truth, frames)
        ids = torch.unique(self.core.last_routing).tolist()
        for chunk, _ in self.core.hbm_chunks(ids):  # K streams can route to more experts than hbm holds
            self.core.store.release(chunk)
        if self.evict_after_use:
            self.core.store.evict(ids)
        self.steps += 1

    def _detect(self, truth: int, frames: np.ndarray) -> None:
        with torch.no_grad():
            prediction = self.detector.predict(frames).cpu()
        self.correct += int((prediction == truth).sum())
        self.predicted += prediction.numel()
        detected, _ = self.tracker.update(prediction)
        majority = majority_game(detected, self.detector.num_classes)
        if majority != self.majority and majority >= 0:
            self.majority = majority
            if self.mode == "detector" and self.prefetcher is not None:
                self.prefetcher.switch(majority, training=False)

    def close(self) -> dict[str, float]:
        """Hand the prefetcher back to the training game; returns ``eval/detector/accuracy``."""
        if self.prefetcher is not None:
            self.prefetcher.resume_training()
        return {tags.EVAL_PREFIX + tags.DETECTOR_ACCURACY: self.correct / self.predicted} if self.predicted else {}
