"""Making file writes durable: the exactly-once invariant rests on these, so they live in one place."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(err: BaseException) -> bool:
    """An error that says the disk (or the user's quota) is full: the file system's own, or
    SQLite's "database or disk is full". Such an error is nobody's input: nothing is rejected
    for it, the work waits until there is room again."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    return "database or disk is full" in str(err)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(directory: str | os.PathLike[str]) -> None:
    """Make everything written on ``directory``'s filesystem durable: one syncfs(2) for a batch of
    files, where one fsync each would cost a journal commit per file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), os.fsdecode(directory))
    finally:
        os.close(fd)


def write_file(path: str, content: bytes) -> None:
    """Create or replace ``path`` (0600, never through a symlink) holding ``content``. Not
    synced: see ``sync_filesystem``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def replace_file(path: str | os.PathLike[str], content: bytes) -> None:
    """Replace ``path`` by a file holding ``content``, durably and atomically: readers see the
    old file or the new one, never a part, and after a crash one of the two is there."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    temporary = f"{path}.{os.getpid()}.tmp"
    write_file(temporary, content)
    fd = os.open(temporary, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(directory)


def unlink_if_present(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def move_if_present(source: str | Path, target: str | Path) -> None:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        pass
