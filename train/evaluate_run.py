"""`run.py eval --run-dir DIR`: recompute a run's forgetting matrix from its stage checkpoints and
rewrite its evaluation files.

Row ``i`` of the matrix is evaluated afresh from ``checkpoints/stage_<i>.pt``: ``stage_000`` holds
the initial parameters (the ``before`` row), ``stage_<i>`` the parameters at the end of stage ``i``.
The evaluation curves cannot be recomputed (the periodic checkpoints they came from are rotated
away), so ``eval/curves.csv`` is kept as the run recorded it and ``curves.png`` is redrawn from it.
With ``--reference-run`` the AUC forward transfer of each game against its single-task reference
run (:func:`eval.curves.reference_forward_transfer`) is added to ``forgetting.json``. The run's wall
time (``wall_seconds``) is kept as the trainer recorded it in the ``forgetting.json`` being
rewritten (re-evaluating is not training); without that file it is unknown (``null``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.encoders import check_encoder
from agent.model import ActorCritic
from common.device import resolve_device
from common.errors import UserError
from envs.atari import NUM_ACTIONS
from eval.curves import CSV_NAME, eval_columns, load_reference, read_curves, reference_forward_transfer, write_curves
from eval.evaluate import evaluate_games, record_returns
from eval.forgetting import WALL_KEYS, read_forgetting
from storage.atomic import check_writable
from storage.checkpoint import CheckpointManager
from storage.run_dir import RunDir
from train.run_dir import read_config


def evaluate_run(run_dir: Path, games: list[str] | None = None, episodes: int | None = None,
                 greedy: bool = False, device: str = "auto", reference_runs: list[Path] | None = None) -> dict:
    """Evaluate every stage checkpoint of ``run_dir`` and rewrite ``eval/``; returns the forgetting document.

    Args:
        run_dir: a run directory with ``checkpoints/stage_000.pt`` ... ``stage_<S>.pt``.
        games: the columns, evaluated in every row; ``None`` = every game of the schedule.
        episodes: episodes per game and row (``None`` = the run's ``eval.episodes``).
        greedy: act greedily (otherwise the run's ``eval.greedy``).
        device: ``auto``, ``cpu`` or ``cuda``.
        reference_runs: single-task runs, at most one per game of the schedule.

    Raises:
        UserError: no stage checkpoints, a gap in them, a checkpoint from an older layout, or a
            reference run that is not a finished single-task run of one of the schedule's games.
    """
    rd = RunDir(Path(run_dir))
    cfg = read_config(rd)
    check_writable(rd.eval)  # before the evaluation, not after it
    if episodes is not None:
        cfg.eval.episodes = episodes
    cfg.eval.greedy = cfg.eval.greedy or greedy
    manager = CheckpointManager(rd.root)
    stage_paths = manager.stage_checkpoints()
    if not stage_paths:
        raise UserError(f"{rd.checkpoints} holds no stage checkpoints; train the run (it saves stage_000 "
                        "at its start) first")
    names = [p.name for p in stage_paths]
    if names != [f"stage_{i:03d}.pt" for i in range(len(names))] or len(names) > len(cfg.env.games) + 1:
        raise UserError(f"{rd.checkpoints} holds {', '.join(names)}; expected stage_000.pt (the initial "
                        f"parameters) to at most stage_{len(cfg.env.games):03d}.pt without gaps")
    schedule_columns = eval_columns(cfg.env.games)
    columns = games or schedule_columns
    check_encoder(cfg.model.encoder, cfg.env.games + columns)  # the run's encoder reads only its own kind
    # Checked before the (long) evaluation, so that a bad reference fails at once.
    references = _load_references(reference_runs or [], schedule_columns)
    history = read_curves(rd.eval, schedule_columns) if (rd.eval / CSV_NAME).exists() or references else None
    wall_seconds = _recorded_wall_seconds(rd)

    torch_device = resolve_device(device)
    model = ActorCritic(cfg.model, NUM_ACTIONS, cfg.env.games, cfg.env.action_set).to(torch_device)
    returns = np.full((len(stage_paths), len(columns)), np.nan)
    episodes: list[list[list[float]]] = []  # [S + 1][G][K]
    for row, path in enumerate(stage_paths):
        state = manager.load(path, map_location=torch_device)
        if row == 0 and state["progress"]["total_frames"] != 0:
            raise UserError(f"{path} is not the initial parameters (it was saved at frame "
                            f"{state['progress']['total_frames']:,} by an older version); train a new run")
        model.load_state_dict(state["model"])
        results = evaluate_games(model, columns, cfg.env, cfg.eval, torch_device)
        returns[row] = [results[g].mean for g in columns]
        episodes.append([results[g].episodes for g in columns])
        label = "before training" if row == 0 else f"after stage {row} ({cfg.env.games[row - 1]})"
        print(f"{label}: " + "  ".join(f"{g}: {r.mean:.1f} (hns {r.hns:.3f})" for g, r in results.items()), flush=True)

    forward_transfer = None
    if references:
        full = reference_forward_transfer(history, schedule_columns, cfg.env.games, references)
        forward_transfer = {g: full.get(g) for g in columns}
    doc = record_returns(rd.eval, columns, cfg.env.games[:len(stage_paths) - 1], returns, episodes,
                         forward_transfer, [str(r) for r in reference_runs or []], wall_seconds)
    if history is not None:
        write_curves(rd.eval, schedule_columns, cfg.env.games, history)
    m = doc["metrics"]
    print(f"wrote {rd.eval / 'forgetting.json'}: avg final hns {_fmt(m['avg_final_hns'])}, "
          f"mean forgetting {_fmt(m['mean_forgetting'])}, bwt {_fmt(m['bwt'])}, "
          f"zero-shot transfer {_fmt(m['mean_zero_shot_transfer'])}, "
          f"forward transfer {_fmt(m['mean_forward_transfer'])}", flush=True)
    return doc


def _recorded_wall_seconds(rd: RunDir) -> dict[str, float | None] | None:
    """The ``wall_seconds`` of the run's ``forgetting.json`` (numbers only), ``None`` without a readable one."""
    try:
        wall = read_forgetting(rd.eval).get("wall_seconds")
    except UserError:
        return None
    if not isinstance(wall, dict):
        return None
    return {key: float(x) if isinstance(x, (int, float)) else None for key, x in wall.items() if key in WALL_KEYS}


def _load_references(reference_runs: list[Path], games: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{game: (fractions, normalised scores)}`` of the reference runs; UserError on a bad one."""
    references: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ref in reference_runs:
        game, x, y = load_reference(ref)
        if game not in games:
            raise UserError(f"--reference-run {ref} trains {game}, which this run does not ({', '.join(games)})")
        if game in references:
            raise UserError(f"two --reference-run dirs train {game}; give one per game")
        references[game] = (x, y)
    return references


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
