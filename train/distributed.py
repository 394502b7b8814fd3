"""Data-parallel training over torch.distributed: the world of ranks and every collective the run uses.

``torchrun --nnodes N --nproc-per-node P run.py train ...`` starts N x P ranks; plain ``python run.py
train`` is a world of one, where every method below is a no-op and nothing is initialised. The
backend is gloo on CPU and NCCL on GPU (each rank on ``cuda:LOCAL_RANK``).

What crosses the ranks (everything else stays rank-local: env streams, recurrent state and RTRL
sensitivities, the store's tiers, the game detector):
  * at start: a hash of the resolved config (mismatch -> a one-line error on rank 0, all ranks exit)
    and, on resume, rank 0's checkpoint (broadcast, so a run dir need not be shared between nodes);
  * per learner update: the union of the experts touched on any rank (an all-gather of a bit mask,
    ``union``), then ONE all-reduce (sum) of the dense gradients and the experts' gradients in the
    agreed order (``all_reduce_sum``). Every rank's loss is its share of the global batch's loss
    (its own streams' sum; with ``loss_reduction=mean`` divided by the global valid-step count), so
    the sum is exactly the gradient of the one-process run that sees every rank's streams, and
    every rank takes the same clipped optimizer step: parameters and experts stay bit-identical;
  * every logging window and checkpoint: a gather of small per-rank figures and of replica checksums.

Collective payload per update (what ``dist/allreduce_bytes`` in TensorBoard measures):
    bytes = 4 (P_dense + 2 |U| N D)      the gradient all-reduce (float32)
          + 8 G E                        the routing counts (float64, MoE)
          + 4 ceil(E / 8) W              the expert masks' all-gather (MoE)
          + 4 G (E + 1)                  learned routing's balance-loss counts (MoE)
with P_dense the dense parameters, |U| the agreed experts, N the hidden size, D the core input
size, G the schedule's games and W the world size (4 bytes more with ``loss_reduction=mean``); a
ring all-reduce moves about 2 (W - 1) / W of its payload in and out of each rank. Outside the update, a 4-byte all-reduce per update agrees on
logging, and checkpoints gather checksums and apply the agreed pending expert gradients.

A rank that dies makes the others' next collective fail (or torchrun stops them); they report it in
one line and exit, and ``--resume`` restarts every rank from the last checkpoint. ``--dist-timeout``
bounds how long a collective waits for a silent rank.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import zlib
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from agent.cores.moe_elstm import Collectives
from common.errors import UserError

class RankLost(UserError):
    """A collective failed: another rank died or stopped answering."""


class World:
    """This process's place among the ranks, and the collectives (no-ops in a world of one)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, local_size: int = 1,
                 comm_device: torch.device = torch.device("cpu")) -> None:
        """``comm_device``: where the collectives' own tensors live (NCCL takes CUDA tensors only)."""
        self.rank, self.size, self.local_rank, self.local_size = rank, size, local_rank, local_size
        self.comm_device = comm_device
        self.exiting = False
        """Set when this rank is already leaving with an error of its own (the SIGTERM that torchrun
        then sends it adds nothing)."""
        self.bytes_reduced = 0
        """Payload bytes of every all-reduce and all-gather so far (``dist/allreduce_bytes``)."""

    @classmethod
    def from_environment(cls, device: str, timeout_s: float) -> "World":
        """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a world of one without them);
        initialises the process group (gloo on CPU, NCCL on CUDA). ``timeout_s``: how long a
        collective waits for the other ranks (rank 0's evaluations pause them)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        if "RANK" not in os.environ:
            raise UserError("WORLD_SIZE is set but RANK is not: launch with torchrun, which sets both")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        world = cls(rank, size, local_rank, local_size, torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
        signal.signal(signal.SIGTERM, world._stopped)
        return world

    @property
    def main(self) -> bool:
        """Rank 0: writes checkpoints, TensorBoard and the evaluation."""
        return self.rank == 0

    def device(self, resolved: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` when the run computes on CUDA."""
        return torch.device("cuda", self.local_rank) if resolved.type == "cuda" and self.size > 1 else resolved

    def local_envs(self, num_envs: int) -> int:
        """Env streams of this rank (``num_envs`` is the whole world's)."""
        if num_envs % self.size:
            self.fail(f"--num-envs ({num_envs}) must be a multiple of the world size ({self.size}): "
                      "every rank runs the same number of env streams")
        return num_envs // self.size

    def first_stream(self, num_envs: int) -> int:
        """Index of this rank's first stream among the world's ``num_envs`` (its seeds follow from it)."""
        return self.rank * self.local_envs(num_envs)

    def limit_threads(self) -> None:
        """Share the machine's cores between the ranks on it (torch intra-op threads)."""
        if self.size > 1:
            torch.set_num_threads(self.env_threads(0))

    def env_threads(self, num_threads: int) -> int:
        """Env worker threads of this rank: ``num_threads``, or for 0 its share of the node's cores
        (0 = one per core for a world of one)."""
        return num_threads if num_threads or self.size == 1 else max(1, (os.cpu_count() or 1) // self.local_size)

    def fail(self, message: str) -> None:
        """Raise the UserError ``message`` on every rank: rank 0 prints it, the others exit 2 quietly."""
        err = UserError(message)
        err.quiet = not self.main
        raise err

    def on_rank0(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 (None elsewhere); a UserError it raises stops every rank (said once, by rank 0)."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except UserError as e:
                if self.size == 1:
                    raise
                error = str(e)
        if self.size > 1 and (error := self.broadcast(error)) is not None:
            self.fail(error)
        return result

    # ------------------------------------------------------------------------------------ collectives
    def check_config(self, config_json: str) -> None:
        """Every rank must run the same resolved config: compare a hash of it (UserError on mismatch)."""
        if self.size == 1:
            return
        digest = hashlib.sha256(config_json.encode()).hexdigest()[:16]
        digests = self.gather(digest)
        if len(set(digests)) > 1:
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            self.fail(f"the ranks were given different configs (config hash of rank 0 {digests[0]}, "
                            f"ranks {odd} differ): launch every rank with the same flags")

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over the ranks, in place, as one flat all-reduce (same order on every rank)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._run(dist.all_reduce, flat)
        self.bytes_reduced += flat.numel() * flat.element_size()
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def union(self, ids: list[int], n: int) -> list[int]:
        """The sorted union over the ranks of ``ids`` (each in range(n)): an all-gather of bit masks."""
        if self.size == 1:
            return sorted(set(ids))
        mask = np.zeros(n, dtype=bool)
        mask[list(ids)] = True
        packed = torch.from_numpy(np.packbits(mask).astype(np.int32)).to(self.comm_device)
        out = [torch.zeros_like(packed) for _ in range(self.size)]
        self._run(dist.all_gather, out, packed)
        self.bytes_reduced += packed.numel() * packed.element_size() * self.size
        merged = np.bitwise_or.reduce(np.stack([o.cpu().numpy() for o in out])).astype(np.uint8)
        return np.flatnonzero(np.unpackbits(merged)[:n]).tolist()

    def collectives(self, num_experts: int) -> Collectives:
        """What the MoE core and its optimizer need of the ranks: the union of expert ids in
        range(``num_experts``) (:meth:`union`) and :meth:`all_reduce_sum`."""
        return Collectives(agree=lambda ids: self.union(ids, num_experts), all_reduce_sum=self.all_reduce_sum)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (e.g. rank 0's logging clock)."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        self._run(dist.all_reduce, t)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        self._run(dist.all_gather_object, out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj if self.main else None]
        self._run(dist.broadcast_object_list, box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            self._run(dist.barrier)

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _run(self, fn, *args) -> None:
        try:
            fn(*args)
        # A peer closed the connection, a timeout, ...: gloo raises DistError or a plain RuntimeError
        # ("Read error ... Connection reset by peer"), a write to a dead peer's socket can raise
        # BrokenPipeError. The reason goes into the message, so a misuse would still show.
        except (RuntimeError, ConnectionError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]  # drop gloo's source location
            raise RankLost(f"rank {self.rank} lost contact with the other ranks ({reason}): the job stops; "
                           "`--resume` restarts every rank from the last checkpoint") from None

    def _stopped(self, signum, frame) -> None:
        """SIGTERM (torchrun stops the surviving ranks when one fails): say so in one line and exit."""
        if self.exiting:
            os._exit(2)
        sys.stderr.write(f"error: rank {self.rank} stopped by signal {signum} (another rank failed or the job "
                         "was cancelled); `--resume` restarts every rank from the last checkpoint\n")
        sys.stderr.flush()
        os._exit(2)

    def __deepcopy__(self, memo: dict) -> "World":
        return self  # the actor's copy of the model shares the process's world


def replica_checksum(tensors: dict[str, torch.Tensor]) -> int:
    """crc32 over the bytes of ``tensors`` in key order (dense parameters, expert records)."""
    crc = 0
    for key in sorted(tensors):
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(tensors[key].detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc
