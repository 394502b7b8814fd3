"""Supervised memory diagnostics for the eLSTM core: exact RTRL versus truncated BPTT (``run.py diag``).

The model is ``linear input -> ELSTMCore -> linear readout`` on one of the tasks in
:mod:`envs.sequence_tasks` (copy, anbn, haystack). Each training step draws a batch of B fresh
sequences, runs the whole sequence in chunks of the core's learner protocol, accumulates the
gradient of the mean cross-entropy over every scored step of every sequence, and takes one Adam
step. Memory does not grow with the sequence length in either mode: no chunk's graph outlives it.

``--learning rtrl`` (segment form): chunks of ``--segment`` steps. Each chunk is the T + 1 step
    rollout of the learner hooks (its last step is the next chunk's first and only overlaps);
    after ``loss.backward()`` the core adds the carried term sum_b dL/dc_0 * S_0 and advances c and
    the sensitivities to the next chunk. The recurrent parameters (F, Z, w_f, w_z, b_f, b_z) thus
    get the exact gradient through the whole sequence; the input layer and the output gate get the
    within-chunk gradient (the output gate's is exact anyway: it does not feed the recurrence).
``--learning tbptt --unroll M``: chunks of M steps, the state carried forward but detached between
    chunks, so no gradient crosses a chunk boundary.

Chunks without a scored step run without autograd (their loss is zero, and RTRL still advances
its sensitivities through them), which is most of a long-delay sequence.

Chrono initialisation (Tallec & Ollivier 2018): the forget bias is drawn as b_f = log U(1, T - 1)
with T = ``--chrono-max``, by default the sequence length L, so the cells start with forget
gates f = u / (1 + u) and time constants 1 / (1 - f) = 1 + u spread up to about T: some cells
already hold their content across the whole delay before training. Without it (b_f = 0, f ~ 0.5)
a cell forgets half its content per step, the sensitivities vanish within a few dozen steps, and
neither method learns a long delay. It is the same for both methods, so comparisons are fair.

Results: accuracy on the scored steps of fresh sequences drawn from a held-out seed (seed +
:data:`EVAL_SEED_OFFSET`), training steps, wall time and peak resident memory (``ru_maxrss`` of
this process, so it includes Python and torch themselves; ``train_peak_rss_mib`` is the same
figure taken before the evaluation, whose input batches [L, 128, D] do grow with L).
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from agent.cores.elstm import ELSTMCore
from envs.sequence_tasks import SequenceBatch, SequenceTask, make_task
from train import tags
from train.logger import Logger
from common.errors import UserError
from common.memory import check_fits


EVAL_SEED_OFFSET = 1_000_003
"""Evaluation sequences come from generator seed ``seed + EVAL_SEED_OFFSET``, never used in training."""


@dataclass
class DiagConfig:
    """One diagnostic run; every field is a ``run.py diag`` flag."""

    task: str = "copy"
    """copy | anbn | haystack (see envs/sequence_tasks.py)."""
    learning: str = "rtrl"
    """rtrl (exact, segment form) or tbptt (truncated every --unroll steps)."""
    unroll: int | None = None
    """TBPTT truncation length M (default 10); not allowed with rtrl."""
    segment: int = 20
    """RTRL chunk length: steps between sensitivity updates (does not change the gradient)."""
    hidden_size: int = 32
    """Cells N of the eLSTM (the input layer has the same width)."""
    steps: int = 1500
    """Training steps (one Adam step per batch of sequences)."""
    batch_size: int = 32
    """Sequences per training step."""
    lr: float = 3e-3
    """Adam learning rate."""
    clip: float = 1.0
    """Gradient-norm clip per step (0 = none)."""
    symbols: int | None = None
    """Alphabet size K for copy and haystack (default 8)."""
    length: int | None = None
    """copy: symbols to recall (default 1); anbn: the largest n (default 10); haystack: key-value pairs (default 1)."""
    delay: int | None = None
    """Blank (haystack: distractor) steps between the information and the query (copy 200, anbn 0, haystack 50)."""
    chrono_max: float | None = None
    """Chrono forget-bias range T (b_f = log U(1, T-1)); default the sequence length; <= 2 turns it off."""
    seed: int = 0
    """Seeds the parameters and the training sequences."""
    eval_sequences: int = 1024
    """Fresh sequences (held-out seed) for the final accuracy."""
    log_every: int = 100
    """Print progress every this many steps (0 = only the end); TensorBoard gets every step."""
    threads: int = 1
    """torch intra-op threads (1 is fastest for a model this small, and steady on a shared machine)."""
    tb: str | None = None
    """TensorBoard directory (diag/loss, diag/accuracy, diag/eval_accuracy, rtrl/*)."""

    def validate(self) -> SequenceTask:
        """Check the flags; return the task. UserError on bad input."""
        if self.learning not in ("rtrl", "tbptt"):
            raise UserError(f"--learning must be rtrl or tbptt (the diag model is always an eLSTM), got {self.learning!r}")
        if self.learning == "rtrl" and self.unroll is not None:
            raise UserError("--unroll applies to --learning tbptt only; RTRL's gradient is never truncated "
                            "(use --segment to change its chunk length)")
        for flag, value in (("--unroll", self.unroll), ("--segment", self.segment), ("--hidden-size", self.hidden_size),
                            ("--steps", self.steps), ("--batch-size", self.batch_size), ("--threads", self.threads),
                            ("--eval-sequences", self.eval_sequences)):
            if value is not None and value <= 0:
                raise UserError(f"{flag} must be positive, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.clip < 0 or self.log_every < 0:
            raise UserError("--clip and --log-every must be >= 0")
        task = make_task(self.task, symbols=self.symbols, length=self.length, delay=self.delay)
        self._check_memory(task)
        return task

    def _check_memory(self, task: SequenceTask) -> None:
        """Refuse sizes whose memory, estimated from below before anything is allocated, exceeds the machine's."""
        B, L, N = self.batch_size, task.seq_len, self.hidden_size
        estimate = {
            "a batch of sequences": B * L * (4 * task.input_size + 8 + 8 + 1),  # one-hot inputs, tokens, targets, mask
            "eLSTM weights": 2 * N * N * 4,  # F and Z, N x N each
        }
        if self.learning == "rtrl":
            estimate["RTRL sensitivities"] = 2 * B * N * N * 4
        check_fits(estimate, f"--batch-size {B}, --hidden-size {N} and {task.name}'s sequence length {L:,} "
                             f"(from --length and --delay)")


class DiagModel(nn.Module):
    """inputs [T, B, D] -> linear [T, B, N] -> ELSTMCore -> linear readout -> logits [T, B, C]."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, learning: str, chrono_max: float):
        super().__init__()
        self.inp = nn.Linear(input_size, hidden_size)
        self.core = ELSTMCore(hidden_size, hidden_size, learning=learning, rtrl_form="segment", chrono_max=chrono_max)
        self.readout = nn.Linear(hidden_size, num_classes)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, chunk: int = 100) -> torch.Tensor:
        """Predicted classes [L, B] for whole sequences [L, B, D], ``chunk`` steps at a time (no gradient)."""
        L, B = inputs.shape[:2]
        first = torch.zeros(L, B, dtype=torch.bool)
        first[0] = True
        state, preds = self.core.initial_state(B), []
        for s in range(0, L, chunk):
            h, state = self.core(self.inp(inputs[s:s + chunk]), first[s:s + chunk], state)
            preds.append(self.readout(h).argmax(-1))
        return torch.cat(preds)


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the scored steps, and the number of correct predictions there."""
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return (ce * mask).sum(), correct


def accumulate_gradients(model: DiagModel, batch: SequenceBatch, learning: str, chunk: int) -> tuple[float, float]:
    """Forward and backward through one batch of whole sequences in chunks of ``chunk`` steps.

    Adds to the parameters' .grad the gradient of the mean cross-entropy over the scored steps;
    returns (that loss, accuracy on the scored steps).
    """
    inputs, targets, mask = batch.inputs, batch.targets, batch.mask
    L, B = targets.shape
    n_scored = max(int(mask.sum()), 1)
    first = torch.zeros(L + 1, B, dtype=torch.bool)
    first[0] = True
    core = model.core
    total, correct = 0.0, 0
    carry = core.learner_carry(B, inputs.device) if learning == "rtrl" else None
    state = core.initial_state(B, inputs.device)
    for s in range(0, L, chunk):
        T = min(chunk, L - s)
        scored = bool(mask[s:s + T].any())
        with torch.set_grad_enabled(scored):
            if learning == "rtrl":
                x = inputs[s:s + T + 1]
                if x.shape[0] < T + 1:  # the last chunk: a dummy overlap step (its output is never used)
                    x = torch.cat([x, torch.zeros_like(x[:1])])
                h, record = core.learner_unroll(model.inp(x), first[s:s + T + 1], (), carry, 0)
                h = h[:T]
            else:
                state = tuple(t.detach() for t in state)
                h, state = core(model.inp(inputs[s:s + T]), first[s:s + T], state)
            if scored:
                loss_sum, ok = _masked_ce(model.readout(h), targets[s:s + T], mask[s:s + T])
                (loss_sum / n_scored).backward()
                total += loss_sum.item()
                correct += int(ok)
        if learning == "rtrl":
            carry = core.learner_after_backward(record)
    return total / n_scored, correct / n_scored


@torch.no_grad()
def evaluate(model: DiagModel, task: SequenceTask, seed: int, sequences: int, batch_size: int = 128) -> float:
    """Accuracy on the scored steps of ``sequences`` fresh sequences drawn with generator seed ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    correct, scored, left = 0, 0, sequences
    while left > 0:
        batch = task.sample(min(batch_size, left), gen)
        left -= batch.targets.shape[1]
        pred = model.predict(batch.inputs)
        correct += int(((pred == batch.targets) & batch.mask).sum())
        scored += int(batch.mask.sum())
    return correct / max(scored, 1)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_diag(cfg: DiagConfig, log: Callable[[str], None] = print) -> dict:
    """Train and evaluate; returns the results (also what ``--json`` prints).

    Uses ``cfg.threads`` torch threads while it runs and restores the caller's setting after.
    """
    task = cfg.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train_and_evaluate(cfg, task, log)
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate(cfg: DiagConfig, task: SequenceTask, log: Callable[[str], None]) -> dict:
    unroll = cfg.unroll if cfg.unroll is not None else (10 if cfg.learning == "tbptt" else None)
    chunk = cfg.segment if cfg.learning == "rtrl" else unroll
    chrono_max = cfg.chrono_max if cfg.chrono_max is not None else float(task.seq_len)
    torch.manual_seed(cfg.seed)
    model = DiagModel(task.input_size, cfg.hidden_size, task.num_classes, cfg.learning, chrono_max)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    writer = Logger(Path(cfg.tb)) if cfg.tb else None
    mode = f"rtrl (segment {chunk})" if cfg.learning == "rtrl" else f"tbptt (unroll {chunk})"
    log(f"diag {task.describe()} | {mode} | N={cfg.hidden_size} B={cfg.batch_size} lr={cfg.lr} "
        f"chrono_max={chrono_max:g} steps={cfg.steps} seed={cfg.seed}")
    start = time.perf_counter()
    window_loss, window_acc, window = 0.0, 0.0, 0
    loss = acc = float("nan")
    for step in range(1, cfg.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss, acc = accumulate_gradients(model, task.sample(cfg.batch_size, gen), cfg.learning, chunk)
        if cfg.clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        window_loss, window_acc, window = window_loss + loss, window_acc + acc, window + 1
        if writer is not None:
            scalars = {tags.DIAG_LOSS: loss, tags.DIAG_ACCURACY: acc}
            scalars.update(tags.core_stats(model.core.learner_stats()) if cfg.learning == "rtrl" else {})
            writer.scalars(scalars, step)
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            log(f"step {step:>6}/{cfg.steps}  loss {window_loss / window:.4f}  train acc {window_acc / window:.3f}  "
                f"{time.perf_counter() - start:.0f}s")
            window_loss, window_acc, window = 0.0, 0.0, 0
    train_time = time.perf_counter() - start
    train_rss = peak_rss_mib()
    accuracy = evaluate(model, task, cfg.seed + EVAL_SEED_OFFSET, cfg.eval_sequences)
    wall = time.perf_counter() - start
    if writer is not None:
        writer.scalars({tags.DIAG_EVAL_ACCURACY: accuracy}, cfg.steps)
        writer.close()
    results = {
        "task": task.name, "learning": cfg.learning, "unroll": unroll, "segment": cfg.segment if cfg.learning == "rtrl" else None,
        "hidden_size": cfg.hidden_size, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
        "symbols": getattr(task, "symbols", None), "length": task.length, "delay": task.delay,
        "seq_len": task.seq_len, "chrono_max": chrono_max, "chance": task.chance,
        "steps": cfg.steps, "final_train_loss": loss, "final_train_accuracy": acc,
        "accuracy": accuracy, "eval_sequences": cfg.eval_sequences, "eval_seed": cfg.seed + EVAL_SEED_OFFSET,
        "train_time_s": round(train_time, 2), "wall_time_s": round(wall, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1), "train_peak_rss_mib": round(train_rss, 1), "torch_threads": cfg.threads,
    }
    log(f"accuracy {accuracy:.4f} on {cfg.eval_sequences} held-out sequences (chance {task.chance:.3f}) | "
        f"{cfg.steps} steps in {train_time:.1f}s (wall {wall:.1f}s) | peak RSS {train_rss:.0f} MiB training, "
        f"{results['peak_rss_mib']:.0f} MiB with evaluation")
    return results


def flag_help(name: str) -> str:
    """The CLI help text of a :class:`DiagConfig` field: its docstring, plus its default when it has one."""
    from common.fields import field_help

    default = getattr(DiagConfig, name)
    return field_help(DiagConfig, name) + ("" if default is None else f" [default: {default}]")

