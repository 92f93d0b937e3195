"""The daemon's private folders: staging (claimed files), parts, quarantine, unattributed, profiles.

Staging must be reachable from the spool by rename, because claiming is a rename. It lives
under the state folder when a probe rename from the spool to there works, otherwise (another
filesystem, or another mount of the same one, as systemd's ReadWritePaths makes) in a
daemon-owned 0700 folder inside the spool. Either way its ownership and mode are checked at
start, since the spool is world-writable and someone could have planted a folder (or a symlink)
of that name first.

llvm-profdata runs as the unprivileged merge user (merge.py) and reaches its inputs through
descriptors pgod hands it; the one folder it may write, `merge` in the state folder, is its own.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .config import Config

SPOOL_STAGING_NAME = ".pgod-staging"


class StagingError(RuntimeError):
    """Staging cannot be made safe; the daemon must not start."""


@dataclass(frozen=True)
class Layout:
    """Every folder the daemon writes, derived from the configuration."""

    spool: Path
    staging: Path
    state: Path

    @cached_property
    def incoming(self) -> Path:
        return self.staging / "incoming"

    @cached_property
    def parts(self) -> Path:
        return self.staging / "parts"

    @cached_property
    def quarantine(self) -> Path:
        return self.staging / "quarantine"

    @cached_property
    def unattributed(self) -> Path:
        return self.staging / "unattributed"

    @cached_property
    def profiles(self) -> Path:
        return self.state / "profiles"

    @cached_property
    def merge_work(self) -> Path:
        return self.state / "merge"

    def package_profiles(self, package: str) -> Path:
        return self.profiles / package


def prepare_layout(config: Config, merge_uid: int | None = None) -> Layout:
    """Create and verify the folders; raise StagingError when they cannot be trusted.

    ``merge_uid``: the user llvm-profdata runs as (None: the daemon's own)."""
    for directory in (config.state_dir, config.spool_dir):
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    staging = config.state_dir / "staging"
    _make_private_dir(staging)
    if not _rename_reaches(config.spool_dir, staging):
        staging = config.spool_dir / SPOOL_STAGING_NAME
        _make_private_dir(staging)
    layout = Layout(config.spool_dir, staging, config.state_dir)
    for directory in (layout.incoming, layout.parts, layout.quarantine, layout.unattributed, layout.profiles):
        _make_private_dir(directory)
    _make_merge_work(layout.merge_work, os.geteuid() if merge_uid is None else merge_uid)
    return layout


def _make_merge_work(path: Path, uid: int) -> None:
    """llvm-profdata's one writable folder: owned by the merge user, emptied of what a run left."""
    _existing_dir(path)
    os.chown(path, uid, -1, follow_symlinks=False)
    os.chmod(path, 0o700)
    with os.scandir(path) as scan:
        for entry in scan:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)


def _rename_reaches(spool: Path, staging: Path) -> bool:
    """Can a file in the spool be renamed into staging? Tried with a probe file of our own."""
    probe = spool / f".pgod-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    try:
        os.rename(probe, staging / probe.name)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        os.unlink(probe)
        return False
    os.unlink(staging / probe.name)
    return True


def _existing_dir(path: Path) -> os.stat_result:
    """``path`` made (0700) if missing; its lstat, refusing anything but a real folder."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StagingError(f"{path} exists and is not a directory (refusing to use it)")
    return info


def _make_private_dir(path: Path) -> None:
    info = _existing_dir(path)
    if info.st_uid != os.geteuid():
        raise StagingError(f"{path} is owned by uid {info.st_uid}, not by the daemon (uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def safe_component(name: str) -> str:
    """A spool name made safe to embed in one of our file names."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]
    return cleaned or "_"


def prune_oldest(directory: Path, keep: int, max_bytes: int | None = None) -> int:
    """Delete the oldest files of a bounded folder until at most ``keep`` remain and, when given,
    they hold at most ``max_bytes``; returns how many went. Anything but a file (a folder an
    older pgod moved here) is left alone and never stops it."""
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if not entry.is_dir(follow_symlinks=False):
                try:
                    entries.append((entry.name, entry.path, entry.stat(follow_symlinks=False).st_size))
                except FileNotFoundError:
                    pass
    total = sum(size for _name, _path, size in entries)
    if len(entries) <= keep and (max_bytes is None or total <= max_bytes):
        return 0
    # Our names start with a hex time stamp, so name order is age order.
    entries.sort()
    removed = 0
    for _name, path, size in entries:
        if len(entries) - removed <= keep and (max_bytes is None or total <= max_bytes):
            break
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
        removed += 1
        total -= size
    return removed


def free_bytes(directory: Path) -> int:
    """Space left for an unprivileged writer on ``directory``'s file system."""
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize
