"""The stage x game matrix of a continual run, its metrics, and its three files.

The matrix ``R`` ``[S + 1, G]`` has a before-training row: row 0 (label ``before``) is the
evaluation of the initial parameters, row ``i`` (label ``"<i>:<game>"``, ``1 <= i <= S``) the
evaluation after training stage ``i``, which trains ``stage_games[i - 1]``; column ``g`` is one
game. Every game of the schedule is evaluated in every row (seen and not yet seen). Metrics are
computed on the normalised scores (``envs.registry.normalized_score``: human-normalised for Atari).
The run directory gets ``eval/forgetting.json`` (the schema in docs/forgetting.md, plus the keys
listed in :func:`write_forgetting`), ``forgetting.csv`` and ``forgetting.png`` (a heat map), each
written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.metrics import average_performance, first_stages, zero_shot_forward_transfer
from eval.score_csv import score_cells, score_header
from storage.atomic import atomic_write_bytes, atomic_write_text
from common.errors import UserError

JSON_NAME = "forgetting.json"
CSV_NAME = "forgetting.csv"
PNG_NAME = "forgetting.png"
BEFORE_LABEL = "before"

_SCHEMA_KEYS = ("games", "stages", "returns", "hns", "metrics")
WALL_KEYS = ("train", "eval")
"""The keys of ``forgetting.json``'s ``wall_seconds``."""


def stage_labels(stage_games: list[str]) -> list[str]:
    """Row labels of the matrix: ``["before", "1:<game of stage 1>", ..., "S:<game of stage S>"]``."""
    return [BEFORE_LABEL] + [f"{i}:{g}" for i, g in enumerate(stage_games, start=1)]


def compute_metrics(hns: np.ndarray, stage_games: list[str], games: list[str],
                    forward_transfer: dict[str, float | None] | None = None) -> dict[str, Any]:
    r"""Continual-learning metrics of a normalised-score matrix with a before-training row.

    Args:
        hns: ``[S + 1, G]`` normalised scores ``R``; row 0 before training, row ``i`` after stage
            ``i`` (``S >= 0``); column ``g`` is ``games[g]``; NaN where a game was not evaluated
            or its evaluation failed.
        stage_games: ``[S]`` the game trained in stage ``i`` is ``stage_games[i - 1]`` (a game not
            in ``games`` adds no term).
        games: ``[G]`` the column names.
        forward_transfer: ``{game: FT}`` AUC forward transfer against single-task reference runs
            (:func:`eval.curves.reference_forward_transfer`), or ``None`` when no reference was given.

    Returns:
        A dict of floats (``None`` where undefined, so that JSON gets ``null``). With ``L = S`` the
        last row, :math:`i_g` the first stage that trains ``g``, and only finite entries taking part:

        - ``avg_final_hns`` :math:`= \operatorname{mean}_g R_{L,g}` (every game of the row);
        - ``forgetting[g]`` :math:`= \max_{i_g \le s \le L-1} R_{s,g} - R_{L,g}`: the best score
          from the end of the game's first training stage up to the stage before the last, minus
          the final score. Defined only for games trained before the last stage
          (:math:`i_g \le L - 1`); ``None`` for a game first trained in the last stage, never
          trained, or whose terms are NaN. A game trained again in the last stage keeps its value
          (usually negative: relearning);
        - ``mean_forgetting`` = the mean of the defined ``forgetting[g]``;
        - ``bwt`` (backward transfer, Lopez-Paz & Ranzato 2017, GEM)
          :math:`= \frac{1}{|D|}\sum_{s\in D} (R_{L,g_s} - R_{s,g_s})` with :math:`g_s` =
          ``stage_games[s - 1]`` and :math:`D` the stages :math:`1 \le s \le L-1` whose two terms
          are finite. Negative means later stages erased what earlier ones learnt;
        - ``avg_performance`` ``[S + 1]``: :math:`A_s = \operatorname{mean}_g R_{s,g}` over all
          games evaluated in row ``s`` (seen and unseen; Continual World's average performance);
        - ``zero_shot_transfer[g]`` :math:`= R_{i_g - 1, g} - R_{0, g}` for :math:`i_g \ge 2`
          (:func:`eval.metrics.zero_shot_forward_transfer`) and ``mean_zero_shot_transfer``;
        - ``forward_transfer`` (the argument, or ``None``) and ``mean_forward_transfer``.

    Raises:
        ValueError: on a shape that does not match the names.
    """
    hns = np.asarray(hns, dtype=np.float64)
    if hns.ndim != 2 or hns.shape != (len(stage_games) + 1, len(games)):
        raise ValueError(
            f"hns must be [S + 1, G] = [{len(stage_games) + 1}, {len(games)}] (row 0 before training), "
            f"got shape {hns.shape}"
        )
    last = len(stage_games)
    final = hns[last]
    column = {game: j for j, game in enumerate(games)}
    first_stage = first_stages(stage_games)

    forgetting: dict[str, float | None] = {}
    for j, game in enumerate(games):
        i = first_stage.get(game)
        best = hns[i:last, j] if i is not None else hns[:0, j]
        best = best[np.isfinite(best)]
        defined = best.size > 0 and math.isfinite(final[j])
        forgetting[game] = float(best.max() - final[j]) if defined else None

    # A stage whose game is not a column (evaluation of chosen games only) has no BWT term.
    transfers = [final[column[g]] - hns[s, column[g]]
                 for s, g in enumerate(stage_games[:-1], start=1) if g in column]
    zero_shot = (zero_shot_forward_transfer(hns, stage_games, games) if stage_games
                 else {game: None for game in games})
    return {
        "avg_final_hns": mean_or_none(final),
        "mean_forgetting": _mean_of_defined(forgetting),
        "forgetting": forgetting,
        "bwt": mean_or_none(np.array(transfers, dtype=np.float64)),
        "avg_performance": average_performance(hns),
        "zero_shot_transfer": zero_shot,
        "mean_zero_shot_transfer": _mean_of_defined(zero_shot),
        "forward_transfer": forward_transfer,
        "mean_forward_transfer": _mean_of_defined(forward_transfer) if forward_transfer is not None else None,
    }


def write_forgetting(
    eval_dir: Path,
    games: list[str],
    stage_games: list[str],
    returns: np.ndarray,
    hns: np.ndarray,
    episode_returns: Sequence[Sequence[Sequence[float] | None]] | None = None,
    forward_transfer: dict[str, float | None] | None = None,
    reference_runs: list[str] | None = None,
    wall_seconds: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """Write ``forgetting.json``, ``forgetting.csv`` and ``forgetting.png`` into ``eval_dir``.

    Args:
        eval_dir: the run's ``eval/`` directory (created if missing).
        games: ``[G]`` column names.
        stage_games: ``[S]`` the game trained in each completed stage, in order.
        returns: ``[S + 1, G]`` mean raw game-over returns (row 0 before training), NaN where not
            evaluated.
        hns: ``[S + 1, G]`` their normalised scores.
        episode_returns: ``[S + 1][G]`` the raw return of each episode ``[K]`` behind each cell
            of ``returns``, ``None`` for a cell whose episodes were not kept (or not evaluated);
            ``None`` = no cell's.
        forward_transfer: see :func:`compute_metrics`.
        reference_runs: the single-task reference run dirs ``forward_transfer`` was computed with.
        wall_seconds: ``{"train": s, "eval": s}`` the run's wall seconds spent training and
            evaluating (the trainer's counters when it wrote the file); ``None``, a missing key or
            NaN = unknown.

    Returns:
        The dict written to JSON: the docs/forgetting.md schema ``{"games", "stages", "returns", "hns",
        "metrics"}`` (``stages`` = :func:`stage_labels`, ``metrics`` = :func:`compute_metrics`)
        plus ``"stage_games"``, ``"episode_returns"`` ``[S + 1][G]`` (lists ``[K]`` or ``None``),
        ``"reference_runs"`` (a list, empty without references) and ``"wall_seconds"``
        ``{"train", "eval"}`` (each ``None`` where unknown), with every NaN as ``None``.

    Raises:
        ValueError: on shapes that do not match the names.
    """
    returns = np.asarray(returns, dtype=np.float64)
    hns = np.asarray(hns, dtype=np.float64)
    stages = stage_labels(stage_games)
    shape = (len(stages), len(games))
    if returns.shape != shape or hns.shape != shape:
        raise ValueError(f"expected returns and hns of shape {shape}, got {returns.shape} and {hns.shape}")
    if episode_returns is None:
        episode_returns = [[None] * len(games) for _ in stages]
    if len(episode_returns) != len(stages) or any(len(row) != len(games) for row in episode_returns):
        raise ValueError(f"expected episode_returns of [{len(stages)}][{len(games)}] cells")
    eval_dir = Path(eval_dir)
    doc = {
        "games": list(games),
        "stages": stages,
        "stage_games": list(stage_games),
        "returns": _to_json_matrix(returns),
        "hns": _to_json_matrix(hns),
        "episode_returns": [[None if cell is None else _to_json_list(cell) for cell in row] for row in episode_returns],
        "metrics": compute_metrics(hns, stage_games, games, forward_transfer),
        "reference_runs": list(reference_runs or []),
        "wall_seconds": {key: _finite_or_none((wall_seconds or {}).get(key)) for key in WALL_KEYS},
    }
    atomic_write_text(eval_dir / JSON_NAME, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    atomic_write_text(eval_dir / CSV_NAME, _csv_text(games, stages, returns, hns))
    atomic_write_bytes(eval_dir / PNG_NAME, _heatmap_png(games, stages, hns))
    return doc


def read_forgetting(eval_dir: Path) -> dict[str, Any]:
    """Read back the dict :func:`write_forgetting` wrote (NaN entries are ``None``).

    Raises:
        UserError: the file is missing, is not JSON, or lacks a schema key.
    """
    path = Path(eval_dir) / JSON_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"no {path}; evaluate the run first with `python run.py eval --run-dir DIR`"
        ) from None
    except ValueError as e:  # not UTF-8, or not JSON
        raise UserError(f"{path} is not valid JSON ({e}); re-run `python run.py eval`") from None
    missing = [key for key in _SCHEMA_KEYS if not isinstance(doc, dict) or key not in doc]
    if missing:
        raise UserError(f"{path} lacks {missing}; re-run `python run.py eval` to rewrite it")
    return doc


def read_episode_returns(doc: dict[str, Any]) -> list[list[np.ndarray | None]] | None:
    """The ``episode_returns`` of a :func:`read_forgetting` document: ``[S + 1][G]`` arrays ``[K]``
    (a ``null`` episode as NaN) or ``None`` per cell; ``None`` for a file written before the field
    existed."""
    rows = doc.get("episode_returns")
    if rows is None:
        return None
    return [[None if cell is None else np.array([math.nan if x is None else x for x in cell], dtype=np.float64)
             for cell in row] for row in rows]


def read_wall_seconds(doc: dict[str, Any]) -> float | None:
    """The run's wall seconds (training + evaluation) of a :func:`read_forgetting` document, or
    ``None`` where either is unknown or the file was written before ``wall_seconds`` existed."""
    wall = doc.get("wall_seconds") or {}
    parts = [wall.get(key) for key in WALL_KEYS]
    return None if any(x is None for x in parts) else float(sum(parts))


def mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the finite entries of ``values``, or ``None`` if there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _mean_of_defined(values: dict[str, float | None]) -> float | None:
    """Mean of the values that are not ``None`` (and finite), or ``None`` if there are none."""
    return mean_or_none(np.array([v for v in values.values() if v is not None], dtype=np.float64))


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _to_json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    """``[S, G]`` array as nested lists with non-finite entries as ``None``."""
    return [_to_json_list(row) for row in matrix]


def _to_json_list(values: Sequence[float]) -> list[float | None]:
    """``[K]`` numbers as a list with non-finite entries as ``None``."""
    return [float(x) if math.isfinite(x) else None for x in values]


def _csv_text(games: list[str], stages: list[str], returns: np.ndarray, hns: np.ndarray) -> str:
    """One row per stage: ``stage``, then ``return/<game>`` and ``hns/<game>`` per game.

    Missing values are empty cells; numbers are written with full precision (``repr``).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["stage"] + score_header(games))
    for s, stage in enumerate(stages):
        writer.writerow([stage] + score_cells(returns[s], hns[s]))
    return out.getvalue()


def _heatmap_png(games: list[str], stages: list[str], hns: np.ndarray) -> bytes:
    """PNG heat map of ``hns`` ``[S + 1, G]``: games on x, rows on y, values annotated, NaN grey.

    The figure is ``max(4, 1 + 0.9 G)`` x ``max(2.5, 1.2 + 0.5 (S + 1))`` inches at 100 dpi.
    """
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(games)), max(2.5, 1.2 + 0.5 * len(stages))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = hns[np.isfinite(hns)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(hns), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for s in range(hns.shape[0]):
        for j in range(hns.shape[1]):
            if math.isfinite(hns[s, j]):
                light = (hns[s, j] - vmin) / (vmax - vmin) > 0.5
                ax.text(j, s, f"{hns[s, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
    ax.set_xticks(range(len(games)), labels=games, rotation=45, ha="right")
    ax.set_yticks(range(len(stages)), labels=stages)
    ax.set_xlabel("game evaluated")
    ax.set_ylabel("after stage")
    ax.set_title("normalised score (Atari: human-normalised)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
