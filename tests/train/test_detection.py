"""The detection drivers of a MoE run without a game detector (games without 84 x 84 frames, the
T-maze): the oracle still pins each game's cohort, in training and in evaluation, no frame is read,
and the evaluation still demands the experts its policy routed to."""

from __future__ import annotations

import numpy as np
import torch

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
