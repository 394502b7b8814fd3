"""The NVMe tier's files: one preallocated slab file per tensor kind, 4 KiB-aligned slots.

An expert record is a fixed set of named tensors (its *kinds*: e.g. ``F``, ``Z``, their optimizer
state, their RTRL sensitivities), every expert shaped alike (:class:`RecordSpec`). Kind ``k`` of
every expert lives in ``<dir>/<k>.slab``; slot ``s`` starts at byte ``s * slot_bytes`` where
``slot_bytes`` is the kind's size rounded up to 4 KiB, so every slot is page- and sector-aligned
(O_DIRECT-able, and a torn write never spills into a neighbour). Which slot holds which version of
which expert is the manifest's business (``storage/manifest.py``), not this file's.

Files are preallocated with ``posix_fallocate`` at creation, so a full disk is found then, with a
clear error, and not in the middle of training. I/O is ``os.preadv``/``os.pwrite`` straight
between the file and a host tensor's memory (no intermediate copy); durability is an explicit
:meth:`SlabFile.sync`.
"""

from __future__ import annotations

import errno
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError

ALIGN = 4096
"""Slot alignment in bytes (page size; the sector size of any NVMe drive divides it)."""

SUFFIX = ".slab"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one kind of tensor in every expert record."""

    shape: tuple[int, ...]
    """Tensor shape, e.g. ``(N, D)`` for an input projection."""
    dtype: torch.dtype
    """Element type; records are stored as their raw bytes."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    @property
    def slot_bytes(self) -> int:
        """Bytes per slot: ``nbytes`` rounded up to :data:`ALIGN`."""
        return -(-self.nbytes // ALIGN) * ALIGN

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(tuple(d["shape"]), getattr(torch, d["dtype"]))


RecordSpec = dict[str, TensorSpec]
"""Kind name -> tensor spec; one expert record is ``dict[str, Tensor]`` with these keys."""
Record = dict[str, torch.Tensor]


def empty_record(spec: RecordSpec, device: torch.device | str = "cpu", pin_memory: bool = False) -> Record:
    """A record of uninitialized tensors with ``spec``'s shapes (pinned host memory if asked)."""
    return {k: torch.empty(s.shape, dtype=s.dtype, device=device, pin_memory=pin_memory) for k, s in spec.items()}


def tensor_crc(t: torch.Tensor) -> int:
    """crc32 of a host tensor's raw bytes."""
    return zlib.crc32(_bytes_view(t))


class SlabFile:
    """One kind's slab file: ``num_slots`` slots of ``spec.slot_bytes`` bytes each."""

    def __init__(self, path: Path, spec: TensorSpec, num_slots: int, create: bool) -> None:
        """Open ``path`` (``create``: make and preallocate it; otherwise it must exist with the right size)."""
        self.path = Path(path)
        self.spec = spec
        self.num_slots = num_slots
        size = num_slots * spec.slot_bytes
        if create:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.posix_fallocate(self.fd, 0, size)
            except OSError as e:
                os.close(self.fd)
                raise _io_error(e, f"cannot allocate {size / 2**20:.1f} MiB for {self.path}",
                                "the store was not created") from e
        else:
            try:
                self.fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError as e:
                raise UserError(f"expert store file {self.path} is missing") from e
            actual = os.fstat(self.fd).st_size
            if actual != size:
                os.close(self.fd)
                raise UserError(f"expert store file {self.path} has {actual} bytes, expected {size}: "
                                "truncated or from another store")

    def read(self, slot: int, out: torch.Tensor) -> None:
        """Fill host tensor ``out`` from ``slot``."""
        view = _bytes_view(out)
        n = os.preadv(self.fd, [view], self._offset(slot))
        if n != len(view):
            raise UserError(f"short read of slot {slot} in {self.path}: {n} of {len(view)} bytes")

    def write(self, slot: int, src: torch.Tensor) -> None:
        """Write host tensor ``src`` into ``slot`` (durable only after :meth:`sync`)."""
        view = _bytes_view(src)
        offset = self._offset(slot)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise _io_error(e, f"cannot write slot {slot} of {self.path}") from e

    def sync(self) -> None:
        """fsync: every completed write is on the disk."""
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise _io_error(e, f"cannot sync {self.path}") from e

    def drop_cache(self) -> None:
        """Ask the kernel to drop this file's cached pages, so the next reads come from the disk."""
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.num_slots})")
        return slot * self.spec.slot_bytes


def bytes_array(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a contiguous host tensor as a uint8 array sharing its memory."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("expected a contiguous host tensor")
    return t.reshape(-1).view(torch.uint8).numpy()


def _bytes_view(t: torch.Tensor) -> memoryview:
    return memoryview(bytes_array(t))


def _io_error(e: OSError, what: str, outcome: str = "the last committed state is kept") -> Exception:
    """A full disk or a permission problem is the user's to fix (``outcome`` says what is left); anything
    else stays a bug."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG):
        return UserError(f"{what}: {e.strerror}; {outcome}")
    return e
