r"""`run.py eval --compare DIR1 DIR2 ...`: a side-by-side table of finished runs, with intervals.

Each run's ``eval/forgetting.json`` is read as written (nothing is re-evaluated). Runs whose
configs (``config.json``) differ only in ``seed`` form one *group* (the seeds of one method); a
group is labelled by its ``<config>`` directory when its runs lie in ``results/<experiment>/<config>/seed<S>``
(one such directory per group), else by the config fields whose values differ between groups
(``model.core=elstm``), or by its first run's directory name when there is a single group. Every interval is a 95%
percentile bootstrap interval with a fixed resampling seed (0) and ``reps`` replicates.

Per group, with :math:`h^{(n)}_g` the final-stage HNS of seed ``n`` on game ``g``:

- ``final_hns/<game>`` :math:`= \operatorname{mean}_n h^{(n)}_g` (finite entries only);
- ``mean_hns`` the mean of all (seed, game) entries :math:`h^{(n)}_g` (the final average HNS), with
  ``mean_hns_low``, ``mean_hns_high`` its stratified bootstrap interval as the IQM's;
- ``iqm`` the interquartile mean of all (seed, game) entries :math:`h^{(n)}_g`, with ``iqm_low``,
  ``iqm_high`` its stratified bootstrap interval (strata = games, resampled runs = seeds;
  :func:`eval.metrics.stratified_bootstrap_ci`);
- ``learning/<game>`` (with ``learning_low/<game>``, ``learning_high/<game>``): did training the
  game improve it? With :math:`i_g` the first stage that trains ``g`` and :math:`e^{(n)}_{s,g}`
  the HNS of the episodes of seed ``n``'s evaluation in row ``s`` (``episode_returns``
  normalised), the point is :math:`\operatorname{mean}_n (\bar e^{(n)}_{i_g,g} - \bar
  e^{(n)}_{0,g})`, the stage-end score minus the before-training score, and the interval
  resamples seeds and, within each drawn seed, the episodes of each of the two evaluations
  (:func:`eval.metrics.two_level_bootstrap_difference_ci`). ``learned/<game>`` reads the
  interval: ``yes`` (it lies above 0), ``worse`` (below 0) or ``unclear`` (it holds 0). A run
  whose file has no episode returns for the two cells (written before they were kept) is left
  out, and the ``note`` row names it;
- ``mean_forgetting`` and ``bwt`` (with ``_low``, ``_high``): the mean over seeds of each run's
  ``metrics.<name>``, with the bootstrap interval over seeds (:func:`eval.metrics.stratified_bootstrap_ci`
  of one stratum, statistic the mean);
- ``forgetting/<game>`` (with ``forgetting_low/<game>``, ``forgetting_high/<game>``): the same
  for each game's own forgetting (``metrics.forgetting``; undefined for the last game), so a
  forgetting that another game's gain cancels in the mean still shows;
- ``mean_zero_shot_transfer`` and ``mean_forward_transfer``: the mean over seeds of each run's
  ``metrics.<name>`` (forward transfer needs the runs evaluated with ``--reference-run``);
- ``wall_minutes``: the mean over seeds of each run's wall time, training + evaluation
  (``forgetting.json``'s ``wall_seconds``, :func:`eval.forgetting.read_wall_seconds`) / 60. A run
  without it (an older file, or a run resumed across that upgrade) is left out, and named in the
  ``note`` row when other seeds of its group have it.

A run where a metric is ``null`` is left out of it; a cell is empty when no run has it. With one
seed the intervals over seeds collapse to the point (the learning interval then holds the episode
noise only); the ``note`` row says so.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.config import ModelConfig
from common.errors import UserError
from envs.config import EnvConfig
from envs.registry import normalized_score
from eval.config import EvalConfig
from eval.forgetting import mean_or_none, read_episode_returns, read_forgetting, read_wall_seconds
from eval.metrics import first_stages, stratified_bootstrap_ci, two_level_bootstrap_difference_ci
from storage.atomic import atomic_write_text
from storage.config import StoreConfig
from storage.run_dir import RunDir

CSV_NAME = "compare.csv"
_SEED_INTERVAL_METRICS = ("mean_forgetting", "bwt")
"""Per-run scalars of ``forgetting.json``'s metrics, averaged over each group's seeds with an interval."""
_MEAN_METRICS = ("mean_zero_shot_transfer", "mean_forward_transfer")
"""Per-run scalars of ``forgetting.json``'s metrics, averaged over each group's seeds."""
_IGNORED = ("seed", "device")
"""Config fields that may differ inside one group (its runs are then seeds of one method, on any device)."""


@dataclass
class Run:
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
    runs = [load_run(d) for d in run_dirs]
    _check_same_games(runs)
    groups = group_runs(runs)
    labels = group_labels(groups)
    games = list(runs[0].doc["games"])
    columns = [_group_stats(g, games, reps) for g in groups]

    rows: list[tuple[str, list[Any]]] = [
        ("runs", [";".join(r.root.name for r in g) for g in groups]),
        ("seeds", [c["seeds"] for c in columns]),
    ]
    rows += [(f"final_hns/{game}", [c["final_hns"][j] for c in columns]) for j, game in enumerate(games)]
    rows += [(name, [c[name] for c in columns])
             for name in ("mean_hns", "mean_hns_low", "mean_hns_high", "iqm", "iqm_low", "iqm_high")]
    rows += [(f"{name}/{game}", [c[name][j] for c in columns])
             for j, game in enumerate(games) for name in ("learning", "learning_low", "learning_high", "learned")]
    rows += [(f"{name}{suffix}", [c[f"{name}{suffix}"] for c in columns])
             for name in _SEED_INTERVAL_METRICS for suffix in ("", "_low", "_high")]
    rows += [(f"{name}/{game}", [c[name][j] for c in columns])
             for j, game in enumerate(games) for name in ("forgetting", "forgetting_low", "forgetting_high")]
    rows += [(name, [c[name] for c in columns]) for name in (*_MEAN_METRICS, "wall_minutes", "note")]

    csv_path = Path(csv_path) if csv_path is not None else RunDir(run_dirs[0]).eval / CSV_NAME
    atomic_write_text(csv_path, _csv_text(labels, rows))
    print(_table_text(labels, rows, games), end="", flush=True)
    print(f"wrote {csv_path}", flush=True)
    return {"labels": labels, "rows": rows, "csv": csv_path}


def load_run(root: Path) -> Run:
    """A finished run's flattened config and ``eval/forgetting.json`` (UserError if it has no stage row)."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    rd = RunDir(root)
    config = {**_layer_defaults(), **_flatten(rd.read_config_json())}
    doc = read_forgetting(rd.eval)
    if len(doc["hns"]) < 2:  # the before-training row alone: no stage has ended
        raise UserError(f"{rd.eval / 'forgetting.json'} has no stage rows; finish a stage, then "
                        "re-run `python run.py eval`")
    return Run(root, config, doc)


def _layer_defaults() -> dict[str, Any]:
    """The flattened defaults of the config sections below eval, so a config.json written before a
    field existed groups with newer runs of the same method (a new field's default keeps old behaviour)."""
    sections = {"env": EnvConfig(), "eval": EvalConfig(), "model": ModelConfig(), "store": StoreConfig()}
    return _flatten({name: asdict(section) for name, section in sections.items()})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_same_games(runs: list[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in ("games", "stage_games"):
            a, b = first.doc.get(key), run.doc.get(key)
            if a != b:
                raise UserError(
                    f"cannot compare runs with different {key}: {first.root} has {a}, {run.root} has {b}"
                )


def group_runs(runs: list[Run], ignored: tuple[str, ...] = _IGNORED) -> list[list[Run]]:
    """Runs whose configs agree outside ``ignored``, in order of first appearance."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in ignored))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def group_labels(groups: list[list[Run]], ignored: tuple[str, ...] = _IGNORED,
                 config_name: Callable[[str], str] = lambda name: name) -> list[str]:
    """Each group's label: its ``config_name(<config>)`` when its runs lie in
    ``results/<experiment>/<config>/seed<S>`` and that names it alone, else the config fields (outside
    ``ignored``) that differ between groups, or the run's directory name when there is one group."""
    dirs = [{config_name(r.root.parent.name) if re.fullmatch(r"seed\d+", r.root.name) else None for r in g}
            for g in groups]
    if all(len(d) == 1 and None not in d for d in dirs) and len(set().union(*dirs)) == len(groups):
        return [d.pop() for d in dirs]
    if len(groups) == 1:
        return [groups[0][0].root.name]
    reps = [g[0].config for g in groups]
    keys = sorted({k for c in reps for k in c})
    differing = [k for k in keys if k not in ignored and len({repr(c.get(k)) for c in reps}) > 1]
    return [",".join(f"{k}={_value_text(c.get(k))}" for k in differing) for c in reps]


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def _group_stats(group: list[Run], games: list[str], reps: int) -> dict[str, Any]:
    """One group's column: the cells of :func:`compare_runs`' rows (per-game rows as lists ``[G]``)."""
    final = np.array([[math.nan if x is None else float(x) for x in r.doc["hns"][-1]] for r in group],
                     dtype=np.float64).reshape(len(group), len(games))  # [seeds, games]
    final_hns = [mean_or_none(final[:, j]) for j in range(len(games))]
    stats: dict[str, Any] = {"seeds": len(group), "final_hns": final_hns}
    if np.isfinite(final).any():
        point, low, high = stratified_bootstrap_ci(final, reps=reps, seed=0)
        stats.update(iqm=point, iqm_low=low, iqm_high=high)
        point, low, high = stratified_bootstrap_ci(final, statistic=np.mean, reps=reps, seed=0)
        stats.update(mean_hns=point, mean_hns_low=low, mean_hns_high=high)
    else:
        stats.update({name: None for name in ("iqm", "iqm_low", "iqm_high",
                                               "mean_hns", "mean_hns_low", "mean_hns_high")})
    learning, without_episodes = _learning(group, games, reps)
    stats["learning"], stats["learning_low"], stats["learning_high"] = (list(x) for x in zip(*learning))
    stats["learned"] = [None if p is None else _verdict(low, high) for p, low, high in learning]
    for name in _SEED_INTERVAL_METRICS:
        point, low, high = _seed_interval([r.doc["metrics"].get(name) for r in group], reps)
        stats.update({name: point, f"{name}_low": low, f"{name}_high": high})
    per_game = [_seed_interval([(r.doc["metrics"].get("forgetting") or {}).get(g) for r in group], reps)
                for g in games]  # the last game's forgetting is undefined (None)
    stats["forgetting"], stats["forgetting_low"], stats["forgetting_high"] = (list(x) for x in zip(*per_game))
    for name in _MEAN_METRICS:
        values = [r.doc["metrics"].get(name) for r in group]
        stats[name] = mean_or_none(np.array([v for v in values if v is not None], dtype=np.float64))
    walls = [read_wall_seconds(r.doc) for r in group]
    stats["wall_minutes"] = mean_or_none(np.array([w / 60.0 for w in walls if w is not None], dtype=np.float64))
    notes = []
    if stats["iqm"] is None:
        notes.append("no finite final HNS")
    elif len(group) == 1:
        notes.append("1 seed: interval degenerate over seeds")
    if without_episodes:
        notes.append(f"no episode returns in {', '.join(without_episodes)} (older forgetting.json; "
                     "`run.py eval --run-dir` rewrites it): left out of learning")
    without_wall = [r.root.name for r, w in zip(group, walls) if w is None]
    if without_wall and stats["wall_minutes"] is not None:
        notes.append(f"no wall time in {', '.join(without_wall)} (older forgetting.json): left out of wall minutes")
    stats["note"] = "; ".join(notes)
    return stats


def _learning(group: list[Run], games: list[str], reps: int
              ) -> tuple[list[tuple[float | None, float | None, float | None]], list[str]]:
    """``([G] (point, low, high) of each game's learning, all None where undefined), [names of the
    runs without episode returns for a trained game's two cells]``."""
    first = first_stages(group[0].doc["stage_games"])
    episodes = [read_episode_returns(r.doc) for r in group]
    learning, without = [], []
    for j, game in enumerate(games):
        if game not in first:  # never trained: nothing to learn
            learning.append((None, None, None))
            continue
        after, before = [], []
        for run, cells in zip(group, episodes):
            pair = None if cells is None else (cells[first[game]][j], cells[0][j])
            if pair is None or any(c is None or not np.isfinite(c).any() for c in pair):
                without.append(run.root.name)
                continue
            after.append(normalized_score(game, pair[0]))
            before.append(normalized_score(game, pair[1]))
        learning.append(two_level_bootstrap_difference_ci(after, before, reps=reps, seed=0) if after
                        else (None, None, None))
    return learning, list(dict.fromkeys(without))


def _verdict(low: float, high: float) -> str:
    """What a learning interval says: ``yes`` (above 0), ``worse`` (below 0), ``unclear`` (holds 0)."""
    return "yes" if low > 0.0 else "worse" if high < 0.0 else "unclear"


def _csv_text(labels: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    """Header ``metric,<label>...``; one row per metric; floats at full precision, None empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric"] + labels)
    for name, cells in rows:
        writer.writerow([name] + ["" if c is None else repr(c) if isinstance(c, float) else str(c)
                                  for c in cells])
    return out.getvalue()


def _seed_interval(values: list[float | None], reps: int) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) over the seeds' defined ``values`` with the bootstrap interval over seeds;
    all None when no seed defines it."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return stratified_bootstrap_ci(defined, statistic=np.mean, reps=reps, seed=0) if defined.size else (None, None, None)


def _table_text(labels: list[str], rows: list[tuple[str, list[Any]]], games: list[str]) -> str:
    """The printed table: groups as columns, each interval folded into its point's row."""
    cells = dict(rows)
    lines: list[tuple[str, list[str]]] = [("seeds", [str(s) for s in cells["seeds"]])]
    lines += [(f"final HNS {g}", [_fmt(x) for x in cells[f"final_hns/{g}"]]) for g in games]
    lines.append(("final mean HNS [95% CI]", _interval_cells(cells, "mean_hns")))
    lines.append(("IQM [95% CI]", _interval_cells(cells, "iqm")))
    lines += [(f"learning {g} [95% CI]", [f"{text} {verdict}" if verdict else text for text, verdict in
                                          zip(_interval_cells(cells, "learning", f"/{g}"), cells[f"learned/{g}"])])
              for g in games]
    lines.append(("mean forgetting [95% CI]", _interval_cells(cells, "mean_forgetting")))
    lines += [(f"  forgetting {g} [95% CI]", _interval_cells(cells, "forgetting", f"/{g}")) for g in games[:-1]]
    lines.append(("BWT [95% CI]", _interval_cells(cells, "bwt")))
    lines.append(("zero-shot transfer", [_fmt(x) for x in cells["mean_zero_shot_transfer"]]))
    lines.append(("forward transfer", [_fmt(x) for x in cells["mean_forward_transfer"]]))
    lines.append(("wall minutes (train + eval)", [_fmt(x) for x in cells["wall_minutes"]]))
    if any(cells["note"]):
        lines.append(("note", [n or "-" for n in cells["note"]]))
    width0 = max(len(name) for name, _ in lines)
    widths = [max(len(labels[i]), *(len(vals[i]) for _, vals in lines)) for i in range(len(labels))]
    text = "  ".join([" " * width0] + [lab.rjust(w) for lab, w in zip(labels, widths)]).rstrip() + "\n"
    for name, vals in lines:
        text += "  ".join([name.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]) + "\n"
    return text


def _interval_cells(cells: dict[str, list[Any]], name: str, game: str = "") -> list[str]:
    """``point [low, high]`` per group from the rows ``<name><game>``, ``_low``, ``_high`` (``game``
    is ``""`` or ``"/<game>"``); ``n/a`` where there is no point."""
    return ["n/a" if p is None else f"{p:.3f} [{lo:.3f}, {hi:.3f}]"
            for p, lo, hi in zip(cells[f"{name}{game}"], cells[f"{name}_low{game}"], cells[f"{name}_high{game}"])]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
