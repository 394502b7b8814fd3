"""Supervised sequence tasks that probe a recurrent core's memory (``python run.py diag TASK``).

Every task draws a batch of B independent sequences from a seeded ``torch.Generator`` and returns
a :class:`SequenceBatch`:

    inputs  [L, B, D]  float32, one-hot (haystack: two one-hots per step, see below)
    targets [L, B]     int64 class ids in [0, num_classes); 0 where the step is not scored
    mask    [L, B]     bool, the steps that are scored (the loss and the accuracy use only these)

All sequences of a batch have the same length L (``task.seq_len``), so one batch is one tensor.
The answer at every scored step is a function of the inputs up to and including that step (the
tests check it), and the same generator seed gives the same batch.

Tasks (K = ``symbols``):

``copy`` (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): ``length`` random symbols, then
    ``delay`` blank steps, then a recall cue; at the cue step and the ``length - 1`` blank steps
    after it the model must output the symbols in order. L = 2 * length + delay.
    Input alphabet: K symbols, blank, cue (D = K + 2). Chance accuracy: 1 / K.

``anbn`` (counting, in the classification form of the a^n b^n language): a^n b^m, then ``delay``
    blanks, then a query; at the query the model says whether m == n (class 1) or not (class 0).
    n is uniform in [1, length]; half the sequences match (m = n), half are near misses
    (m = n + d, d uniform in {-2, -1, +1, +2}, kept >= 1), so counting must be exact. Sequences
    are left-padded with blanks to a common L = 2 * length + 3 + delay (padding carries no
    information, the string always starts after it). Alphabet: a, b, blank, query (D = 4).
    Chance accuracy: 1 / 2 (the classes are drawn with probability 1/2 each).

``haystack`` (associative recall among distractors): a haystack of ``length + delay`` steps in
    which ``length`` steps at random positions each show a (key, value) pair, the keys distinct,
    and every other step shows a lone distractor value with no key; then a query step shows one of
    the pairs' keys; the target is that key's value. Needs length <= K. D = 2K + 1 (a key
    one-hot, a value one-hot, a query flag). L = length + delay + 1. Chance accuracy: 1 / K
    (values are uniform and independent of the keys).

``delay`` can be 0 for every task; ``length`` must be >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import UserError

TASKS = ("copy", "anbn", "haystack")
"""The task names, in the order ``run.py diag`` lists them."""


@dataclass(frozen=True)
class SequenceBatch:
    """One batch: inputs [L, B, D] float32, targets [L, B] int64, mask [L, B] bool (scored steps)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


class SequenceTask:
    """A task's sizes and its sampler. Subclasses set the fields in ``__init__`` and implement ``sample``."""

    name: str
    input_size: int
    """D, the width of one input step."""
    num_classes: int
    """Number of target classes (the readout's width)."""
    seq_len: int
    """L, the steps in every sequence."""
    chance: float
    """Expected accuracy of the best input-blind guess on the scored steps."""

    def sample(self, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name}: L={self.seq_len} D={self.input_size} classes={self.num_classes} chance={self.chance:.3f}"


def _check(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class CopyTask(SequenceTask):
    """``length`` symbols, ``delay`` blanks, a cue, then recall the symbols in order (see the module docstring)."""

    name = "copy"

    def __init__(self, symbols: int = 8, length: int = 1, delay: int = 200):
        self.symbols = _check("--symbols", symbols, 2)
        self.length = _check("--length", length, 1)
        self.delay = _check("--delay", delay, 0)
        self.blank, self.cue = symbols, symbols + 1
        self.input_size, self.num_classes = symbols + 2, symbols
        self.seq_len = 2 * length + delay
        self.chance = 1.0 / symbols

    def sample(self, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        B, n, L = batch_size, self.length, self.seq_len
        data = torch.randint(0, self.symbols, (n, B), generator=generator)
        tokens = torch.full((L, B), self.blank, dtype=torch.long)
        tokens[:n] = data
        start = n + self.delay  # the cue step, the first scored one
        tokens[start] = self.cue
        targets = torch.zeros(L, B, dtype=torch.long)
        targets[start:start + n] = data
        mask = torch.zeros(L, B, dtype=torch.bool)
        mask[start:start + n] = True
        inputs = _one_hot(tokens, self.input_size)
        return SequenceBatch(inputs, targets, mask)


class AnBnTask(SequenceTask):
    """a^n b^m, blanks, query: does m equal n? (see the module docstring)."""

    name = "anbn"
    A, B_, BLANK, QUERY = 0, 1, 2, 3
    OFFSETS = (-2, -1, 1, 2)

    def __init__(self, length: int = 10, delay: int = 0):
        self.length = _check("--length", length, 1)
        self.delay = _check("--delay", delay, 0)
        self.input_size, self.num_classes = 4, 2
        self.max_m = length + max(self.OFFSETS)
        self.seq_len = length + self.max_m + delay + 1
        self.chance = 0.5

    def sample(self, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        B, L = batch_size, self.seq_len
        n = torch.randint(1, self.length + 1, (B,), generator=generator)
        match = torch.rand(B, generator=generator) < 0.5
        offsets = torch.tensor(self.OFFSETS)[torch.randint(0, len(self.OFFSETS), (B,), generator=generator)]
        m = torch.where(match, n, n + offsets)
        # A near miss that would leave no b's becomes one with more b's, so m >= 1 and m != n hold.
        m = torch.where(m < 1, n + offsets.abs(), m)
        # Right-aligned: the query is the last step, the delay's blanks before it, the b's before those.
        pos = torch.arange(L).unsqueeze(1)  # [L, 1]
        b_end = L - 1 - self.delay  # first step after the b's
        b_start = b_end - m
        a_start = b_start - n
        tokens = torch.full((L, B), self.BLANK, dtype=torch.long)
        tokens = torch.where((pos >= a_start) & (pos < b_start), torch.tensor(self.A), tokens)
        tokens = torch.where((pos >= b_start) & (pos < b_end), torch.tensor(self.B_), tokens)
        tokens[L - 1] = self.QUERY
        targets = torch.zeros(L, B, dtype=torch.long)
        targets[L - 1] = (m == n).long()
        mask = torch.zeros(L, B, dtype=torch.bool)
        mask[L - 1] = True
        inputs = _one_hot(tokens, self.input_size)
        return SequenceBatch(inputs, targets, mask)


class HaystackTask(SequenceTask):
    """Key-value pairs hidden among distractor values; a final query asks for one key's value."""

    name = "haystack"

    def __init__(self, symbols: int = 8, length: int = 1, delay: int = 50):
        self.symbols = _check("--symbols", symbols, 2)
        self.length = _check("--length", length, 1)
        self.delay = _check("--delay", delay, 0)
        if length > symbols:
            raise UserError(f"haystack needs --length <= --symbols (distinct keys), got {length} > {symbols}")
        K = symbols
        self.input_size, self.num_classes = 2 * K + 1, K
        self.seq_len = length + delay + 1
        self.chance = 1.0 / K

    def sample(self, batch_size: int, generator: torch.Generator) -> SequenceBatch:
        B, K, n, L = batch_size, self.symbols, self.length, self.seq_len
        H = L - 1  # haystack steps
        # Pair positions: the first n of a random permutation of the haystack, per sequence.
        positions = torch.rand(B, H, generator=generator).argsort(dim=1)[:, :n]  # [B, n]
        keys = torch.rand(B, K, generator=generator).argsort(dim=1)[:, :n]  # [B, n], distinct
        pair_values = torch.randint(0, K, (B, n), generator=generator)
        values = torch.randint(0, K, (B, H), generator=generator)  # distractors everywhere ...
        values.scatter_(1, positions, pair_values)  # ... except where the pairs are
        which = torch.randint(0, n, (B,), generator=generator)
        query_key = keys.gather(1, which[:, None]).squeeze(1)
        answer = pair_values.gather(1, which[:, None]).squeeze(1)

        inputs = torch.zeros(L, B, 2 * K + 1)
        batch = torch.arange(B)
        steps = torch.arange(H)
        inputs[steps[:, None], batch[None, :], K + values.T] = 1.0  # a value on every haystack step
        inputs[positions.T, batch[None, :], keys.T] = 1.0  # keys at the pairs' steps
        inputs[L - 1, batch, query_key] = 1.0
        inputs[L - 1, :, 2 * K] = 1.0  # the query flag
        targets = torch.zeros(L, B, dtype=torch.long)
        targets[L - 1] = answer
        mask = torch.zeros(L, B, dtype=torch.bool)
        mask[L - 1] = True
        return SequenceBatch(inputs, targets, mask)


def _one_hot(tokens: torch.Tensor, size: int) -> torch.Tensor:
    """float32 one-hot [L, B, size] of tokens [L, B] (without F.one_hot's int64 intermediate)."""
    return torch.zeros(*tokens.shape, size).scatter_(-1, tokens.unsqueeze(-1), 1.0)


def make_task(name: str, *, symbols: int | None = None, length: int | None = None,
              delay: int | None = None) -> SequenceTask:
    """The task ``name`` with the given sizes (None: the task's default). UserError for bad names or sizes."""
    kwargs = {k: v for k, v in (("length", length), ("delay", delay)) if v is not None}
    if name == "copy":
        return CopyTask(**kwargs, **({"symbols": symbols} if symbols is not None else {}))
    if name == "haystack":
        return HaystackTask(**kwargs, **({"symbols": symbols} if symbols is not None else {}))
    if name == "anbn":
        if symbols is not None:
            raise UserError("anbn has a fixed alphabet (a, b, blank, query); leave out --symbols")
        return AnBnTask(**kwargs)
    raise UserError(f"unknown diag task {name!r}; choose one of {', '.join(TASKS)}")
