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
"""

from __future__ import annotations

import numpy as np
import torch

from agent.detector import GameDetector, SwitchTracker
from agent.prefetch import CohortPrefetcher, cohort_of

TRAIN_EVERY = 8
"""Actor steps between detector training steps (about 0.5 ms per 8-stream step in all)."""
TRAIN_BATCH = 32
COHORT_SHARE = 0.99
"""A game's cohort: its most used experts carrying this share of its routing."""


class UsageCohorts:
    """Game cohorts from the MoE core's decayed routing counts (read from the actor thread)."""

    def __init__(self, core, max_size: int) -> None:
        self.core, self.max_size = core, max_size

    def cohort(self, game: int) -> list[int]:
        return cohort_of(self.core.usage[game].cpu().numpy(), COHORT_SHARE, self.max_size)


class DetectorDriver:
    """One stage's detector, tracker and prefetch policy (see the module docstring)."""

    def __init__(self, detector: GameDetector, num_streams: int, game: int, mode: str,
                 prefetcher: CohortPrefetcher | None) -> None:
        """``game``: the stage's class (the game's index among the schedule's distinct games)."""
        self.detector, self.game, self.mode, self.prefetcher = detector, game, mode, prefetcher
        self.tracker = SwitchTracker(num_streams)
        self.steps = 0
        self.correct = self.predicted = 0
        self.latency: int | None = None
        self.majority = -1
        if mode == "oracle" and prefetcher is not None:
            prefetcher.switch(game)

    def on_frames(self, frames: np.ndarray) -> None:
        with torch.no_grad():
            prediction = self.detector.predict(frames).cpu()
        detected, _ = self.tracker.update(prediction)
        self.correct += int((prediction == self.game).sum())
        self.predicted += prediction.numel()
        counts = torch.bincount(detected[detected >= 0], minlength=self.detector.num_classes)
        majority = int(counts.argmax()) if counts.sum() > 0 else -1
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
        out = {}
        if self.predicted:
            out["detector/accuracy"] = self.correct / self.predicted
        if self.latency is not None:
            out["detector/switch_latency_steps"] = float(self.latency)
        self.correct = self.predicted = 0
        return out
