r"""`run.py eval --sweep DIR1 DIR2 ...`: success against delay, from finished T-maze runs.

Each run trained one game, a T-maze ``tmaze-D`` or ``tmaze-D-kK`` (``envs/memory/tmaze.py``), and
its ``eval/forgetting.json`` is read as written. A T-maze episode returns 1 when the agent takes the
cued exit and 0 otherwise, so the mean return of an evaluation is its *success*: the fraction of
episodes that took the cued exit (chance: 1/K).

Runs are grouped into *methods* by their configs without ``seed``, ``device`` and the game (so the
delays of one method form one row); a method is labelled by its ``<config>`` directory without the
``-D<delay>`` suffix when the runs lie in ``results/<experiment>/<method>-D<delay>/seed<S>``, else
by the config fields that differ between methods. Per method and delay, with :math:`s^{(n)}_k`
the return of episode ``k`` of seed ``n``'s stage-end evaluation:

- ``success`` :math:`= \operatorname{mean}_n \bar s^{(n)}`, with a 95% two-level bootstrap interval
  (seeds, then each drawn seed's episodes; :func:`eval.metrics.two_level_bootstrap_mean_ci`, fixed
  resampling seed 0), and ``seeds`` the number of runs;
- ``wall_minutes``: the mean of the runs' wall times (train + evaluation), when they have one.

Output: the table (methods x delays) on stdout, a CSV (one row per method and delay) and a PNG
(success against delay on a log axis, one line per method with its intervals, chance dashed).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from envs.memory import tmaze
from eval.compare import Run, group_labels, group_runs, load_run
from eval.forgetting import read_wall_seconds
from eval.metrics import two_level_bootstrap_mean_ci
from storage.atomic import atomic_write_bytes, atomic_write_text

_IGNORED = ("seed", "device", "env.games")
"""Config fields that may differ inside one method (its seeds, and its delays)."""


def sweep_runs(run_dirs: list[Path], csv_path: Path | None = None, png_path: Path | None = None,
               reps: int = 2000) -> dict[str, Any]:
    """Tabulate success against delay over ``run_dirs``; print the table, write the CSV and the PNG.

    ``csv_path`` / ``png_path`` default to ``sweep.csv`` / ``sweep.png`` beside the first run's
    ``<config>`` directory (``results/<experiment>/``).

    Returns:
        ``{"methods": [label], "delays": [D], "cells": {(label, D): {"success", "low", "high",
        "seeds", "wall_minutes", "exits"}}, "csv": path, "png": path}``.

    Raises:
        UserError: a directory is not a finished run, its run did not train exactly one T-maze, or
            a method has two runs of one seed at one delay.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("--sweep needs at least one run dir")
    runs = [_tmaze_run(load_run(d)) for d in run_dirs]
    groups = group_runs([r for r, _ in runs], ignored=_IGNORED)
    labels = group_labels(groups, ignored=_IGNORED, config_name=lambda name: re.sub(r"-D\d+$", "", name))
    facts = {id(r): f for r, f in runs}
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for label, group in zip(labels, groups):
        for delay in sorted({facts[id(r)]["delay"] for r in group}):
            at = [r for r in group if facts[id(r)]["delay"] == delay]
            seeds = [r.config.get("seed") for r in at]
            if len(set(seeds)) < len(seeds):
                raise UserError(f"method {label!r} has two runs of one seed at delay {delay}: "
                                + ", ".join(str(r.root) for r in at))
            point, low, high = two_level_bootstrap_mean_ci([facts[id(r)]["episodes"] for r in at], reps=reps)
            walls = [w / 60.0 for w in (read_wall_seconds(r.doc) for r in at) if w is not None]
            cells[(label, delay)] = {"success": point, "low": low, "high": high, "seeds": len(at),
                                     "wall_minutes": float(np.mean(walls)) if walls else None,
                                     "exits": facts[id(at[0])]["exits"]}
    delays = sorted({d for _, d in cells})
    home = run_dirs[0].parent.parent if re.fullmatch(r"seed\d+", run_dirs[0].name) else run_dirs[0]
    csv_path = Path(csv_path) if csv_path is not None else home / "sweep.csv"
    png_path = Path(png_path) if png_path is not None else home / "sweep.png"
    atomic_write_text(csv_path, _csv_text(cells))
    atomic_write_bytes(png_path, _png(labels, delays, cells))
    print(_table_text(labels, delays, cells), end="", flush=True)
    print(f"wrote {csv_path} and {png_path}", flush=True)
    return {"methods": labels, "delays": delays, "cells": cells, "csv": csv_path, "png": png_path}


def _tmaze_run(run: Run) -> tuple[Run, dict[str, Any]]:
    """The run and its T-maze's delay, exits and stage-end episode returns."""
    games = run.doc["games"]
    if len(games) != 1 or tmaze.parse(games[0]) is None:
        raise UserError(f"{run.root} trained {', '.join(games)}: --sweep reads runs of one T-maze each "
                        "(tmaze-D or tmaze-D-kK)")
    delay, exits = tmaze.parse(games[0])
    return run, {"delay": delay, "exits": exits, "episodes": np.asarray(run.doc["episode_returns"][-1][0], dtype=float)}


def _csv_text(cells: dict[tuple[str, int], dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "delay", "exits", "seeds", "success", "success_low", "success_high", "wall_minutes"])
    for (label, delay), c in cells.items():
        wall = "" if c["wall_minutes"] is None else f"{c['wall_minutes']:.3f}"
        w.writerow([label, delay, c["exits"], c["seeds"], f"{c['success']:.6g}", f"{c['low']:.6g}",
                    f"{c['high']:.6g}", wall])
    return buf.getvalue()


def _table_text(labels: list[str], delays: list[int], cells: dict[tuple[str, int], dict[str, Any]]) -> str:
    head = ["success [95% CI] (seeds)"] + [f"D={d}" for d in delays]
    rows = [[label] + [_cell(cells.get((label, d))) for d in delays] for label in labels]
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    return "".join("  ".join(x.ljust(w) if j == 0 else x.rjust(w) for j, (x, w) in enumerate(zip(r, widths))) + "\n"
                   for r in [head, *rows])


def _cell(c: dict[str, Any] | None) -> str:
    return "-" if c is None else f"{c['success']:.2f} [{c['low']:.2f}, {c['high']:.2f}] ({c['seeds']})"


def _png(labels: list[str], delays: list[int], cells: dict[tuple[str, int], dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label in labels:
        ds = [d for d in delays if (label, d) in cells]
        y = np.array([cells[(label, d)]["success"] for d in ds])
        err = np.array([[y[i] - cells[(label, d)]["low"], cells[(label, d)]["high"] - y[i]] for i, d in enumerate(ds)]).T
        ax.errorbar(ds, y, yerr=err, marker="o", capsize=3, label=label)
    for k in sorted({c["exits"] for c in cells.values()}):
        ax.axhline(1.0 / k, color="grey", linestyle="--", linewidth=1)
        ax.text(delays[0], 1.0 / k + 0.01, f"chance (K={k})", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("delay D (steps between cue and choice, minus 1)")
    ax.set_ylabel("success (cued exit taken)")
    ax.set_ylim(0.0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
