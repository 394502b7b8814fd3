"""Memory estimates checked before anything is allocated: an impossible size is one line, not an
allocation traceback (or a process that swaps for hours)."""

from __future__ import annotations

import os

from common.errors import UserError


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(estimate: dict[str, int], sizes: str) -> None:
    """Raise :class:`UserError` when ``estimate`` (what -> a lower bound of its bytes) adds up to more than
    this machine's memory; ``sizes`` names the flags and values the estimate comes from."""
    need, have = sum(estimate.values()), physical_memory()
    if need > have:
        parts = ", ".join(f"{what} {_gib(n)}" for what, n in estimate.items() if n >= need / 100)  # the big ones
        raise UserError(f"{sizes} need at least {_gib(need)} of memory (estimate: {parts}), more than this "
                        f"machine's {_gib(have)}; choose smaller sizes")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
