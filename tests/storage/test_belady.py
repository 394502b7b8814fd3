"""Belady's replay is optimal: it matches an exhaustive search and is never beaten by LRU."""

from __future__ import annotations

import functools
import random

import pytest

from storage.belady import belady_hits, flatten, lru_hits


def _optimal_hits(accesses: tuple[int, ...], capacity: int) -> int:
    """Most hits any eviction choice reaches (exhaustive search over every victim at every miss)."""

    @functools.lru_cache(maxsize=None)
    def best(i: int, resident: frozenset[int]) -> int:
        if i == len(accesses):
            return 0
        e = accesses[i]
        if e in resident:
            return 1 + best(i + 1, resident)
        if len(resident) < capacity:
            return best(i + 1, resident | {e})
        return max(best(i + 1, (resident - {v}) | {e}) for v in resident)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(40))
def test_belady_equals_exhaustive_search_on_small_traces(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.randint(1, 3)
    trace = tuple(rng.randrange(5) for _ in range(rng.randint(1, 14)))
    assert belady_hits(trace, capacity) == _optimal_hits(trace, capacity)


def test_known_trace_and_lru_gap() -> None:
    # Cyclic access over capacity + 1 items is LRU's worst case: it never hits. Belady misses the
    # 3 cold accesses, then once every 2 accesses (evicting the item needed last): 20 - 9 = 11 hits.
    trace = [0, 1, 2, 3] * 5
    assert lru_hits(trace, 3) == 0
    assert belady_hits(trace, 3) == 11
    assert belady_hits(trace, 4) == lru_hits(trace, 4) == 16
    assert belady_hits(trace, 0) == 0


def test_belady_never_below_lru_on_game_like_traces() -> None:
    rng = random.Random(0)
    steps = []
    for game in [0, 1, 2, 0, 1, 2]:
        cohort = list(range(game * 4, game * 4 + 4))
        steps += [rng.sample(cohort, 2) for _ in range(50)]
    accesses = flatten(steps)
    assert len(accesses) == 600
    for capacity in range(1, 13):
        assert belady_hits(accesses, capacity) >= lru_hits(accesses, capacity)
