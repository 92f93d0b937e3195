"""What a spool file really holds, against what its size says, before pgod reads any of it.

A sparse file costs its writer only the blocks it holds: 8 KB on disk can say 256 MiB, which a
reader gets as zeros. pgod reads a file whole to check it, copies the parts of a file with
several profiles as root (past any quota), and hands it to llvm-profdata: measured before this
check, one such file of nobody's took pgod's RSS to 320 MB, a two-part one to 573 MB and 256 MB
of root's writes, and another user's profiles waited 7.6 s. So a file's size is bounded by what it
holds before it is read.

The LLVM runtime writes every byte of a profile, padding and zero counters included, so on most
file systems a program's profile has no hole at all. One exception is kept in mind: ZFS with
compression on stores a record of zeros as a hole, and a large program's profile after a short
run is mostly zero counters. So a file is let through with holes of up to HOLES_PER_DATA_BYTE
times the bytes it holds (plus HOLES_ALLOWED): reading it costs pgod at most that many times what
it cost its writer, within the per-file cap and the per-uid pending bounds (fair.py).

st_blocks alone decides nothing: ZFS reports a freshly written file's blocks only once its
transaction group is written (seconds later), and counts compressed blocks. It only says when to
look: a file whose blocks cover its size (all of them on ext4, XFS, btrfs, tmpfs) costs nothing
more than its fstat. Otherwise SEEK_HOLE / SEEK_DATA say where the holes really are (dirty data
is data to them).
"""

from __future__ import annotations

import errno
import os

BLOCK_SLACK = 64 << 10  # st_blocks below the size by less than this is rounding, inline data, tails
HOLES_ALLOWED = 1 << 20  # holes any file may have, whatever it holds
HOLES_PER_DATA_BYTE = 8  # and more, up to this many times the bytes it holds
MAX_EXTENTS = 4096  # a walk over more data extents than this stops: the rest counts as holes


def may_be_sparse(info: os.stat_result) -> bool:
    """Could the file hold less than its size? False for every fully allocated file."""
    return info.st_blocks * 512 + BLOCK_SLACK < info.st_size


def hole_bytes(fd: int, size: int) -> int:
    """The bytes of holes in the first ``size`` bytes of the file behind ``fd``: what reading it
    returns as zeros without its writer having stored them. A file system without SEEK_DATA
    (EINVAL) is taken as having none, as Linux's generic fallback reports."""
    holes, position = 0, 0
    for _ in range(MAX_EXTENTS):
        if position >= size:
            return holes
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after position: the rest is a hole
                return holes + size - position
            if err.errno == errno.EINVAL:
                return holes
            raise
        holes += min(data, size) - position
        try:
            position = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as err:
            if err.errno == errno.EINVAL:
                return holes
            raise
    return holes + max(0, size - position)


def too_sparse(fd: int, info: os.stat_result) -> str | None:
    """Why a file holds too little of what its size says (a sentence), or None."""
    if not may_be_sparse(info):
        return None
    holes = hole_bytes(fd, info.st_size)
    held = info.st_size - holes
    if holes <= HOLES_ALLOWED + HOLES_PER_DATA_BYTE * held:
        return None
    return (f"{info.st_size} bytes long but {holes} of them are holes (it holds {held}): more than "
            f"{HOLES_PER_DATA_BYTE}× what it holds plus {HOLES_ALLOWED >> 20} MiB; a program's profile is written whole")
