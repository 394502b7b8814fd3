"""The tiered expert store's settings of a run (``RunConfig.store``; MoE core only)."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass
class StoreConfig:
    hbm_experts: int = 4
    """Experts the hbm tier (the compute device; host memory on a CPU machine) holds; at least --top-k."""
    dram_experts: int = 5
    """Experts the dram tier (pinned host memory on a GPU machine) holds; between --hbm-experts and --num-experts."""
    io_threads: int = 2
    """Background threads that load experts: prefetches, and the misses of a demand after its first (loaded while the demand loads that one)."""
    read_path: str = "preadv"
    """How expert slots are read from NVMe: `preadv` (buffered, through the page cache), `direct` (O_DIRECT into aligned buffers) or `mmap` (copies out of a mapping of the slab file); `bench store` measures them side by side."""
    io_depth: int = 4
    """Disk read requests (of at most 1 MiB) one expert load keeps in flight: the loading thread's own and those of io_depth - 1 reader threads shared by all loads."""
    prefetch: str = "detector"
    """Which experts are kept hot in hbm: `none` (evicted after every update: the floor), `lru` (demand loads, LRU), `detector` (the game detector's change of game pins that game's expert cohort) or `oracle` (the known schedule does)."""
