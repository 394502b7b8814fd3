"""Recurrent cores behind one interface (:class:`agent.cores.base.Core`)."""

from agent.cores.base import Core, State
from agent.cores.elstm import ELSTMCore
from agent.cores.lstm import LSTMCore
from agent.cores.moe_elstm import Collectives, MoEELSTMCore


def make_core(cfg, input_size: int, schedule: list[int] | None = None, num_games: int = 0,
              collectives: Collectives | None = None) -> Core:
    """The core ``cfg.core`` (a validated :class:`train.config.ModelConfig`) over inputs of ``input_size``.

    The MoE core also needs the run's game ids in stage order (``schedule``) and how many game ids
    exist (``num_games``), for game routing and per-game routing statistics, and in a data-parallel
    run the ranks' ``collectives`` (None: this process alone)."""
    if cfg.core == "moe":
        if schedule is None:
            raise ValueError("the MoE core needs the schedule's game ids")
        return MoEELSTMCore(input_size, cfg.hidden_size, cfg.num_experts, cfg.top_k, cfg.routing, schedule, num_games,
                            rtrl_form=cfg.rtrl_form, lazy=cfg.lazy, balance_cost=cfg.balance_cost,
                            collectives=collectives or Collectives(), chrono_max=cfg.chrono_max)
    if cfg.core == "elstm":
        return ELSTMCore(input_size, cfg.hidden_size, learning=cfg.learning, rtrl_form=cfg.rtrl_form,
                          chrono_max=cfg.chrono_max)
    return LSTMCore(input_size, cfg.hidden_size, chrono_max=cfg.chrono_max)


__all__ = ["Collectives", "Core", "State", "LSTMCore", "ELSTMCore", "MoEELSTMCore", "make_core"]
