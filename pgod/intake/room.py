"""The free-space margin intake keeps for everyone else, and whether it has it now.

pgod's copies, rows and profiles must not take the last free space of the file systems it shares
with the rest of the machine. A fixed margin cannot be right everywhere: 64 MB is nothing on a
1 TB /var and more than a 16 MB or 64 MB state file system ever has, where intake then never
started at all. So the default follows systemd's, whose services have the same problem:
journald's SystemKeepFree and systemd-coredump's KeepFree keep 15 % of the file system's size
free, capped at 4 GiB (DEFAULT_KEEP_FREE_UPPER in both). pgod takes the same cap on purpose: raw
profiles are the least urgent writes on a machine, so pgod stops writing no later than the
journal and coredumps do, never eating into the room they keep, and what it leaves meanwhile
stays in the spool, counted once there is room again. An explicit `keep_free_mb` (0: none)
replaces the default for every file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgod.config import MB

KEEP_FREE_SHARE = 0.15  # of the file system's size, as journald's SystemKeepFree and coredump's KeepFree
KEEP_FREE_CAP = 4 << 30  # systemd's DEFAULT_KEEP_FREE_UPPER


def keep_free(size: int, configured: int | None) -> int:
    """The bytes to leave free on a file system of ``size`` bytes: ``configured`` when set, else
    15 % of it, at most 4 GiB."""
    if configured is not None:
        return configured
    return min(int(size * KEEP_FREE_SHARE), KEEP_FREE_CAP)


@dataclass(frozen=True)
class Shortage:
    """A file system pgod writes with less free space than its margin: what intake waits for."""

    folder: Path
    free: int  # bytes an unprivileged writer may still use there
    keep: int  # the margin
    size: int  # the file system's size
    configured: bool  # the margin is keep_free_mb's, not the default share

    def detail(self) -> str:
        if self.configured:
            why = f"keep_free_mb = {self.keep / MB:g}"
        else:
            why = f"15 % of its {self.size / MB:.1f} MB, the default margin (keep_free_mb sets another)"
        return (f"{self.free / MB:.1f} MB free on the file system of {self.folder}, less than {why}: intake waits "
                f"until {self.keep / MB:.1f} MB are free")

    def document(self) -> dict:
        """Status's figures beside the detail: where, how much is free, how much intake waits for."""
        return {"folder": str(self.folder), "free_bytes": self.free, "keep_free_bytes": self.keep,
                "filesystem_bytes": self.size}


def shortage(folders: tuple[Path, ...], configured: int | None) -> Shortage | None:
    """The first of ``folders`` whose file system has less free than its margin, or None."""
    if configured == 0:
        return None
    for folder in folders:
        info = os.statvfs(folder)
        free, size = info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize
        keep = keep_free(size, configured)
        if free < keep:
            return Shortage(folder, free, keep, size, configured is not None)
    return None
