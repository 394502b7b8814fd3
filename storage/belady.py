"""Belady's optimal offline replacement: the upper bound on any cache policy's hit rate.

Given the whole demand trace in advance, evicting the resident whose next use lies farthest in
the future (never used again = infinitely far) minimises misses (Belady 1966; Mattson et al.
1970). Replaying a trace recorded by ``ExpertStore(record_trace=True)`` at the store's hbm
capacity bounds what LRU, prefetching or any predictor can reach at that capacity; at the dram
capacity it bounds the reads that must come from NVMe.
"""

from __future__ import annotations

import heapq
from typing import Sequence


def flatten(trace: Sequence[Sequence[int]]) -> list[int]:
    """One access per element: the steps' expert ids in order."""
    return [e for step in trace for e in step]


def belady_hits(accesses: Sequence[int], capacity: int) -> int:
    """Hits of the optimal policy on ``accesses`` with a cache of ``capacity`` entries (starting empty).

    O(n log n): the next use of every access is precomputed backwards; residents sit in a max-heap
    keyed by next use, with stale entries skipped lazily.
    """
    if capacity <= 0:
        return 0
    n = len(accesses)
    never = n  # beyond the end: farther than any real use
    next_use = [never] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = last.get(accesses[i], never)
        last[accesses[i]] = i
    resident: dict[int, int] = {}  # id -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, id); may hold stale entries
    hits = 0
    for i, e in enumerate(accesses):
        if e in resident:
            hits += 1
        elif len(resident) >= capacity:
            while True:
                neg, victim = heapq.heappop(heap)
                if resident.get(victim) == -neg:
                    del resident[victim]
                    break
        resident[e] = next_use[i]
        heapq.heappush(heap, (-next_use[i], e))
    return hits


def lru_hits(accesses: Sequence[int], capacity: int) -> int:
    """Hits of LRU on ``accesses`` (the simulated policy the store implements; for comparisons)."""
    order: dict[int, None] = {}
    hits = 0
    for e in accesses:
        if e in order:
            hits += 1
            del order[e]
        elif len(order) >= capacity:
            del order[next(iter(order))]
        order[e] = None
    return hits
