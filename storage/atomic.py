"""The one atomic-write helper: every file written for durability goes through here.

A write is: create a temporary file in the target's directory, write, flush, fsync, rename over
the target, fsync the directory. A crash at any point leaves either the old file or the new one,
never a torn mix. A target whose directory takes no file, a full disk, a permission problem, a
read-only disk or a name too long raises :class:`UserError` and leaves the old file untouched.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from common.errors import UserError


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Atomically replace ``path`` with what ``write(f)`` writes to a binary file object."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _remove_quietly(tmp)
        if e.errno in _USER_ERRNOS:
            raise UserError(f"cannot write {path}: {e.strerror}; the previous version, if any, is kept") from e
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


def check_writable(directory: str | os.PathLike) -> None:
    """Raise :class:`UserError` unless a file can be created in ``directory`` (made if missing), so that a
    command that writes there only at its end (an evaluation) fails at its start instead."""
    fd, tmp = _create_temp(Path(directory) / ".write-check")
    os.close(fd)
    os.unlink(tmp)


_USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.ENAMETOOLONG)
"""A full disk, a permission problem, a read-only disk, a name too long: the user's to fix."""


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (its directory made if missing): ``(fd, name)``. Any failure
    here is about the target's directory (missing, not a place for files, read-only, full, a name too
    long), so it is a :class:`UserError` that changed nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
