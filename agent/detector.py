"""The game detector: a small CNN that tells which game a stream is playing from its frames.

Classes are the schedule's distinct games in order of first appearance (class 0 is the first
stage's game). During training the detector learns online from the stage's known game id: the
actor hands every step's frames to :meth:`GameDetector.observe` with that id, and calls
:meth:`GameDetector.train_step` every few steps. Each game keeps a reservoir of frames (Vitter's
Algorithm R, so a reservoir is a uniform sample of every frame of that game observed so far), and
every training batch is drawn evenly from the reservoirs of all games seen so far: old games stay
in every batch after their stage ends, which is what keeps the detector from forgetting them. At
evaluation it gets no label (:meth:`GameDetector.predict`).

Input: uint8 frame stacks [B, 4, 84, 84]. Only the newest frame is used (a game's identity is in
any one frame; the older three would quadruple the cost of the step that runs on every actor
step), average-pooled 4x4 to [B, 1, 21, 21] and stored in the reservoirs in that form (uint8,
441 bytes, 64x smaller than a raw stack): a game's look survives the pooling, its fine detail is
not needed to tell games apart. With the small :class:`DetectorNet` a ``predict`` on 8 streams
costs about 0.2 ms of one core.

:class:`SwitchTracker` smooths the per-step predictions of each env stream by a vote over the last
few steps and reports when a stream's detected game changes, which is when the game's expert cohort
is prefetched; :func:`switch_latency_steps` measures how long the smoothed detection lags a true
change. Not thread-safe: call one detector from one thread (the actor's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

POOL = 4
"""Average-pooling factor: 84x84 frames -> 21x21."""
POOLED_SHAPE = (1, 84 // POOL, 84 // POOL)
"""What one reservoir entry holds: the newest frame of a stack, pooled, uint8 [1, 21, 21]."""


class DetectorNet(nn.Module):
    """Pooled uint8 frames [B, 1, 21, 21] -> logits [B, num_classes].

    One 3x3/3 convolution (16 features per 12x12-pixel block of the original frame) and a linear
    read-out of the whole 7x7 map, which keeps where things are (score, walls, bricks, invaders);
    a global average would throw that away. About 160 + 785 * num_classes parameters. One
    convolution is enough: it held 100% held-out accuracy on 8 games learned in sequence (Pong,
    Breakout, SpaceInvaders, MsPacman, Seaquest, Boxing, Enduro, Freeway; random play, 50 steps of
    batch 32 per stage), as did a second 3x3 layer, which doubled the cost (on one CPU core a
    convolution call costs ~0.1 ms, mostly fixed overhead, whatever its size here).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(POOLED_SHAPE[0], 16, 3, stride=3), nn.ReLU(),  # 21x21 -> 7x7
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, num_classes),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: uint8 [B, 1, 21, 21] -> float logits [B, num_classes]."""
        return self.net(pooled.float().div_(255.0))


class GameDetector:
    """Online game classifier with a per-game frame reservoir; see the module docstring.

    ``num_classes``: the schedule's distinct games (class = order of first appearance).
    ``reservoir_size``: pooled frames kept per game (441 bytes each, so 256 cost 113 KB a game).
    ``lr``: Adam learning rate. ``seed``: seeds the weights, the reservoir sampling and the batches.
    """

    def __init__(self, num_classes: int, reservoir_size: int = 256, lr: float = 1e-3,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        if num_classes < 1 or reservoir_size < 1:
            raise ValueError(f"need num_classes >= 1 and reservoir_size >= 1, got {num_classes}, {reservoir_size}")
        self.num_classes = num_classes
        self.reservoir_size = reservoir_size
        self.device = torch.device(device)
        # A private generator keeps the detector's randomness independent of the agent's global RNG
        # stream, so adding the detector to a run does not change the agent's own random draws.
        self._gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = DetectorNet(num_classes).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self._reservoir = torch.zeros(num_classes, reservoir_size, *POOLED_SHAPE, dtype=torch.uint8,
                                      device=self.device)
        # Frames observed per game: Algorithm R needs the count, and count > 0 marks a game as seen.
        self._seen = torch.zeros(num_classes, dtype=torch.int64)

    @staticmethod
    def pool(frames: torch.Tensor | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 [B, 4, 84, 84] frame stacks -> uint8 [B, 1, 21, 21]: the newest frame's 4x4 averages, rounded."""
        x = torch.as_tensor(frames, device=device)[:, -1:]
        return F.avg_pool2d(x.float(), POOL).round_().to(torch.uint8)

    def observe(self, frames: torch.Tensor | np.ndarray, label: int) -> None:
        """Offer uint8 frames [B, 4, 84, 84] of game class ``label`` to that game's reservoir."""
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        x = self.pool(frames, self.device)
        size, seen = self.reservoir_size, int(self._seen[label])
        index = torch.arange(seen, seen + x.shape[0], dtype=torch.int64)  # 0-based position in the game's stream
        # Algorithm R: frame i fills slot i while the reservoir has room, else it replaces a uniform
        # slot of [0, i] if that slot exists (probability size / (i + 1)). float64 keeps the draw
        # uniform for the tens of millions of frames a stage can have.
        draw = (torch.rand(x.shape[0], generator=self._gen, dtype=torch.float64) * (index + 1)).long()
        slot = torch.where(index < size, index, draw)
        kept = torch.nonzero(slot < size).squeeze(1)
        # Two frames of one batch may draw the same slot; as in the one-at-a-time algorithm, the
        # later one wins (index_put with duplicate indices leaves the winner unspecified).
        last = torch.full((size,), -1, dtype=torch.int64).scatter_reduce_(0, slot[kept], kept, reduce="amax")
        slots = torch.nonzero(last >= 0).squeeze(1)
        self._reservoir[label, slots.to(self.device)] = x[last[slots].to(self.device)]
        self._seen[label] += x.shape[0]

    def seen_games(self) -> list[int]:
        """Classes observed at least once, ascending."""
        return torch.nonzero(self._seen > 0).squeeze(1).tolist()

    def reservoir(self, label: int) -> torch.Tensor:
        """uint8 [n, 1, 21, 21]: the filled part of game ``label``'s reservoir (n <= reservoir_size)."""
        return self._reservoir[label, : min(int(self._seen[label]), self.reservoir_size)]

    def train_step(self, batch_size: int = 64) -> float:
        """One Adam step on ``batch_size`` frames drawn evenly from the reservoirs of all games seen.

        Each seen game gets ``batch_size // games`` frames (the remainder goes to randomly chosen
        games), drawn uniformly with replacement from its reservoir, so every game weighs the same
        however long ago its stage was. Returns the batch's mean cross-entropy (nats).
        """
        games = self.seen_games()
        if not games:
            raise RuntimeError("train_step before any observe(): there is nothing to learn from")
        counts = torch.full((len(games),), batch_size // len(games), dtype=torch.int64)
        counts[torch.randperm(len(games), generator=self._gen)[: batch_size % len(games)]] += 1
        frames, labels = [], []
        for game, count in zip(games, counts.tolist()):
            filled = min(int(self._seen[game]), self.reservoir_size)
            idx = torch.randint(filled, (count,), generator=self._gen)
            frames.append(self._reservoir[game, idx.to(self.device)])
            labels.append(torch.full((count,), game, dtype=torch.int64))
        with torch.enable_grad():  # callers such as the actor thread run under no_grad
            logits = self.net(torch.cat(frames))
            loss = F.cross_entropy(logits, torch.cat(labels).to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.inference_mode()
    def probs(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames [B, 4, 84, 84] -> float [B, num_classes] class probabilities (on ``device``)."""
        return torch.softmax(self.net(self.pool(frames, self.device)), dim=1)

    @torch.inference_mode()
    def predict(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames [B, 4, 84, 84] -> int64 [B] most likely game class (on ``device``)."""
        return self.net(self.pool(frames, self.device)).argmax(dim=1)

    def state_dict(self) -> dict:
        """Weights, optimizer state, reservoirs and RNG state: plain tensors and numbers only, so a
        checkpoint loads with ``torch.load(weights_only=True)``."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "reservoir": self._reservoir.clone(),
            "seen": self._seen.clone(),
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; the class count and reservoir size must match."""
        if tuple(state["reservoir"].shape) != tuple(self._reservoir.shape):
            raise ValueError(f"detector state has reservoirs {tuple(state['reservoir'].shape)}, this detector "
                             f"{tuple(self._reservoir.shape)}: the number of games or reservoir size differs")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._reservoir.copy_(state["reservoir"])
        self._seen.copy_(state["seen"])
        self._gen.set_state(state["rng"])


def accuracy(detector: GameDetector, frames: torch.Tensor | np.ndarray,
             labels: torch.Tensor | np.ndarray | Sequence[int], batch_size: int = 512) -> float:
    """Fraction of uint8 frames [N, 4, 84, 84] whose predicted class equals ``labels`` [N].

    The detector sees no label (as at evaluation); frames go through it ``batch_size`` at a time.
    """
    frames = torch.as_tensor(frames)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(frames) != len(labels) or len(frames) == 0:
        raise ValueError(f"need as many labels as frames (and some): {len(frames)} frames, {len(labels)} labels")
    correct = sum(int((detector.predict(frames[i: i + batch_size]).cpu() == labels[i: i + batch_size]).sum())
                  for i in range(0, len(frames), batch_size))
    return correct / len(frames)


class SwitchTracker:
    """Per env stream, a vote over the detector's last ``window`` predictions, and the game it settles on.

    A stream's detected game changes to game g when g holds more of the last ``window`` votes than
    the currently detected game; a tie keeps the current one (hysteresis), and between tied
    challengers the one voted most recently wins. So an established detection survives up to
    ``window // 2`` wrong votes out of ``window`` (2 of 4 by default), and a clean switch is
    detected ``window // 2`` steps after the first frame of the new game (latency 2 by default,
    as :func:`switch_latency_steps` counts). A stream starts undetected (-1); its first prediction
    sets its game, and that counts as a change (nothing is cached for a stream yet).
    """

    def __init__(self, num_streams: int, window: int = 4) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        # [window, B] predictions, oldest first; -1 marks a slot not filled yet and never wins a vote.
        self._votes = torch.full((window, num_streams), -1, dtype=torch.int64)
        self._detected = torch.full((num_streams,), -1, dtype=torch.int64)

    @property
    def detected(self) -> torch.Tensor:
        """int64 [B]: each stream's smoothed game class (-1 before its first prediction)."""
        return self._detected.clone()

    def update(self, predictions: torch.Tensor | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one step's predictions [B] (ints); returns (detected int64 [B], changed bool [B]) on the CPU."""
        pred = torch.as_tensor(predictions, dtype=torch.int64).cpu()
        self._votes = torch.cat([self._votes[1:], pred[None]])
        valid = self._votes >= 0
        # counts[i, b]: how many of stream b's votes equal votes[i, b] (0 for an empty slot).
        counts = ((self._votes[:, None] == self._votes[None]) & valid[None]).sum(dim=1) * valid
        newest_first = counts.flip(0)
        best = newest_first.argmax(dim=0)  # argmax returns the first maximum: the most recent voter
        challenger = self._votes.flip(0).gather(0, best[None])[0]
        challenger_votes = newest_first.gather(0, best[None])[0]
        current_votes = ((self._votes == self._detected[None]) & valid).sum(dim=0)
        changed = challenger_votes > current_votes
        self._detected = torch.where(changed, challenger, self._detected)
        return self._detected.clone(), changed


def majority_game(detected: torch.Tensor, num_classes: int) -> int:
    """The game most streams are detected playing (``SwitchTracker.update``'s [B]; -1 = undecided),
    or -1 when no stream has decided yet."""
    counts = torch.bincount(detected[detected >= 0], minlength=num_classes)
    return int(counts.argmax()) if counts.sum() > 0 else -1


def switch_latency_steps(true_labels: Sequence[int], detected: Sequence[int]) -> list[int | None]:
    """How many steps the detection of one stream lags each true game change.

    ``true_labels`` and ``detected`` are the stream's per-step true game and smoothed detection
    (:class:`SwitchTracker`), aligned [T]. For every step t with ``true_labels[t] !=
    true_labels[t-1]`` (the start of the sequence is not a change) the result holds ``s - t`` for
    the first step s >= t whose detection equals the new game, looked for until the next true
    change; None when it is not reached by then. A detector that is right from the switch's
    first frame scores 0.
    """
    if len(true_labels) != len(detected):
        raise ValueError(f"sequences differ in length: {len(true_labels)} true labels, {len(detected)} detections")
    changes = [t for t in range(1, len(true_labels)) if true_labels[t] != true_labels[t - 1]]
    latencies: list[int | None] = []
    for start, end in zip(changes, changes[1:] + [len(true_labels)]):
        hit = next((s for s in range(start, end) if detected[s] == true_labels[start]), None)
        latencies.append(None if hit is None else hit - start)
    return latencies
