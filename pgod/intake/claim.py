"""Claim spool entries into pgod's private staging area, trusting nothing about them.

The spool is world-writable, so every entry may be hostile: a symlink to a secret, a hard link
to someone else's file, a FIFO that blocks a reader forever, a device, a huge file. The order of
operations is what makes this safe:

1. ``rename`` the entry into staging (same filesystem). rename never follows links and, once the
   name is in a 0700 directory, nobody else can swap what it points at.
2. ``lstat`` the staged entry: anything but a regular file with exactly one link is rejected
   without ever being opened.
3. ``open(O_RDONLY|O_NOFOLLOW|O_NONBLOCK)`` and ``fstat`` the descriptor: it must be the very
   inode we checked, still a regular single-link file, within the size cap, and hold what its
   size says (no more holes than sparse.py allows), all before a byte of it is read.

The daemon never opens a spool file for writing.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from pgod.intake.sparse import too_sparse

log = structlog.get_logger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class Checked:
    """A staged entry that passed the file-type checks: a regular, single-link file."""

    path: str
    original_name: str
    owner_uid: int
    size: int
    mtime: float


class Rejected(Exception):
    """A staged entry refused before its content was read; reason is a short stable code."""

    def __init__(self, reason: str, detail: str, owner_uid: int | None = None, size: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.owner_uid = owner_uid
        self.size = size


_KIND_NAMES = {
    stat.S_IFLNK: ("symlink", "a symbolic link (never followed)"),
    stat.S_IFIFO: ("fifo", "a FIFO"),
    stat.S_IFCHR: ("device", "a character device"),
    stat.S_IFBLK: ("device", "a block device"),
    stat.S_IFSOCK: ("socket", "a socket"),
    stat.S_IFDIR: ("directory", "a directory"),
}


def display_name(name: str) -> str:
    """A spool name as text the database and logs can hold: names are bytes, and one that is not
    UTF-8 (decoded with surrogates) shows its odd bytes escaped, as ``\\xff``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class Claimer:
    """Moves spool entries into ``incoming_dir`` under unique names.

    Paths are plain strings here: this runs once per raw profile, and building pathlib objects
    cost more than the rename itself."""

    def __init__(self, spool_dir: Path, incoming_dir: Path) -> None:
        self._spool = os.fsdecode(spool_dir)
        self._incoming = os.fsdecode(incoming_dir)
        # Unique across restarts: a time prefix, then a counter within this process.
        self._prefix = f"{time.time_ns():x}"
        self._counter = itertools.count()

    def claim(self, name: str) -> str | None:
        """Rename spool entry ``name`` into staging; returns its staging name, None if it is gone."""
        staging_name = f"{self._prefix}-{next(self._counter):06d}"
        try:
            os.rename(f"{self._spool}/{name}", f"{self._incoming}/{staging_name}")
        except FileNotFoundError:
            return None  # claimed already (scan and event raced) or removed by its owner
        except OSError as err:  # e.g. a folder made there since the check: never stop the batch
            log.warning("spool.unclaimable", file=display_name(name), error=err.strerror)
            return None
        return staging_name


def check_staged(path: str, original_name: str, max_bytes: int) -> tuple[Checked, int]:
    """Verify a staged entry and open it read-only; returns the checks and an open descriptor.

    Raises Rejected for anything that is not a plain, single-link, bounded regular file.
    """
    before = os.lstat(path)
    _require_plain_file(before, max_bytes)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise Rejected("unreadable", f"cannot open: {err.strerror}", before.st_uid, before.st_size) from None
    try:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise Rejected("swapped", "the file changed between check and open", after.st_uid, after.st_size)
        _require_plain_file(after, max_bytes)
        if (why := too_sparse(fd, after)) is not None:
            raise Rejected("sparse", why, after.st_uid, after.st_size)
    except BaseException:
        os.close(fd)
        raise
    return Checked(path, original_name, after.st_uid, after.st_size, after.st_mtime), fd


def _require_plain_file(info: os.stat_result, max_bytes: int) -> None:
    kind = stat.S_IFMT(info.st_mode)
    if kind != stat.S_IFREG:
        reason, what = _KIND_NAMES.get(kind, ("not-regular", "not a regular file"))
        raise Rejected(reason, f"spool entry is {what}", info.st_uid)
    if info.st_nlink != 1:
        raise Rejected("hard-link", f"regular file with {info.st_nlink} links (a hard link)", info.st_uid, info.st_size)
    if info.st_size == 0:
        raise Rejected("empty", "empty file", info.st_uid, 0)
    if info.st_size > max_bytes:
        raise Rejected("oversized", f"{info.st_size} bytes, over the cap of {max_bytes}", info.st_uid, info.st_size)
