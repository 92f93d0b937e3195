"""The daemon's private folders: staging (claimed files), parts, quarantine, unattributed, profiles.

Staging must be reachable from the spool by rename, because claiming is a rename. It lives
under the state folder when a probe rename from the spool to there works, otherwise (another
filesystem, or another mount of the same one, as systemd's ReadWritePaths makes) in a
daemon-owned 0700 folder inside the spool. Either way its ownership and mode are checked at
start, since the spool is world-writable.

Names in the spool are the daemon's only where nobody can guess them first: the probe and the
in-spool staging folder carry random names (the staging folder's is chosen once and kept in the
state folder, which only root can write), so a user who plants files or folders under any
predictable name cannot keep pgod from starting.

llvm-profdata runs as the unprivileged merge user (merge/confined.py) and reaches its inputs through
descriptors pgod hands it; the one folder it may write, `merge` in the state folder, is its own.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pgod.config import Config
from pgod.durable import replace_file

SPOOL_STAGING_PREFIX = ".pgod-staging-"
STAGING_NAME_RECORD = "spool-staging-name"  # in the state folder: the in-spool staging's name
LEGACY_SPOOL_STAGING_NAME = ".pgod-staging"  # the fixed name before; adopted when it is ours
# Staging names of the growth parts pgod writes for live runs (intake/live.py): one without a row
# is deleted at recovery, never examined again, since its baseline did not move (the next poll
# computes the growth anew) and examining it would count it a second time.
GROWTH_STAGING_PREFIX = "growth-"


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


def prepare_layout(config: Config, merge_gid: int | None = None) -> Layout:
    """Create and verify the folders; raise StagingError when they cannot be trusted.

    ``merge_gid``: the primary group of the user llvm-profdata runs as (None: the daemon's own)."""
    for directory in (config.state_dir, config.spool_dir):
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    staging = config.state_dir / "staging"
    _make_private_dir(staging)
    if not _rename_reaches(config.spool_dir, staging):
        staging = _spool_staging(config)
    layout = Layout(config.spool_dir, staging, config.state_dir)
    for directory in (layout.incoming, layout.parts, layout.quarantine, layout.unattributed, layout.profiles):
        _make_private_dir(directory)
    _make_merge_work(layout.merge_work, os.getegid() if merge_gid is None else merge_gid)
    return layout


def _make_merge_work(path: Path, gid: int) -> None:
    """llvm-profdata's one writable folder, emptied of what a run left.

    The daemon owns it and gives the merge user's group write access (0770). Under its unit
    pgod is root without CAP_FOWNER and CAP_DAC_OVERRIDE: had it handed the folder to the merge
    user, it could neither chmod it (start-up failed with EPERM) nor delete the tool's output
    and leftovers in it (every merge failed with EACCES). As the owner it needs neither, and
    CAP_CHOWN only for the group, or to take back a folder an older pgod gave away. The owner
    changes first: a new folder is 0700 until then, never open to the group under a wider mode."""
    _existing_dir(path)
    os.chown(path, os.geteuid(), gid, follow_symlinks=False)
    os.chmod(path, 0o770)
    with os.scandir(path) as scan:
        for entry in scan:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)


def _spool_staging(config: Config) -> Path:
    """The staging folder inside the spool: its random name from the state folder's record, or a
    new one. A recorded folder that is missing or not ours (it cannot be: nobody else can guess
    it before we make it, nor remove ours from the sticky spool) is replaced by a new name."""
    record = config.state_dir / STAGING_NAME_RECORD
    try:
        name = record.read_text().strip()
    except FileNotFoundError:
        name = ""
        legacy = config.spool_dir / LEGACY_SPOOL_STAGING_NAME
        info = os.lstat(legacy) if os.path.lexists(legacy) else None
        if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            # pgod before random names kept its staging here; files may still wait in it.
            replace_file(record, (LEGACY_SPOOL_STAGING_NAME + "\n").encode())
            name = LEGACY_SPOOL_STAGING_NAME
    if (name.startswith(SPOOL_STAGING_PREFIX) or name == LEGACY_SPOOL_STAGING_NAME) and "/" not in name:
        try:
            _make_private_dir(config.spool_dir / name)
            return config.spool_dir / name
        except StagingError:
            pass
    for _attempt in range(8):
        name = SPOOL_STAGING_PREFIX + secrets.token_hex(16)
        try:
            os.mkdir(config.spool_dir / name, 0o700)
        except FileExistsError:
            continue
        _make_private_dir(config.spool_dir / name)
        # Durable before anything is claimed into it: pending files are found by this name.
        replace_file(record, (name + "\n").encode())
        return config.spool_dir / name
    raise StagingError(f"cannot create a staging folder of a fresh random name in {config.spool_dir}")


def _new_probe(spool: Path) -> Path:
    """A probe file of our own in the spool, under a name nobody could have taken first."""
    for _attempt in range(8):
        probe = spool / f".pgod-probe-{secrets.token_hex(16)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return probe
    raise StagingError(f"cannot create a probe file of a fresh random name in {spool}")


def _rename_reaches(spool: Path, staging: Path) -> bool:
    """Can a file in the spool be renamed into staging? Tried with a probe file of our own."""
    probe = _new_probe(spool)
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
