"""TensorBoard logging and the one list of metric names.

Every scalar's x axis is the run's total environment frames (agent steps x frame skip 4), so
curves of a resumed run continue where they left off: the writer is opened with
``purge_step`` at the checkpoint's frame count, which drops anything a killed run wrote after
its last checkpoint.

Scalars from the learner (losses/*, stats/*, rtrl/*) are averaged over the updates since the
previous write (every ``log_every`` seconds); episode returns are logged one point per episode.

Tags (the names are a contract, see DESIGN.md):
  charts/episodic_return/<game>  raw game-over return of each finished training episode
  charts/episode_length/<game>   its length in agent steps
  charts/SPS                     agent steps per second since the previous write
  charts/frames                  total environment frames so far
  charts/stage                   index of the stage being trained
  charts/learning_rate           current learning rate
  losses/{policy,value,entropy,total,grad_norm}   of the latest update (grad norm before clipping)
  stats/policy_lag               learner version minus the version that collected the rollout
  stats/{env,act,learn}_time     seconds per rollout spent stepping envs / acting / learning
  stats/queue_wait_time          seconds per update the learner waited for a rollout
  rtrl/max_abs_J, rtrl/frac_J_gt_1   RTRL cores: largest |dc_t/dc_t-1| in the rollout, share above 1
  rtrl/max_abs_S                 RTRL cores: largest carried sensitivity |dc/dF|, |dc/dZ|
  (the cores report these, and experts/{active,agreed,pending,pending_delay}, under the plain names
  of :data:`CORE_STATS`)
  eval/return/<game>, eval/hns/<game>   mean evaluation return / normalised score (every game of
                                 the schedule; before training, every eval.every frames, after each stage)
  eval/avg_hns                   mean normalised score over all games of the schedule (average performance)
  eval/forgetting                mean forgetting of the matrix so far (after stage 2 on)
  eval/forgetting_matrix         (image) the stage x game heat map, before training and after every stage
  eval/curves                    (image) the per-game evaluation curves, before training and after every stage
  cache/hit_rate/{hbm,dram}      MoE core: expert store demand hit rates in the window (storage/stats.py)
  cache/prefetch/{precision,coverage,timeliness}   MoE core: prefetch quality (once there are prefetches)
  cache/stall_ms_per_step        MoE core: ms per learner update spent waiting for experts
  cache/bytes/{nvme_to_dram,dram_to_hbm,hbm_to_dram,dram_to_nvme}   MoE core: bytes moved in the window
  experts/nmi_game_expert        MoE core: normalised mutual information of game and expert (train/expert_metrics.py)
  experts/utilization_entropy    MoE core: entropy of the experts' load, normalised to [0, 1]
  experts/active, experts/pending    MoE core: experts routed in the latest rollout; experts with a pending gradient
  experts/agreed                 MoE core: experts the latest pass materialised (the union over the ranks)
  experts/pending_delay          MoE core: updates a pending gradient waited before it was applied
  experts/usage                  (image) MoE core: each game's routing share per expert, after every stage
  diag/loss, diag/accuracy       `run.py diag`: training loss and accuracy on the scored steps
  diag/eval_accuracy             `run.py diag`: accuracy on held-out sequences at the end
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from common.errors import UserError

SPS = "charts/SPS"
FRAMES = "charts/frames"
STAGE = "charts/stage"
POLICY_LAG = "stats/policy_lag"
ENV_TIME = "stats/env_time"
ACT_TIME = "stats/act_time"
LEARN_TIME = "stats/learn_time"
QUEUE_WAIT_TIME = "stats/queue_wait_time"
EVAL_AVG_HNS = "eval/avg_hns"
EVAL_FORGETTING = "eval/forgetting"
EVAL_MATRIX_IMAGE = "eval/forgetting_matrix"
EVAL_CURVES_IMAGE = "eval/curves"
EXPERT_USAGE_IMAGE = "experts/usage"
DIAG_LOSS = "diag/loss"
DIAG_ACCURACY = "diag/accuracy"
DIAG_EVAL_ACCURACY = "diag/eval_accuracy"
RTRL_MAX_ABS_J = "rtrl/max_abs_J"
RTRL_FRAC_J_GT_1 = "rtrl/frac_J_gt_1"
RTRL_MAX_ABS_S = "rtrl/max_abs_S"
EXPERTS_ACTIVE = "experts/active"
EXPERTS_AGREED = "experts/agreed"
EXPERTS_PENDING = "experts/pending"
EXPERTS_PENDING_DELAY = "experts/pending_delay"
CORE_STATS = {
    "max_abs_J": RTRL_MAX_ABS_J, "frac_J_gt_1": RTRL_FRAC_J_GT_1, "max_abs_S": RTRL_MAX_ABS_S,
    "active_experts": EXPERTS_ACTIVE, "agreed_experts": EXPERTS_AGREED, "pending_experts": EXPERTS_PENDING,
    "pending_delay": EXPERTS_PENDING_DELAY,
}
"""The tag of each figure a core's ``learner_stats`` reports (agent/cores/), by its plain name."""


def core_stats(stats: dict[str, float]) -> dict[str, float]:
    """A core's ``learner_stats`` under their TensorBoard tags (:data:`CORE_STATS`)."""
    return {CORE_STATS[name]: value for name, value in stats.items()}


def episodic_return(game: str) -> str:
    return f"charts/episodic_return/{game}"


def episode_length(game: str) -> str:
    return f"charts/episode_length/{game}"


def eval_return(game: str) -> str:
    return f"eval/return/{game}"


def eval_hns(game: str) -> str:
    return f"eval/hns/{game}"


class Logger:
    """A TensorBoard writer under ``<run_dir>/tb``; step = total frames."""

    def __init__(self, tb_dir: Path, purge_step: int | None = None, enabled: bool = True):
        """``enabled=False`` (the ranks other than 0 of a distributed run) writes nothing."""
        self._writer = None
        if not enabled:
            return
        try:
            self._writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)
        except OSError as e:
            raise UserError(f"cannot write TensorBoard logs to {tb_dir}: {e.strerror}") from None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def png(self, tag: str, data: bytes, step: int) -> None:
        """Log a PNG image (e.g. a plot already written to the run dir) under ``tag``."""
        import io

        from matplotlib.image import imread

        if self._writer is not None:
            self._writer.add_image(tag, imread(io.BytesIO(data), format="png"), step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
