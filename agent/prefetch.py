"""Which experts to keep hot: a game -> expert-cohort map from routing statistics, and the prefetcher
that pins a game's cohort when that game starts (detected from frames, or known from the schedule).

Prefetch modes (``--prefetch``), so the gain is measured rather than assumed:
  ``none``      no caching: experts leave hbm right after each use (the floor).
  ``lru``       demand loading with LRU retention, no prefetch.
  ``detector``  the game detector (``agent/detector.py``, smoothed by its ``SwitchTracker``) reports a
                game change -> pin and prefetch that game's cohort, unpin the previous one.
  ``oracle``    the same, driven by the known schedule (the true game at every step).
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from storage.expert_store import ExpertStore

PREFETCH_MODES = ("none", "lru", "detector", "oracle")


class CohortMap:
    """Decayed routing counts per game; a game's cohort is its most used experts."""

    def __init__(self, num_games: int, num_experts: int, max_size: int, decay: float = 0.999, share: float = 0.99):
        """``max_size``: the largest cohort (leave hbm room for experts outside it); ``share``: a
        cohort is the fewest most-used experts that carry this share of the game's routing."""
        self.counts = np.zeros((num_games, num_experts))
        self.max_size, self.decay, self.share = max_size, decay, share

    def update(self, game: int, experts: Sequence[int]) -> None:
        """Count one step's routed experts for ``game`` (the known game while training on it)."""
        self.counts[game] *= self.decay
        np.add.at(self.counts[game], np.asarray(experts, dtype=np.int64), 1.0)

    def cohort(self, game: int) -> list[int]:
        """The game's cohort, most used first; empty for a game never counted."""
        return cohort_of(self.counts[game], self.share, self.max_size)


def cohort_of(counts: np.ndarray, share: float, max_size: int) -> list[int]:
    """The fewest most-used experts (at most ``max_size``) carrying ``share`` of one game's routing
    counts [E], most used first; empty when nothing was counted."""
    total = counts.sum()
    if total <= 0:
        return []
    order = np.argsort(-counts, kind="stable")
    size = int(np.searchsorted(np.cumsum(counts[order]) / total, share) + 1)
    return [int(e) for e in order[: min(size, max_size)] if counts[e] > 0]


class CohortPrefetcher:
    """Keeps the current game's cohort pinned (and so prefetched) in the store's hbm tier.

    Thread-safe: the actor thread's detector (training) and the evaluation both switch it; the
    evaluation hands it back with :meth:`resume_training`, to the game training last asked for."""

    def __init__(self, store: ExpertStore, cohorts: CohortMap):
        self.store, self.cohorts = store, cohorts
        self.game: int | None = None
        self.training_game: int | None = None
        self.pinned: list[int] = []
        self._lock = threading.Lock()

    def switch(self, game: int | None, training: bool = True) -> None:
        """The game is now ``game``: unpin the previous cohort, pin (prefetching) the new one (None: pin
        nothing). ``training=False``: an evaluation's switch, undone by :meth:`resume_training`."""
        with self._lock:
            if training:
                self.training_game = game
            self._pin(game)

    def resume_training(self) -> None:
        """Pin the cohort of the game training last switched to (after an evaluation)."""
        with self._lock:
            self._pin(self.training_game)

    def _pin(self, game: int | None) -> None:
        if game == self.game:
            return
        self.game = game
        if self.pinned:
            self.store.unpin(self.pinned)
        self.pinned = [] if game is None else self.cohorts.cohort(game)
        if self.pinned:
            self.store.pin(self.pinned)
