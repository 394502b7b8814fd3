r"""A run's evaluation history: every evaluation with its frame count, the curves file and plot,
and forward transfer against single-task reference runs.

One evaluation is a *point*, a plain dict (so it is saved in checkpoints as plain data)::

    {"frames": F, "stage": i, "kind": k, "returns": [G mean raw returns, NaN = failed],
     "episodes": [G lists [K] of each episode's raw return], "wall_s": W}

``frames`` is the run's total environment frames when it was taken (the TensorBoard step);
``kind`` is ``before`` (the initial parameters, ``stage`` 0, ``frames`` 0), ``periodic`` (every
``eval.every`` frames while stage ``i`` trains, 1-based) or ``stage`` (at the end of stage ``i``).
``returns`` and ``episodes`` follow the run's columns, :func:`eval_columns`; ``episodes`` is
absent from points read back from ``curves.csv`` (it holds the means only) and from histories
saved by versions before it existed, which load unchanged. ``wall_s`` is the run's wall seconds
of training and evaluation when the point was taken, before its own evaluation
(``train/checkpointing.py`` ``Progress``); it is absent where unknown (points saved before it
existed, or a run resumed across that upgrade). The history is saved in every
checkpoint and streamed to ``eval/curves.csv`` (rewritten atomically after every evaluation, and
on resume from the checkpoint's history, so points a killed attempt took after its checkpoint are
dropped and retaken, never duplicated). ``eval/curves.png`` plots it: one panel per game, x = total
frames, each training stage shaded and labelled with its game (the panel's own game in orange).

The forgetting matrix is the ``before`` point followed by the ``stage`` points
(:func:`matrix_returns`, :func:`matrix_episodes`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.errors import UserError
from envs.registry import normalized_score
from eval.metrics import auc_forward_transfer, first_stages
from eval.score_csv import score_cell, score_cells, score_header
from storage.atomic import atomic_write_bytes, atomic_write_text
from storage.run_dir import RunDir

BEFORE, PERIODIC, STAGE = "before", "periodic", "stage"
KINDS = (BEFORE, PERIODIC, STAGE)
CSV_NAME = "curves.csv"
PNG_NAME = "curves.png"
PANEL_INCHES = (5.0, 3.2)
"""Size of one game's panel in curves.png (inches at 100 dpi): a 2-game plot is 1000 x 320 pixels."""
PANELS_PER_ROW = 3
DPI = 100


def eval_columns(schedule: list[str]) -> list[str]:
    """The matrix's and the curves' columns: the schedule's games, each once, in order of first training."""
    return list(dict.fromkeys(schedule))


def eval_point(frames: int, stage: int, kind: str, returns: list[float],
               episodes: list[list[float]] | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """One evaluation as plain data (see the module docstring): ``returns`` ``[G]`` the means,
    ``episodes`` ``[G][K]`` the episodes behind them (``None``: the point has no ``episodes`` key),
    ``wall_s`` the run's wall seconds before it (``None`` or NaN: the point has no ``wall_s`` key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    point = {"frames": int(frames), "stage": int(stage), "kind": kind, "returns": [float(r) for r in returns]}
    if episodes is not None:
        if len(episodes) != len(returns):
            raise ValueError(f"episodes must hold one list per game ({len(returns)}), got {len(episodes)}")
        point["episodes"] = [[float(r) for r in cell] for cell in episodes]
    if wall_s is not None and math.isfinite(wall_s):
        point["wall_s"] = float(wall_s)
    return point


def normalized_matrix(games: list[str], returns: np.ndarray) -> np.ndarray:
    """``[rows, G]`` normalised scores of ``returns`` ``[rows, G]`` (column ``g`` is ``games[g]``).

    Each entry is ``envs.registry.normalized_score(game, return)``: ``(r - low) / (high - low)``
    with the game's bounds (Atari: random and human scores); NaN stays NaN.
    """
    returns = np.asarray(returns, dtype=np.float64).reshape(-1, len(games))
    return np.array([[normalized_score(g, r) for g, r in zip(games, row)] for row in returns],
                    dtype=np.float64).reshape(returns.shape)


def matrix_returns(history: list[dict[str, Any]], num_games: int) -> np.ndarray:
    """The forgetting matrix's returns ``[S + 1, G]``: the ``before`` point, then the ``stage`` points.

    Raises:
        ValueError: the history does not start with one ``before`` point or its stage points are
            not stages 1, 2, ... in order (a bug: the trainer writes them so).
    """
    rows = _matrix_points(history)
    return np.array([p["returns"] for p in rows], dtype=np.float64).reshape(len(rows), num_games)


def matrix_episodes(history: list[dict[str, Any]], num_games: int) -> list[list[list[float] | None]]:
    """The forgetting matrix's episode returns ``[S + 1][G]`` (lists ``[K]``), rows as in
    :func:`matrix_returns`; a point without ``episodes`` (an older history) gives ``None`` cells.

    Raises:
        ValueError: as :func:`matrix_returns`.
    """
    return [p["episodes"] if "episodes" in p else [None] * num_games for p in _matrix_points(history)]


def _matrix_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``before`` point and the ``stage`` points of ``history``, checked to be rows 0..S in order."""
    rows = [p for p in history if p["kind"] in (BEFORE, STAGE)]
    if not rows or rows[0]["kind"] != BEFORE or [p["stage"] for p in rows] != list(range(len(rows))):
        raise ValueError(f"history must hold a before point then stages 1..S, got "
                         f"{[(p['kind'], p['stage']) for p in rows]}")
    return rows


def stage_spans(history: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """``(stage, first frame, last frame)`` of each stage that has a point after its start.

    A stage starts at the frames of the point that closed the previous one (the ``before`` point
    for stage 1) and ends at its own ``stage`` point (or, while it trains, its latest point).
    """
    spans: dict[int, list[int]] = {}
    start = 0
    for p in history:
        if p["kind"] == BEFORE:
            start = p["frames"]
            continue
        span = spans.setdefault(p["stage"], [start, p["frames"]])
        span[1] = p["frames"]
        if p["kind"] == STAGE:
            start = p["frames"]
    return [(s, a, b) for s, (a, b) in spans.items()]


def stage_curve(history: list[dict[str, Any]], stage: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The evaluation curve over stage ``stage`` (1-based): ``(fractions [K], returns [K, G])``.

    The points are the one that closed the previous stage (``before`` for stage 1), the periodic
    points of the stage and its ``stage`` point; ``fractions`` = (frames - start) / (end - start),
    so 0 is the stage's start and 1 its end. ``None`` if the stage has not ended.
    """
    opener = (BEFORE, 0) if stage == 1 else (STAGE, stage - 1)
    start = next((p for p in history if (p["kind"], p["stage"]) == opener), None)
    end = next((p for p in history if p["kind"] == STAGE and p["stage"] == stage), None)
    if start is None or end is None:
        return None
    points = [start] + [p for p in history if p["kind"] == PERIODIC and p["stage"] == stage] + [end]
    frames = np.array([p["frames"] for p in points], dtype=np.float64)
    fractions = (frames - frames[0]) / (frames[-1] - frames[0])
    return fractions, np.array([p["returns"] for p in points], dtype=np.float64)


def reference_forward_transfer(
    history: list[dict[str, Any]],
    games: list[str],
    schedule: list[str],
    references: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float | None]:
    r"""Forward transfer of each game against a single-task reference run (Continual World style).

    For game ``g`` first trained in stage :math:`i_g`, the continual curve is the normalised score
    on ``g`` over stage :math:`i_g` (:func:`stage_curve`, fractions ``x`` in [0, 1]); the reference
    curve ``references[g] = (x_ref, y_ref)`` the normalised score of a run trained on ``g`` alone
    from scratch, over its only stage. Each curve is piecewise linear between its points (NaN points
    dropped, the curve bridged); both are sampled on the union of their fractions within the range
    both cover, which leaves each one's trapezoid area unchanged, and then

    .. math:: \mathrm{FT}[g] = \frac{\mathrm{AUC}_g - \mathrm{AUC}^{ref}_g}{1 - \mathrm{AUC}^{ref}_g},
        \qquad \mathrm{AUC} = \frac{1}{x_{K-1} - x_0}\int_{x_0}^{x_{K-1}} y\,dx

    (:func:`eval.metrics.auc_forward_transfer`): 0 = learns ``g`` as fast as a fresh network,
    positive = faster (earlier stages helped), negative = slower.

    Args:
        history: the continual run's points.
        games: ``[G]`` the columns of ``history``'s returns.
        schedule: the run's stage games (stage ``i`` trains ``schedule[i - 1]``).
        references: ``{game: (x_ref [K], y_ref [K])}``.

    Returns:
        ``{game: FT}`` for every game; ``None`` without a reference, before the game's first stage
        ended, with fewer than 2 shared points, or when :math:`\mathrm{AUC}^{ref} \ge 1`.
    """
    first = first_stages(schedule)
    result: dict[str, float | None] = {}
    for j, game in enumerate(games):
        curve = stage_curve(history, first[game]) if game in references and game in first else None
        if curve is None:
            result[game] = None
            continue
        x, returns = curve
        y = normalized_matrix([game], returns[:, j : j + 1])[:, 0]
        result[game] = _aligned_ft(game, x, y, *references[game])
    return result


def load_reference(run_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """``(game, fractions [K], normalised scores [K])`` of a single-task reference run's stage.

    Raises:
        UserError: ``run_dir`` is not a run, trains more than one stage, or has not finished it.
    """
    rd = RunDir(Path(run_dir))
    schedule = rd.read_config_json()["env"]["games"]
    if len(schedule) != 1:
        raise UserError(f"--reference-run {run_dir} trains {len(schedule)} stages ({', '.join(schedule)}); "
                        "a reference run trains one game alone, e.g. `run.py train --games Breakout`")
    history = read_curves(rd.eval, schedule)
    curve = stage_curve(history, 1)
    if curve is None:
        raise UserError(f"--reference-run {run_dir} has not finished its stage; finish it with --resume")
    x, returns = curve
    return schedule[0], x, normalized_matrix(schedule, returns)[:, 0]


def write_curves(eval_dir: Path, games: list[str], schedule: list[str], history: list[dict[str, Any]]) -> None:
    """Write ``curves.csv`` and ``curves.png`` of ``history`` into ``eval_dir``, each atomically.

    CSV: one row per point in order, columns ``frames, stage, kind, game`` (the game trained in
    that stage, empty for ``before``), then ``return/<g>`` and ``hns/<g>`` per game, then
    ``wall_s`` (last, so that the columns before it keep their places in older files); full
    precision, NaN and a point without ``wall_s`` as an empty cell.
    """
    eval_dir = Path(eval_dir)
    returns = np.array([p["returns"] for p in history], dtype=np.float64).reshape(len(history), len(games))
    hns = normalized_matrix(games, returns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_csv_header(games))
    for p, r, h in zip(history, returns, hns):
        trained = schedule[p["stage"] - 1] if p["stage"] > 0 else ""
        writer.writerow([p["frames"], p["stage"], p["kind"], trained] + score_cells(r, h)
                        + [score_cell(p.get("wall_s", math.nan))])
    atomic_write_text(eval_dir / CSV_NAME, out.getvalue())
    atomic_write_bytes(eval_dir / PNG_NAME, _curves_png(games, schedule, history, hns))


def read_curves(eval_dir: Path, games: list[str]) -> list[dict[str, Any]]:
    """The history :func:`write_curves` wrote (returns and ``wall_s``; the hns columns are derived).

    A file written before the ``wall_s`` column existed reads too, its points without ``wall_s``.

    Raises:
        UserError: the file is missing, or is not a curves file for ``games``.
    """
    path = Path(eval_dir) / CSV_NAME
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(f"no {path}; it is written while the run trains") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is malformed ({e}); it is rewritten when the run resumes") from None
    header = _csv_header(games)
    if not rows or rows[0] not in (header, header[:-1]):
        raise UserError(f"{path} is not an evaluation-curves file for games {', '.join(games)}")
    width = len(rows[0])
    try:
        if any(len(r) != width for r in rows[1:]):
            raise ValueError(f"a row does not have the header's {width} cells")
        return [eval_point(int(r[0]), int(r[1]), r[2], [_number(r[4 + 2 * j]) for j in range(len(games))],
                           wall_s=_number(r[-1]) if width == len(header) else None) for r in rows[1:]]
    except (ValueError, IndexError) as e:
        raise UserError(f"{path} is malformed ({e}); it is rewritten when the run resumes") from None


def _aligned_ft(game: str, x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray) -> float | None:
    """AUC forward transfer of two piecewise-linear curves on the union of their fractions."""
    keep, keep_ref = np.isfinite(y), np.isfinite(y_ref)
    x, y, x_ref, y_ref = x[keep], y[keep], np.asarray(x_ref)[keep_ref], np.asarray(y_ref)[keep_ref]
    if x.size < 2 or x_ref.size < 2:
        return None
    low, high = max(x[0], x_ref[0]), min(x[-1], x_ref[-1])
    grid = np.union1d(x, x_ref)
    grid = grid[(grid >= low) & (grid <= high)]
    if grid.size < 2:
        return None
    ft = auc_forward_transfer({game: np.interp(grid, x, y)}, {game: np.interp(grid, x_ref, y_ref)}, grid)
    return ft[game]


def _csv_header(games: list[str]) -> list[str]:
    """The columns of ``curves.csv``: the point's fields, then :func:`eval.score_csv.score_header`,
    then ``wall_s`` (files written before it existed end with the scores)."""
    return ["frames", "stage", "kind", "game"] + score_header(games) + ["wall_s"]


def _number(cell: str) -> float:
    """A cell :func:`eval.score_csv.score_cell` wrote: the float, NaN for an empty cell."""
    return float(cell) if cell else math.nan


def _curves_png(games: list[str], schedule: list[str], history: list[dict[str, Any]], hns: np.ndarray) -> bytes:
    """One panel per game: normalised score against total frames, training stages shaded."""
    cols = min(len(games), PANELS_PER_ROW)
    rows = math.ceil(len(games) / cols)
    fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows))
    FigureCanvasAgg(fig)
    frames = [p["frames"] for p in history]
    spans = stage_spans(history)
    for j, game in enumerate(games):
        ax = fig.add_subplot(rows, cols, j + 1)
        for k, (stage, start, end) in enumerate(spans):
            trained = schedule[stage - 1]
            own = trained == game
            ax.axvspan(start, end, color="tab:orange" if own else "grey", alpha=0.25 if own else 0.08 + 0.08 * (k % 2),
                       linewidth=0)
            ax.text((start + end) / 2, 0.97, trained, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=7, clip_on=True)
        ax.plot(frames, hns[:, j], marker="o", markersize=3, color="tab:blue")
        ax.set_title(game)
        ax.set_xlabel("total frames")
        ax.set_ylabel("normalised score")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
