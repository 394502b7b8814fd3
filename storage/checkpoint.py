"""Atomic, integrity-checked training checkpoints (Sample Factory style).

Layout of a run directory::

    <run_dir>/checkpoints/
        stage_000.pt        kept forever (saved with ``keep=True``)
        frames_000000123456.pt   periodic; only the newest ``keep_last`` of these remain
        latest              text file: the file name of the newest checkpoint

Durability
    Every file is written through :func:`storage.atomic.atomic_write` (temp file, fsync, rename,
    fsync dir), so a crash leaves either the old file or the new one. ``latest`` is rewritten,
    also atomically, only after the checkpoint file has been committed, so it never points at a
    half-written file. A full disk raises :class:`UserError` from the atomic helper before
    ``latest`` is touched. The pointer file is the source of truth: a committed checkpoint that
    ``latest`` does not name yet (crash between the two renames) is simply ignored on resume. With
    no ``latest`` at all (deleted, or a crash before the first one was written),
    :meth:`CheckpointManager.load_resume` takes the newest checkpoint that verifies, and refuses
    when none does.

File format (one file per checkpoint, ``<name>.pt``)
    A fixed 36-byte header followed by the payload, which is exactly what ``torch.save`` wrote::

        magic     8 bytes   b"RLCKPT\\x00\\x01"
        length    u64       payload size in bytes
        crc32     u32       zlib.crc32 of the payload
        flags     u32       bit 0: kept (never rotated away)
        seq       u64       save counter, orders checkpoints for rotation
        hdr_crc   u32       zlib.crc32 of the 32 header bytes before it

    (little-endian). ``torch.load`` alone does not notice a flipped byte inside a tensor's data,
    so :meth:`CheckpointManager.load` checks the length (truncation) and the CRC (bit rot, torn
    writes) before unpickling anything. The payload is streamed into the file while its CRC is
    computed; on load it is read into memory once, checked, and unpickled from there (peak memory
    is about twice the checkpoint size, which is fine for RL models).

Which checkpoints are kept
    Recorded in the header's ``kept`` flag (written atomically with the file itself, so no
    separate index can drift out of sync). Rotation deletes the oldest non-kept checkpoints,
    ordered by the header's ``seq``, beyond ``keep_last``; it never deletes the one ``latest``
    names, and never deletes a file whose header it cannot read. Stage-end checkpoints are saved
    with ``keep=True`` and names ``stage_NNN`` (:meth:`CheckpointManager.stage_checkpoints` lists
    them by that name). Stale temp files left by a writer that was killed mid-save are removed on
    the next save. One writer per run directory; any number of readers.

Unpickling
    ``torch.load(..., weights_only=True)`` with a small numpy allowlist: in torch 2.13
    ``weights_only=True`` accepts tensors, primitive containers (dict/list/tuple/set), str, bytes,
    int, float, bool, None and ``torch`` RNG states, which covers Python's ``random.getstate()``
    and ``np.random.Generator.bit_generator.state``. It rejects numpy arrays and scalars (e.g. the
    legacy ``np.random.get_state()`` tuple holds a uint32 array), so ``numpy.ndarray``, its
    ``_reconstruct`` helper, ``numpy.dtype`` and its dtype classes, and the numpy scalar
    constructor are allowlisted. These only rebuild plain data; nothing can run arbitrary code.
    A state holding any other class fails to load with torch's ``UnpicklingError`` (a bug in the
    caller, not a user error: put plain data in checkpoints).
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

from storage.atomic import atomic_write, atomic_write_text
from common.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
SUFFIX = ".pt"
STAGE_PREFIX = "stage_"

MAGIC = b"RLCKPT\x00\x01"
_HEADER_BODY = struct.Struct("<8sQIIQ")  # magic, length, crc32, flags, seq
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _HEADER_CRC.size  # 36
FLAG_KEPT = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Temp files made by storage.atomic.atomic_write for our files: ".<target name>.<random>.tmp".
_TEMP_RE = re.compile(r"^\.(?:latest|.+\.pt)\..+\.tmp$")


def _numpy_safe_globals() -> list[Any]:
    """The numpy callables/classes needed to unpickle plain arrays and scalars."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._core|.core).multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy(._core|.core).multiarray.scalar
    dtype_classes = {type(np.dtype(t)) for t in set(np.sctypeDict.values())}
    return [np.ndarray, np.dtype, reconstruct, scalar, *sorted(dtype_classes, key=str)]


_SAFE_GLOBALS = _numpy_safe_globals()


class _CrcWriter:
    """File-like wrapper that counts and CRCs what ``torch.save`` writes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.crc = 0
        self.length = 0
        self.error: OSError | None = None
        """The file's own error (a full disk), which ``torch.save`` reports as a RuntimeError of its own."""

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        try:
            n = self._f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.length += memoryview(data).nbytes
        return n

    def flush(self) -> None:
        self._f.flush()


def _pack_header(length: int, crc: int, flags: int, seq: int) -> bytes:
    body = _HEADER_BODY.pack(MAGIC, length, crc, flags, seq)
    return body + _HEADER_CRC.pack(zlib.crc32(body))


def _unpack_header(raw: bytes) -> tuple[int, int, int, int] | str:
    """``(length, crc, flags, seq)``, or a short reason why ``raw`` is not a valid header."""
    if len(raw) < HEADER_SIZE:
        return f"truncated: {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header"
    body = raw[: _HEADER_BODY.size]
    (hdr_crc,) = _HEADER_CRC.unpack(raw[_HEADER_BODY.size : HEADER_SIZE])
    magic, length, crc, flags, seq = _HEADER_BODY.unpack(body)
    if magic != MAGIC:
        return "not a checkpoint written by this project (bad magic bytes)"
    if zlib.crc32(body) != hdr_crc:
        return "header checksum mismatch"
    return length, crc, flags, seq


class ResumePoint(NamedTuple):
    """The checkpoint a resumed run continues from (:meth:`CheckpointManager.load_resume`)."""

    path: Path
    state: dict
    warning: str | None
    """Set when ``latest`` was missing and the checkpoint was found by scanning the directory."""


class CheckpointManager:
    """Saves, rotates and loads the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep_last: int = 2) -> None:
        """``keep_last``: how many periodic (non-kept) checkpoints survive rotation (>= 0).

        The one ``latest`` names always survives as well. With readers in other processes (e.g.
        an evaluator following ``latest``), keep_last >= 2 avoids deleting a file a reader has
        just been pointed at.
        """
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINT_DIR
        self.keep_last = keep_last

    @property
    def latest_file(self) -> Path:
        """The pointer file ``<run_dir>/checkpoints/latest``."""
        return self.dir / LATEST

    # ------------------------------------------------------------------ saving

    def save(self, state: dict, name: str, keep: bool = False) -> Path:
        """Atomically write ``state`` to ``checkpoints/<name>.pt`` and point ``latest`` at it.

        ``keep=True`` marks a checkpoint that rotation never deletes (stage ends, named
        ``stage_NNN``). Afterwards, periodic checkpoints beyond the newest ``keep_last`` are
        deleted, as are temp files left by an earlier killed writer. Returns the file's path.
        Raises :class:`UserError` (from the atomic helper) on a full disk or a read-only
        directory; the previous checkpoint and ``latest`` are then left as they were.
        """
        if not _NAME_RE.match(name) or name == LATEST or name.endswith(".tmp"):
            raise ValueError(f"bad checkpoint name {name!r}: use letters, digits, '_', '.', '-'")
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}{SUFFIX}"
        seq = max((h[3] for _, h in self._headers()), default=0) + 1
        flags = FLAG_KEPT if keep else 0

        def write(f: BinaryIO) -> None:
            f.write(b"\0" * HEADER_SIZE)  # placeholder until length and CRC are known
            w = _CrcWriter(f)
            try:
                torch.save(state, w)
            except RuntimeError:
                if w.error is None:
                    raise
                raise w.error from None  # atomic_write turns a full disk into a UserError
            f.seek(0)
            f.write(_pack_header(w.length, w.crc, flags, seq))
            f.seek(0, os.SEEK_END)

        atomic_write(path, write)  # committed (renamed + dir fsynced) before latest moves
        atomic_write_text(self.latest_file, path.name + "\n")
        self._rotate(current=path.name)
        return path

    def _headers(self) -> list[tuple[Path, tuple[int, int, int, int]]]:
        """``(path, (length, crc, flags, seq))`` for every checkpoint whose header is valid."""
        out = []
        if not self.dir.is_dir():
            return out
        for p in self.dir.iterdir():
            if p.name.startswith(".") or p.suffix != SUFFIX or not p.is_file():
                continue
            try:
                with open(p, "rb") as f:
                    header = _unpack_header(f.read(HEADER_SIZE))
            except OSError:
                continue
            if not isinstance(header, str):
                out.append((p, header))
        return out

    def _rotate(self, current: str) -> None:
        periodic = [(h[3], p) for p, h in self._headers() if not h[2] & FLAG_KEPT]
        periodic.sort(key=lambda sp: (sp[0], sp[1].name), reverse=True)
        for _, p in periodic[self.keep_last :]:
            if p.name != current:
                _unlink_quietly(p)
        for p in self.dir.iterdir():  # only one writer: any temp file still here is stale
            if _TEMP_RE.match(p.name):
                _unlink_quietly(p)

    # ------------------------------------------------------------------ loading

    def latest_path(self) -> Path | None:
        """The checkpoint ``latest`` names, or None if nothing has been saved yet.

        Raises :class:`UserError` if ``latest`` is unreadable, garbled, or names a missing file.
        """
        try:
            text = self.latest_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {self.latest_file} ({e}); {self._fix_hint()}") from e
        name = text.strip()
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\n" in name:
            raise UserError(
                f"{self.latest_file} is corrupt (content {text[:80]!r}); {self._fix_hint()}"
            )
        path = self.dir / name
        try:
            exists = path.is_file()
        except OSError as e:  # a name the file system cannot hold (ENAMETOOLONG)
            raise UserError(f"{self.latest_file} is corrupt (it names {name[:40]!r}..., {len(name)} characters: "
                            f"{e.strerror}); {self._fix_hint()}") from None
        if not exists:
            raise UserError(
                f"{self.latest_file} points at {path}, which does not exist; {self._fix_hint()}"
            )
        return path

    def load_latest(self, map_location: Any = "cpu") -> dict | None:
        """Load the checkpoint ``latest`` names; None if there is none yet."""
        path = self.latest_path()
        return None if path is None else self.load(path, map_location=map_location)

    def has_checkpoints(self) -> bool:
        """Whether anything was ever saved here: a ``latest`` pointer or a ``*.pt`` file (valid or not)."""
        return self.dir.is_dir() and any(p.name == LATEST or (p.suffix == SUFFIX and not p.name.startswith("."))
                                         for p in self.dir.iterdir())

    def load_resume(self, map_location: Any = "cpu") -> ResumePoint | None:
        """The checkpoint to resume from: the one ``latest`` names, or, when ``latest`` is missing (deleted,
        or a crash between a first checkpoint's rename and ``latest``'s), the newest (by save counter)
        checkpoint that verifies, with a warning naming the newer ones that do not. None when nothing
        was ever saved here (a new run).

        Raises :class:`UserError` when ``latest`` is damaged or names a bad file, or when it is missing
        and no checkpoint here verifies: the run is never silently started over.
        """
        path = self.latest_path()
        if path is not None:
            return ResumePoint(path, self.load(path, map_location=map_location), None)
        if not self.has_checkpoints():
            return None
        rejected = []
        for path, _ in sorted(self._headers(), key=lambda ph: ph[1][3], reverse=True):
            try:
                state = self.load(path, map_location=map_location)
            except UserError:
                rejected.append(path.name)
                continue
            skipped = f" (skipped the newer {', '.join(rejected)}: corrupt)" if rejected else ""
            return ResumePoint(path, state, f"{self.latest_file} is missing; resuming from the newest valid "
                                            f"checkpoint {path.name}{skipped}")
        raise UserError(f"{self.latest_file} is missing and {self.dir} holds no valid checkpoint; restore the "
                        "checkpoints from a backup, or start a new run in another --run-dir")

    def load(self, path: Path, map_location: Any = "cpu") -> dict:
        """Verify (length, CRC) and load one checkpoint file.

        Raises :class:`UserError` naming the file if it is missing, unreadable, truncated or
        corrupt.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                raw_header = f.read(HEADER_SIZE)
                header = _unpack_header(raw_header)
                if isinstance(header, str):
                    raise self._corrupt(path, header)
                length, crc, _, _ = header
                payload = f.read(length + 1)  # +1 detects trailing garbage
        except FileNotFoundError as e:
            raise UserError(f"checkpoint {path} does not exist; {self._fix_hint()}") from e
        except OSError as e:
            raise UserError(
                f"cannot read checkpoint {path} ({e.strerror or e}); {self._fix_hint()}"
            ) from e
        if len(payload) < length:
            have, want = HEADER_SIZE + len(payload), HEADER_SIZE + length
            raise self._corrupt(path, f"truncated: {have} of {want} bytes")
        if len(payload) > length:
            raise self._corrupt(path, "unexpected bytes after the payload")
        if zlib.crc32(payload) != crc:
            raise self._corrupt(path, "CRC32 mismatch")
        # The bytes are exactly what torch.save wrote, so a failure past this point is a bug or a
        # version mismatch, not a damaged file: let it keep its traceback.
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        if not isinstance(state, dict):
            raise self._corrupt(path, f"holds a {type(state).__name__}, not a dict")
        return state

    def stage_checkpoints(self) -> list[Path]:
        """The stage-end checkpoints ``stage_*.pt``, sorted by name."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob(f"{STAGE_PREFIX}*{SUFFIX}") if p.is_file())

    # ------------------------------------------------------------------ helpers

    def _fix_hint(self) -> str:
        return (f"point {self.latest_file} at an existing older checkpoint in {self.dir} "
                f"(it holds just the file name), or start a new run")

    def _corrupt(self, path: Path, why: str) -> UserError:
        return UserError(
            f"checkpoint {path} is corrupt ({why}); delete it and point {self.latest_file} at an"
            f" older checkpoint (it holds just the file name), or start a new run"
        )


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
