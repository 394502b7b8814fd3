"""The game detector on real Atari frames, its reservoirs, its checkpoint state and the switch tracker.

Frames come from envpool with random actions. One pool of 16 streams per game: streams 0-7 are
the frames a stage observes and trains on, streams 8-15 are held out (envpool seeds stream b with
``seed + b``, so held-out frames come from emulators with different seeds and different episodes).
"""

import io
import time

import numpy as np
import pytest
import torch

from agent.detector import GameDetector, SwitchTracker, accuracy, switch_latency_steps
from envs.atari import NUM_ACTIONS
from envs.registry import make_env

GAMES = ("Pong", "Breakout", "SpaceInvaders")
TRAIN_STREAMS = 8
WARMUP_STEPS = 30
"""Steps discarded after reset. These three games show their playfield from the first frame (mean
gray level 106, 42 and 13 at reset), but other games start near-black, and a held-out set should
be the game as it is played, not its title screen."""
STEPS = 50
TRAIN_STEPS_PER_OBSERVE = 2


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run this module's torch ops on one thread, as the detector's tensors are far too small to gain
    from more; on a loaded 2-core machine, OpenMP's second worker spin-waits for a core and turned
    each ~1 ms train_step into ~100 ms (measured), which would dominate this module's time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def atari_frames() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per game of GAMES: (training frames uint8 [STEPS, 8, 4, 84, 84], held-out uint8 [STEPS * 8, 4, 84, 84])."""
    frames = []
    for game in GAMES:
        env = make_env(game, 2 * TRAIN_STREAMS, seed=0)
        rng = np.random.default_rng(0)
        env.reset()
        obs = []
        for t in range(WARMUP_STEPS + STEPS):
            step = env.step(rng.integers(0, NUM_ACTIONS, env.num_envs))
            if t >= WARMUP_STEPS:
                obs.append(step.obs.copy())
        env.close()
        stacked = torch.from_numpy(np.stack(obs))
        frames.append((stacked[:, :TRAIN_STREAMS], stacked[:, TRAIN_STREAMS:].flatten(0, 1)))
    return frames


def _sequential_run(frames: list[tuple[torch.Tensor, torch.Tensor]], keep_old_reservoirs: bool) -> list[list[float]]:
    """Learn the games in order, stage i observing only game i; returns held-out accuracy [stage][game <= stage].

    ``keep_old_reservoirs=False`` is the negative control: at each stage start the old games'
    reservoirs are emptied (through the state dict), so training sees only the current game.
    """
    detector = GameDetector(len(frames), reservoir_size=256, lr=1e-3, seed=0)
    accuracies = []
    for stage, (train, _) in enumerate(frames):
        if not keep_old_reservoirs:
            state = detector.state_dict()
            state["seen"][:stage] = 0
            detector.load_state_dict(state)
        for batch in train:
            detector.observe(batch, stage)
            for _ in range(TRAIN_STEPS_PER_OBSERVE):
                detector.train_step(32)
        accuracies.append([accuracy(detector, held_out, torch.full((len(held_out),), game))
                           for game, (_, held_out) in enumerate(frames[: stage + 1])])
    return accuracies


def test_detector_is_99_percent_accurate_on_held_out_frames_of_every_seen_game_after_each_stage(atari_frames):
    accuracies = _sequential_run(atari_frames, keep_old_reservoirs=True)
    print("held-out accuracy per stage:", accuracies)
    for stage, per_game in enumerate(accuracies):
        assert len(per_game) == stage + 1
        assert min(per_game) >= 0.99, f"after stage {stage} ({GAMES[stage]}): {per_game}"


def test_without_the_old_games_reservoirs_the_detector_forgets_them(atari_frames):
    accuracies = _sequential_run(atari_frames, keep_old_reservoirs=False)
    print("held-out accuracy per stage, no old reservoirs:", accuracies)
    final = accuracies[-1]
    assert final[2] >= 0.99, "the current game must still be learned, so the failure below is forgetting"
    assert final[0] < 0.5 and final[1] < 0.5, final


def _indexed_frames(start: int, count: int) -> torch.Tensor:
    """uint8 [count, 4, 84, 84]; frame i's newest frame encodes start + i in two 4x4 blocks (pooled pixels 0, 1)."""
    frames = torch.zeros(count, 4, 84, 84, dtype=torch.uint8)
    index = torch.arange(start, start + count)
    frames[:, -1, :4, 0:4] = (index // 256).to(torch.uint8)[:, None, None]
    frames[:, -1, :4, 4:8] = (index % 256).to(torch.uint8)[:, None, None]
    return frames


def _decode(reservoir: torch.Tensor) -> torch.Tensor:
    """int64 [n]: the indices encoded by :func:`_indexed_frames` in pooled reservoir entries [n, 1, 21, 21]."""
    return reservoir[:, 0, 0, 0].long() * 256 + reservoir[:, 0, 0, 1].long()


def test_reservoir_fills_in_order_then_holds_a_uniform_sample_of_all_observed_frames():
    size, total, batch = 256, 8000, 8
    detector = GameDetector(2, reservoir_size=size, seed=0)
    detector.observe(_indexed_frames(0, 100), 0)
    assert _decode(detector.reservoir(0)).tolist() == list(range(100))
    for start in range(100, total, batch):
        detector.observe(_indexed_frames(start, min(batch, total - start)), 0)
    kept = _decode(detector.reservoir(0))
    assert len(kept) == size and len(set(kept.tolist())) == size and int(kept.max()) < total
    # A uniform sample of 256 of 8000 indices: mean 4000 +- 144 and 64 +- 7 of them in the first
    # quarter (one standard deviation). A FIFO or a "keep the first" buffer is far outside 4 sigma.
    assert abs(kept.float().mean().item() - total / 2) < 4 * total / (12 * size) ** 0.5
    assert 36 <= int((kept < total // 4).sum()) <= 92
    # Reservoirs are per game: another game's frames leave game 0's untouched.
    detector.observe(_indexed_frames(0, 5), 1)
    assert torch.equal(_decode(detector.reservoir(0)), kept)
    assert _decode(detector.reservoir(1)).tolist() == list(range(5))
    assert detector.seen_games() == [0, 1]


def test_state_dict_round_trip_through_weights_only_load_restores_predictions_reservoirs_and_training(atari_frames):
    detector = GameDetector(len(GAMES), reservoir_size=64, seed=0)
    for game, (train, _) in enumerate(atari_frames[:2]):
        for batch in train[:10]:
            detector.observe(batch, game)
            detector.train_step(16)
    buffer = io.BytesIO()
    torch.save(detector.state_dict(), buffer)
    buffer.seek(0)
    restored = GameDetector(len(GAMES), reservoir_size=64, seed=123)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    held_out = torch.cat([atari_frames[game][1][:200] for game in range(len(GAMES))])
    assert torch.equal(restored.predict(held_out), detector.predict(held_out))
    assert torch.equal(restored.probs(held_out), detector.probs(held_out))
    assert restored.seen_games() == detector.seen_games() == [0, 1]
    for game in range(len(GAMES)):
        assert torch.equal(restored.reservoir(game), detector.reservoir(game))
    # Optimizer moments and the sampling RNG came along too: both continue identically.
    next_batch = atari_frames[2][0][0]
    for d in (detector, restored):
        d.observe(next_batch, 2)
    assert restored.train_step(16) == detector.train_step(16)
    assert torch.equal(restored.probs(held_out), detector.probs(held_out))

    with pytest.raises(ValueError, match="number of games or reservoir size"):
        GameDetector(2, reservoir_size=64).load_state_dict(detector.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detector_on_cuda_loads_a_cpu_state_predicts_alike_and_keeps_learning(atari_frames):
    cpu = GameDetector(len(GAMES), reservoir_size=64, seed=0)
    for game, (train, _) in enumerate(atari_frames):
        for batch in train[:20]:
            cpu.observe(batch, game)
            cpu.train_step(16)
    gpu = GameDetector(len(GAMES), reservoir_size=64, device="cuda", seed=0)
    gpu.load_state_dict(cpu.state_dict())
    held_out = torch.cat([atari_frames[game][1][:100] for game in range(len(GAMES))])
    assert torch.equal(gpu.predict(held_out).cpu(), cpu.predict(held_out))
    for game in range(len(GAMES)):
        assert torch.equal(gpu.reservoir(game).cpu(), cpu.reservoir(game))
    gpu.observe(atari_frames[0][0][0].numpy(), 0)  # numpy frames, as envpool returns them
    assert np.isfinite(gpu.train_step(16))


def test_detector_rejects_unknown_labels_and_training_before_any_frame():
    detector = GameDetector(2)
    with pytest.raises(ValueError, match="label 2"):
        detector.observe(torch.zeros(1, 4, 84, 84, dtype=torch.uint8), 2)
    with pytest.raises(RuntimeError, match="before any observe"):
        detector.train_step()


def test_predict_on_8_streams_costs_under_1_ms_of_one_core():
    detector = GameDetector(8, seed=0)
    frames = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        detector.predict(frames)
    costs = []
    for _ in range(5):
        start = time.thread_time()  # CPU time of this thread (one torch thread here): other jobs do not count
        for _ in range(100):
            detector.predict(frames)
        costs.append((time.thread_time() - start) / 100)
    print(f"predict, 8 streams, one thread: {1e3 * float(np.median(costs)):.3f} ms CPU")
    assert np.median(costs) < 1e-3


# Switch tracker ---------------------------------------------------------------------------------


def _track(predictions: list[list[int]], window: int) -> tuple[list[list[int]], list[list[bool]]]:
    """Feed per-step predictions [T][B] to a tracker; returns detections and change flags [T][B]."""
    tracker = SwitchTracker(len(predictions[0]), window)
    detected, changed = [], []
    for step in predictions:
        d, c = tracker.update(step)
        detected.append(d.tolist())
        changed.append(c.tolist())
    return detected, changed


def test_tracker_suppresses_single_step_mispredictions_and_reports_only_the_first_detection():
    stream0 = [0, 0, 0, 0, 2, 0, 0, 1, 0, 0]  # two isolated wrong votes, for different games
    stream1 = [1] * len(stream0)
    detected, changed = _track([[a, b] for a, b in zip(stream0, stream1)], window=4)
    assert [d[0] for d in detected] == [0] * len(stream0)
    assert [d[1] for d in detected] == [1] * len(stream0)
    # The first prediction sets a stream's game (a change from "unknown"); nothing changes after it.
    assert changed[0] == [True, True] and not any(any(c) for c in changed[1:])


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
def test_tracker_reports_a_real_switch_once_after_half_a_window(window):
    true = [0] * 8 + [1] * 8
    detected, changed = _track([[label] for label in true], window)
    stream = [d[0] for d in detected]
    switches = [t for t, c in enumerate(changed) if c[0] and t > 0]
    assert switches == [8 + window // 2]
    assert stream[-1] == 1
    assert switch_latency_steps(true, stream) == [window // 2]


def test_tracker_latency_grows_by_one_for_a_misprediction_right_after_the_switch():
    true = [0] * 8 + [1] * 8
    predictions = list(true)
    predictions[9] = 0  # the detector still sees the old game on the new game's second frame
    detected, _ = _track([[p] for p in predictions], window=4)
    assert switch_latency_steps(true, [d[0] for d in detected]) == [3]


def test_switch_latency_counts_from_the_first_frame_of_each_new_game_until_the_next_change():
    true = [0, 0, 1, 1, 1, 2, 2, 0]
    detected = [0, 0, 0, 1, 1, 1, 1, 1]
    # 0 -> 1 detected one step late; 1 -> 2 never detected before the next change; 2 -> 0 missed at the end.
    assert switch_latency_steps(true, detected) == [1, None, None]
    assert switch_latency_steps([0, 1, 1], [0, 1, 1]) == [0]
    with pytest.raises(ValueError, match="differ in length"):
        switch_latency_steps([0, 1], [0])
