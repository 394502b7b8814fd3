"""Which game is trained when: one stage per game of ``--games``, or with ``--switch-every`` the games
cycling inside every stage; and when a periodic event (evaluation, checkpoint, switch) falls due.

Stage ``i`` (0-based) trains ``games[i]`` for ``--frames-per-game`` frames. With ``--switch-every
N`` training moves on to the next game of ``--games`` every N run frames, cycling, whatever the
stage; stages, checkpoints and evaluations stay where they are (a stress schedule for the expert
cache). Frames count environment frames (agent steps x frame skip 4), as in the literature.
"""

from __future__ import annotations

from train.config import RunConfig


def game_at(cfg: RunConfig, stage: int, total_frames: int) -> str:
    """The game trained at run frame ``total_frames`` of ``stage`` (``--switch-every`` cycles the games)."""
    games, every = cfg.env.games, cfg.schedule.switch_every
    return games[(total_frames // every) % len(games)] if every else games[stage]


def game_index(cfg: RunConfig, game: str) -> int:
    """The index of ``game`` among the schedule's distinct games, in ``--games`` order (a game listed
    twice keeps its first index): the game detector's class and ``charts/game``."""
    return list(dict.fromkeys(cfg.env.games)).index(game)


def crossed(total_frames: int, step: int, every: int) -> bool:
    """Whether the last ``step`` frames, ending at ``total_frames``, crossed a multiple of ``every``."""
    return total_frames // every != (total_frames - step) // every


def evaluation_due(total_frames: int, step: int, every: int, stage_left: int) -> bool:
    """Whether a periodic evaluation falls due after the last ``step`` frames, ending at run frame
    ``total_frames``: a multiple of ``every`` was crossed, and the stage does not end within the next
    ``every / 2`` frames (``stage_left``: frames still to train in it), whose stage-end evaluation
    then stands for it (a stage of 2,500,480 frames would otherwise be evaluated twice, 640 frames apart)."""
    return crossed(total_frames, step, every) and stage_left >= every / 2
