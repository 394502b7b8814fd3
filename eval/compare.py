r"""`run.py eval --compare DIR1 DIR2 ...`: a side-by-side table of finished runs, with intervals.

Each run's ``eval/forgetting.json`` is read as written (nothing is re-evaluated). Runs whose
configs (``config.json``) differ only in ``seed`` form one *group* (the seeds of one method); a
group is labelled by the config fields whose values differ between groups (``model.core=elstm``),
or by its first run's directory name when there is a single group.

Per group, with :math:`h^{(n)}_g` the final-stage HNS of seed ``n`` on game ``g``:

- ``final_hns/<game>`` :math:`= \operatorname{mean}_n h^{(n)}_g` (finite entries only);
- ``iqm`` the interquartile mean of all (seed, game) entries :math:`h^{(n)}_g`, with ``iqm_low``,
  ``iqm_high`` its 95% stratified bootstrap interval (strata = games, resampled runs = seeds;
  :func:`eval.metrics.stratified_bootstrap_ci`, fixed resampling seed). With one seed every
  stratum has one value, so the interval collapses to the point; the ``note`` row says so;
- ``mean_forgetting``, ``bwt``, ``mean_zero_shot_transfer`` and ``mean_forward_transfer``: the
  mean over seeds of each run's ``metrics.<name>`` (runs where it is ``null`` are left out; the
  cell is empty when none has it; forward transfer needs the runs evaluated with
  ``--reference-run``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from eval.forgetting import mean_or_none, read_forgetting
from eval.metrics import stratified_bootstrap_ci
from storage.atomic import atomic_write_text
from storage.run_dir import RunDir

CSV_NAME = "compare.csv"
_RUN_METRICS = ("mean_forgetting", "bwt", "mean_zero_shot_transfer", "mean_forward_transfer")
"""Per-run scalars of ``forgetting.json``'s metrics, averaged over each group's seeds."""
_IGNORED = ("seed", "device")
"""Config fields that may differ inside one group (its runs are then seeds of one method, on any device)."""


@dataclass
class _Run:
    root: Path
    config: dict[str, Any]  # flattened ``section.field -> value``
    doc: dict[str, Any]


def compare_runs(run_dirs: list[Path], csv_path: Path | None = None, reps: int = 2000) -> dict[str, Any]:
    """Compare the runs in ``run_dirs``; print the table, write it as CSV, return it.

    Returns:
        ``{"labels": [group labels], "rows": [(row name, [cell per group])], "csv": path}``;
        cells are floats, ints, strings or ``None`` (empty in the CSV).

    Raises:
        UserError: a directory is not a run dir or has no ``eval/forgetting.json``, a run is given
            twice, or two runs differ in games or stage games.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("--compare needs at least one run dir")
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            raise UserError(f"run {d} is given twice to --compare")
        seen[key] = d
    runs = [_load(d) for d in run_dirs]
    _check_same_games(runs)
    groups = _group(runs)
    labels = _labels(groups)
    games = list(runs[0].doc["games"])
    columns = [_group_stats(g, len(games), reps) for g in groups]

    rows: list[tuple[str, list[Any]]] = [
        ("runs", [";".join(r.root.name for r in g) for g in groups]),
        ("seeds", [c["seeds"] for c in columns]),
    ]
    rows += [(f"final_hns/{game}", [c["final_hns"][j] for c in columns]) for j, game in enumerate(games)]
    rows += [(name, [c[name] for c in columns])
             for name in ("iqm", "iqm_low", "iqm_high", *_RUN_METRICS, "note")]

    csv_path = Path(csv_path) if csv_path is not None else RunDir(run_dirs[0]).eval / CSV_NAME
    atomic_write_text(csv_path, _csv_text(labels, rows))
    print(_table_text(labels, rows, games), end="", flush=True)
    print(f"wrote {csv_path}", flush=True)
    return {"labels": labels, "rows": rows, "csv": csv_path}


def _load(root: Path) -> _Run:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    rd = RunDir(root)
    config = _flatten(rd.read_config_json())
    doc = read_forgetting(rd.eval)
    if len(doc["hns"]) < 2:  # the before-training row alone: no stage has ended
        raise UserError(f"{rd.eval / 'forgetting.json'} has no stage rows; finish a stage, then "
                        "re-run `python run.py eval`")
    return _Run(root, config, doc)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_same_games(runs: list[_Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in ("games", "stage_games"):
            a, b = first.doc.get(key), run.doc.get(key)
            if a != b:
                raise UserError(
                    f"cannot compare runs with different {key}: {first.root} has {a}, {run.root} has {b}"
                )


def _group(runs: list[_Run]) -> list[list[_Run]]:
    """Runs whose configs agree outside :data:`_IGNORED`, in order of first appearance."""
    groups: dict[tuple, list[_Run]] = {}
    for run in runs:
        key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in _IGNORED))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _labels(groups: list[list[_Run]]) -> list[str]:
    if len(groups) == 1:
        return [groups[0][0].root.name]
    reps = [g[0].config for g in groups]
    keys = sorted({k for c in reps for k in c})
    differing = [k for k in keys if k not in _IGNORED and len({repr(c.get(k)) for c in reps}) > 1]
    return [",".join(f"{k}={_value_text(c.get(k))}" for k in differing) for c in reps]


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def _group_stats(group: list[_Run], num_games: int, reps: int) -> dict[str, Any]:
    final = np.array([[math.nan if x is None else float(x) for x in r.doc["hns"][-1]] for r in group],
                     dtype=np.float64).reshape(len(group), num_games)  # [seeds, games]
    final_hns = [mean_or_none(final[:, j]) for j in range(num_games)]
    stats: dict[str, Any] = {"seeds": len(group), "final_hns": final_hns}
    if np.isfinite(final).any():
        point, low, high = stratified_bootstrap_ci(final, reps=reps, seed=0)
        stats.update(iqm=point, iqm_low=low, iqm_high=high)
    else:
        stats.update(iqm=None, iqm_low=None, iqm_high=None)
    for name in _RUN_METRICS:
        values = [r.doc["metrics"].get(name) for r in group]
        stats[name] = mean_or_none(np.array([v for v in values if v is not None], dtype=np.float64))
    if stats["iqm"] is None:
        stats["note"] = "no finite final HNS"
    elif len(group) == 1:
        stats["note"] = "1 seed: interval degenerate"
    else:
        stats["note"] = ""
    return stats


def _csv_text(labels: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    """Header ``metric,<label>...``; one row per metric; floats at full precision, None empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric"] + labels)
    for name, cells in rows:
        writer.writerow([name] + ["" if c is None else repr(c) if isinstance(c, float) else str(c)
                                  for c in cells])
    return out.getvalue()


def _table_text(labels: list[str], rows: list[tuple[str, list[Any]]], games: list[str]) -> str:
    """The printed table: groups as columns, the interval folded into the IQM row."""
    cells = dict(rows)
    lines: list[tuple[str, list[str]]] = [("seeds", [str(s) for s in cells["seeds"]])]
    lines += [(f"final HNS {g}", [_fmt(x) for x in cells[f"final_hns/{g}"]]) for g in games]
    lines.append(("IQM [95% CI]", [
        "n/a" if p is None else f"{p:.3f} [{lo:.3f}, {hi:.3f}]"
        for p, lo, hi in zip(cells["iqm"], cells["iqm_low"], cells["iqm_high"])]))
    lines.append(("mean forgetting", [_fmt(x) for x in cells["mean_forgetting"]]))
    lines.append(("BWT", [_fmt(x) for x in cells["bwt"]]))
    lines.append(("zero-shot transfer", [_fmt(x) for x in cells["mean_zero_shot_transfer"]]))
    lines.append(("forward transfer", [_fmt(x) for x in cells["mean_forward_transfer"]]))
    if any(cells["note"]):
        lines.append(("note", [n or "-" for n in cells["note"]]))
    width0 = max(len(name) for name, _ in lines)
    widths = [max(len(labels[i]), *(len(vals[i]) for _, vals in lines)) for i in range(len(labels))]
    text = "  ".join([" " * width0] + [lab.rjust(w) for lab, w in zip(labels, widths)]).rstrip() + "\n"
    for name, vals in lines:
        text += "  ".join([name.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]) + "\n"
    return text


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
