"""The detection drivers of a MoE run without a game detector (games without 84 x 84 frames, the
T-maze): the oracle still pins each game's cohort, in training and in evaluation, no frame is read,
and the evaluation still demands the experts its policy routed to; and with a detector, an accuracy
window read from the logging thread while the actor thread counts stays consistent."""

from __future__ import annotations

import threading

import numpy as np
import torch

from agent.detector import GameDetector
from train.detection import DetectorDriver, EvalDetection


class _Prefetcher:
    def __init__(self) -> None:
        self.calls: list = []

    def switch(self, game, training: bool = True) -> None:
        self.calls.append((game, training))

    def resume_training(self) -> None:
        self.calls.append("resume")


class _Store:
    def __init__(self) -> None:
        self.released: list[list[int]] = []

    def release(self, ids) -> None:
        self.released.append(list(ids))


class _Core:
    def __init__(self) -> None:
        self.store = _Store()
        self.last_routing = torch.tensor([[2, 0], [0, 3]])

    def hbm_chunks(self, ids):
        return [(ids, None)]


def test_without_a_detector_the_oracle_pins_the_stage_game_and_the_actor_gets_no_frame_hook():
    prefetcher = _Prefetcher()
    driver = DetectorDriver(None, 4, 1, "oracle", prefetcher)
    assert prefetcher.calls == [(1, True)]
    assert driver.frame_hook is None and driver.stats() == {}


def test_without_a_detector_an_evaluation_switches_the_oracle_and_demands_the_routed_experts():
    prefetcher, core = _Prefetcher(), _Core()
    detection = EvalDetection(None, ["tmaze-10", "tmaze-20"], "oracle", prefetcher, core, evict_after_use=False)
    obs = np.zeros((2, 1, 4), dtype=np.uint8)  # T-maze observations: no frames to detect from
    for game in ("tmaze-10", "tmaze-10", "tmaze-20"):
        detection.on_step(game, obs)
    assert prefetcher.calls == [(0, False), (1, False)]
    assert core.store.released == [[0, 2, 3]] * 3 and detection.steps == 3
    assert detection.close() == {} and prefetcher.calls[-1] == "resume"  # no eval/detector/accuracy


def test_t_mazes_that_share_a_game_id_share_one_usage_row_and_one_cohort():
    """The core counts routing by game id; tmaze-10 and tmaze-20 (2 exits each) share one, so the
    prefetcher's second class reads row 0, not a row 1 that does not exist."""
    from agent.cores.moe_elstm import MoEELSTMCore
    from envs.registry import GAMES, game_id
    from train.config import RunConfig
    from train.detection import UsageCohorts
    from train.experts import usage_labels, usage_rows

    def core_and_cfg(games):
        cfg = RunConfig()
        cfg.env.games = games
        return MoEELSTMCore(8, 4, 4, 2, "learned", [game_id(g) for g in games], len(GAMES)), cfg

    core, cfg = core_and_cfg(["tmaze-10", "tmaze-20", "tmaze-10-k3"])
    assert usage_rows(cfg, core) == [0, 0, 1] and usage_labels(cfg, core) == ["tmaze-10/tmaze-20", "tmaze-10-k3"]
    core.usage[0] = torch.tensor([0.0, 5.0, 0.0, 1.0], dtype=core.usage.dtype)
    cohorts = UsageCohorts(core, 2, usage_rows(cfg, core))
    assert cohorts.cohort(1) == cohorts.cohort(0) == [1, 3] and cohorts.cohort(2) == []
    core, cfg = core_and_cfg(["Pong", "Breakout", "Pong"])
    assert usage_rows(cfg, core) == [0, 1] and usage_labels(cfg, core) == ["Pong", "Breakout"]



def test_an_accuracy_window_read_while_the_actor_thread_counts_stays_within_0_and_1():
    """The actor thread counts each step's detections while the logging thread reads and resets the
    window. A read that landed between the two counters once logged an accuracy above 1 (CI, stop 25).
    Here the logging thread reads at that exact moment: the step's predictions (all right, so the
    window's accuracy is 1) call it from ``numel``, which the count evaluates after adding the hits."""
    class _Reading(torch.Tensor):
        hook = None

        def numel(self):
            if _Reading.hook is not None:
                _Reading.hook()
            return super().numel()

    class _RightDetector:
        """The real detector, whose predictions are replaced by the truth (game 1)."""

        def __init__(self) -> None:
            self.inner = GameDetector(num_classes=2)
            self.num_classes = 2

        def predict(self, frames):
            return torch.ones(frames.shape[0], dtype=torch.int64).as_subclass(_Reading)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    driver = DetectorDriver(_RightDetector(), 4, 1, "detector", None)
    frames = np.zeros((4, 4, 84, 84), dtype=np.uint8)
    for _ in range(3):
        driver.on_frames(frames)
    read: list[dict] = []
    logger = threading.Thread(target=lambda: read.append(driver.stats()))
    _Reading.hook = lambda: (logger.start(), logger.join(timeout=0.5))
    try:
        driver.on_frames(frames)
    finally:
        _Reading.hook = None
    logger.join()
    windows = [read[0]["detector/accuracy"], driver.stats().get("detector/accuracy", 1.0)]
    assert all(0.0 <= v <= 1.0 for v in windows), windows
