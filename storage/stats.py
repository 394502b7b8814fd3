"""What the expert store counts, and the rates derived from the counts (one place for the names).

Only demand accesses (``ExpertStore.get``) are hits or misses; a prefetch is never a hit.

- ``hbm_hits`` / ``hbm_misses``: demand accesses that found the expert in hbm / did not (a late
  prefetch, one still in flight when the demand came, is a miss and its wait is stall time).
- ``dram_hits`` / ``dram_misses``: of the hbm misses that the demand itself loaded, those found in
  dram / read from NVMe. ``hit_rate_hbm = hbm_hits / (hbm_hits + hbm_misses)``,
  ``hit_rate_dram = dram_hits / (dram_hits + dram_misses)`` (NaN before any access).
- ``prefetch_issued``: prefetches that started a transfer (already resident or in flight: not
  issued). ``prefetch_used``: issued prefetches whose expert was then demanded before being
  evicted (``prefetch_late`` of them were still in flight then). ``prefetch_wasted``: evicted
  before any demand. ``prefetch_dropped``: found no evictable buffer and gave up.
  ``precision = used / issued``, ``timeliness = (used - late) / used``,
  ``coverage = used / (used + demand loads)``: the share of the experts that had to come from
  below hbm which a prefetch brought.
- ``stall_s``: seconds ``get`` spent waiting for transfers (its own loads and late prefetches).
- ``bytes_<link>``: bytes moved over ``nvme_to_dram``, ``dram_to_hbm``, ``hbm_to_dram``
  (write-back of dirty experts), ``dram_to_nvme`` (write-back to slab files).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LINKS = ("nvme_to_dram", "dram_to_hbm", "hbm_to_dram", "dram_to_nvme")


@dataclass
class StoreCounters:
    """Cumulative counters of one store (see the module docstring for each)."""

    hbm_hits: int = 0
    hbm_misses: int = 0
    dram_hits: int = 0
    dram_misses: int = 0
    prefetch_issued: int = 0
    prefetch_used: int = 0
    prefetch_late: int = 0
    prefetch_wasted: int = 0
    prefetch_dropped: int = 0
    evictions_hbm: int = 0
    evictions_dram: int = 0
    stall_s: float = 0.0
    bytes_nvme_to_dram: int = 0
    bytes_dram_to_hbm: int = 0
    bytes_hbm_to_dram: int = 0
    bytes_dram_to_nvme: int = 0

    def as_dict(self) -> dict[str, float]:
        """The counters plus the derived rates ``hit_rate_hbm``, ``hit_rate_dram``,
        ``prefetch_precision``, ``prefetch_coverage``, ``prefetch_timeliness``."""
        d: dict[str, float] = asdict(self)
        demand_loads = self.dram_hits + self.dram_misses
        d["hit_rate_hbm"] = _ratio(self.hbm_hits, self.hbm_hits + self.hbm_misses)
        d["hit_rate_dram"] = _ratio(self.dram_hits, demand_loads)
        d["prefetch_precision"] = _ratio(self.prefetch_used, self.prefetch_issued)
        d["prefetch_coverage"] = _ratio(self.prefetch_used, self.prefetch_used + demand_loads)
        d["prefetch_timeliness"] = _ratio(self.prefetch_used - self.prefetch_late, self.prefetch_used)
        return d


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
