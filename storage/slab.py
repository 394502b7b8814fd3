"""The NVMe tier's files: one preallocated slab file per tensor kind, 4 KiB-aligned slots.

An expert record is a fixed set of named tensors (its *kinds*: e.g. ``F``, ``Z``, their optimizer
state, their RTRL sensitivities), every expert shaped alike (:class:`RecordSpec`). Kind ``k`` of
every expert lives in ``<dir>/<k>.slab``; slot ``s`` starts at byte ``s * slot_bytes`` where
``slot_bytes`` is the kind's size rounded up to 4 KiB, so every slot is page- and sector-aligned
(O_DIRECT-able, and a torn write never spills into a neighbour). Which slot holds which version of
which expert is the manifest's business (``storage/manifest.py``), not this file's.

A *durable* kind (parameters, optimizer state) has ``slots_per_expert`` slots per expert: expert
``e``'s slot ``j`` is slot ``e * slots_per_expert + j``. A *scratch* kind (:attr:`TensorSpec.scratch`:
state that a resume does not need, such as the RTRL sensitivities, which every fresh episode zeroes)
has one slot per expert, slot ``e``, overwritten in place. So any slab can be inspected with
``np.memmap(path, dtype, "r", shape=(slots, slot_bytes // itemsize))[slot, :numel].reshape(shape)``.

Files are preallocated with ``posix_fallocate`` at creation, so a full disk is found then, with a
clear error, and not in the middle of training. Writes are ``os.pwrite`` straight from a host
tensor's memory; durability is an explicit :meth:`SlabFile.sync`. Reads take one of
:data:`READ_PATHS` (``bench store`` measures them side by side) and come as pieces of at most
:data:`CHUNK` bytes (:meth:`SlabFile.read_pieces`), so a caller can keep several requests in flight.
Checksums are CRC-32C (Castagnoli) through the hardware-accelerated ``crc32c`` library.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import crc32c
import numpy as np
import torch

from common.errors import UserError

ALIGN = 4096
"""Slot alignment in bytes (page size; the sector size of any NVMe drive divides it)."""

SUFFIX = ".slab"

READ_PATHS = ("preadv", "direct", "mmap")
"""How slots are read: ``preadv`` (buffered reads through the page cache), ``direct`` (``O_DIRECT``
reads into 4 KiB-aligned buffers, bypassing the page cache; a buffer that is not aligned goes
through an aligned bounce buffer) or ``mmap`` (copies out of a read-only mapping of the file)."""

CHUNK = 1 << 20
"""Largest single read request, bytes (a multiple of :data:`ALIGN`)."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one kind of tensor in every expert record."""

    shape: tuple[int, ...]
    """Tensor shape, e.g. ``(N, D)`` for an input projection."""
    dtype: torch.dtype
    """Element type; records are stored as their raw bytes."""
    scratch: bool = False
    """Not durable: one slot per expert written in place, no checksum in the manifest, and zeros after
    every open of the store (a resume does not need it; see the module docstring)."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    @property
    def slot_bytes(self) -> int:
        """Bytes per slot: ``nbytes`` rounded up to :data:`ALIGN`."""
        return -(-self.nbytes // ALIGN) * ALIGN

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch."), "scratch": self.scratch}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(tuple(d["shape"]), getattr(torch, d["dtype"]), bool(d.get("scratch", False)))


RecordSpec = dict[str, TensorSpec]
"""Kind name -> tensor spec; one expert record is ``dict[str, Tensor]`` with these keys."""
Record = dict[str, torch.Tensor]


def empty_record(spec: RecordSpec, device: torch.device | str = "cpu", pin_memory: bool = False) -> Record:
    """A record of uninitialized tensors with ``spec``'s shapes (pinned host memory if asked). Host
    tensors start on a 4 KiB boundary with room for a whole slot after it, so ``O_DIRECT`` reads land
    in them without a bounce buffer."""
    if torch.device(device).type != "cpu":
        return {k: torch.empty(s.shape, dtype=s.dtype, device=device) for k, s in spec.items()}
    return {k: _aligned_empty(s, pin_memory) for k, s in spec.items()}


def _aligned_empty(spec: TensorSpec, pin_memory: bool) -> torch.Tensor:
    # Zeroed, not just allocated: the pages are faulted in now, not by the first read into them
    # (on the 2-core machine those faults cost a cold read of 1 MiB records about as much as the disk).
    base = torch.zeros(spec.slot_bytes + ALIGN, dtype=torch.uint8, pin_memory=pin_memory)
    start = -base.data_ptr() % ALIGN
    return base[start:start + spec.nbytes].view(spec.dtype).reshape(spec.shape)


def tensor_crc(t: torch.Tensor) -> int:
    """CRC-32C of a host tensor's raw bytes (the GIL is released for large tensors)."""
    return crc32c.crc32c(_bytes_view(t))


class SlabFile:
    """One kind's slab file: ``num_slots`` slots of ``spec.slot_bytes`` bytes each."""

    def __init__(self, path: Path, spec: TensorSpec, num_slots: int, create: bool, read_path: str = "preadv") -> None:
        """Open ``path`` (``create``: make and preallocate it; otherwise it must exist with the right
        size); ``read_path``: one of :data:`READ_PATHS`."""
        if read_path not in READ_PATHS:
            raise UserError(f"unknown read path {read_path!r}; choose one of {', '.join(READ_PATHS)}")
        self.path = Path(path)
        self.spec = spec
        self.num_slots = num_slots
        self.read_path = read_path
        self._direct_fd = -1
        self._map: mmap.mmap | None = None
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
        try:
            if read_path == "direct":
                self._direct_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            elif read_path == "mmap":
                self._map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
        except OSError as e:
            self.close()
            raise UserError(f"cannot open {self.path} for --read-path {read_path} ({e.strerror}); "
                            "choose another read path") from e

    def read_pieces(self, slot: int, out: torch.Tensor) -> list[Callable[[], None]]:
        """The reads that together fill host tensor ``out`` from ``slot``, each at most :data:`CHUNK`
        bytes; they may run in any order, concurrently (each releases the GIL while it waits)."""
        offset = self._offset(slot)
        if self.read_path == "direct":
            region = _slot_region(out, self.spec.slot_bytes)
            if region is None:  # not an aligned slot-sized buffer: read into one, then copy
                return [lambda: self._bounce(offset, out)]
            fd, n = self._direct_fd, self.spec.slot_bytes
        else:
            region, fd, n = bytes_array(out), self.fd, self.spec.nbytes
        if self._map is not None:
            src = np.frombuffer(self._map, np.uint8, n, offset)
            return [lambda a=a: np.copyto(region[a:a + CHUNK], src[a:a + CHUNK]) for a in range(0, n, CHUNK)]
        return [lambda a=a: self._pread(fd, region[a:a + CHUNK], offset + a) for a in range(0, n, CHUNK)]

    def _pread(self, fd: int, dst: np.ndarray, offset: int) -> None:
        got = os.preadv(fd, [memoryview(dst)], offset)
        if got != len(dst):
            raise UserError(f"short read at byte {offset} of {self.path}: {got} of {len(dst)} bytes")

    def _bounce(self, offset: int, out: torch.Tensor) -> None:
        buf = _aligned_empty(TensorSpec((self.spec.slot_bytes,), torch.uint8), pin_memory=False)
        region = _slot_region(buf, self.spec.slot_bytes)
        for a in range(0, self.spec.slot_bytes, CHUNK):
            self._pread(self._direct_fd, region[a:a + CHUNK], offset + a)
        bytes_array(out)[:] = region[: self.spec.nbytes]

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
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a failed read's traceback still holds a view: the collector unmaps it
                pass
            self._map = None
        for name in ("_direct_fd", "fd"):
            if getattr(self, name) >= 0:
                os.close(getattr(self, name))
                setattr(self, name, -1)

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.num_slots})")
        return slot * self.spec.slot_bytes


def bytes_array(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a contiguous host tensor as a uint8 array sharing its memory."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("expected a contiguous host tensor")
    return t.reshape(-1).view(torch.uint8).numpy()


def _slot_region(t: torch.Tensor, slot_bytes: int) -> np.ndarray | None:
    """The ``slot_bytes`` bytes of ``t``'s storage from its first byte, when they start on a 4 KiB
    boundary and lie inside the storage (the buffers of :func:`empty_record`); else None."""
    if t.device.type != "cpu" or not t.is_contiguous() or t.data_ptr() % ALIGN:
        return None
    storage = t.untyped_storage()
    start = t.storage_offset() * t.element_size()
    if storage.nbytes() - start < slot_bytes:
        return None
    return torch.empty(0, dtype=torch.uint8).set_(storage, start, (slot_bytes,)).numpy()


def _bytes_view(t: torch.Tensor) -> memoryview:
    return memoryview(bytes_array(t))


def _io_error(e: OSError, what: str, outcome: str = "the last committed state is kept") -> Exception:
    """A full disk or a permission problem is the user's to fix (``outcome`` says what is left); anything
    else stays a bug."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG):
        return UserError(f"{what}: {e.strerror}; {outcome}")
    return e
