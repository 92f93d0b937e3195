"""What the admin configuration names must be the admin's: checked like sshd's StrictModes.

pgod runs as root. It executes the `build` command and llvm-profdata, and trusts the profiling
build's files (their build-ids decide attribution, pgo.json names the tool). If any of those, or
a folder on the way to them, could be changed by another user, that user would run code as root
or steer attribution. So at start every such path must be owned by root (or the daemon's own
uid) and writable by nobody else, and so must every folder above it, except that a sticky folder
(/tmp, /nix/store) may be writable by others: there nobody can replace an entry they do not own.
Symlinks on the way are followed one by one, and each must be root's too (its owner could point
it elsewhere).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pgod.config import Config, ConfigError
from pgod.manifest import MANIFEST, PackageBuild


class Untrusted(Exception):
    """A path someone other than root could change; the message says who and how."""


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def _check_entry(path: Path, info: os.stat_result) -> None:
    if info.st_uid not in _trusted_owners():
        raise Untrusted(f"{path} is owned by uid {info.st_uid}, not by root")
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky_folder = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if writable and not stat.S_ISLNK(info.st_mode) and not sticky_folder:
        who = "others" if info.st_mode & stat.S_IWOTH else "its group"
        raise Untrusted(f"{path} is writable by {who} (mode {stat.S_IMODE(info.st_mode):o})")


def check_path(path: Path) -> None:
    """Raise Untrusted unless ``path``, every folder it is reached through and every symlink met
    on the way (each of which its owner could point elsewhere) are root's alone. Resolved one
    component at a time, as the kernel does. Only the path itself: a profiling build's tree
    below its top folder is not walked (in the Nix store it is read-only anyway)."""
    pending = list(Path(os.path.abspath(path)).parts[1:])
    current = Path("/")
    _check_entry(current, os.lstat(current))
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            raise Untrusted(f"{candidate} does not exist") from None
        _check_entry(candidate, info)
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        hops += 1
        if hops > 40:
            raise Untrusted(f"{path}: too many levels of symbolic links")
        target = Path(os.readlink(candidate))
        if target.is_absolute():
            current = Path("/")
            pending = list(target.parts[1:]) + pending
        else:
            pending = list(target.parts) + pending


def _executable(argv0: str) -> Path | None:
    if "/" in argv0:
        return Path(argv0)
    found = shutil.which(argv0)
    return Path(found) if found else None


def check_config(config: Config, builds: dict[str, PackageBuild]) -> None:
    """Raise ConfigError naming the config file and key of the first path another user controls."""

    def check(key: str, path: Path, what: str = "") -> None:
        try:
            check_path(path)
        except Untrusted as err:
            raise ConfigError(config.path, key, f"{what}{err}: pgod runs as root and would trust it") from None
        except OSError as err:
            raise ConfigError(config.path, key, f"{what}{path}: {err.strerror}") from None

    for name, package in config.packages.items():
        prefix = f"packages.{name}"
        for key, argv in (("build", package.build), ("cs_build", package.cs_build), ("benchmark", package.benchmark)):
            # A benchmark's program may sit in the candidate itself ({bin}/bin/lua): Nix made it.
            program = _executable(argv[0]) if argv and "{" not in argv[0] else None
            if program is not None:  # not found: the command fails later with its own clear error
                check(f"{prefix}.{key}[0]", program)
        if package.baseline_build is not None and os.path.lexists(package.baseline_build):
            check(f"{prefix}.baseline_build", package.baseline_build)
        for index, output in enumerate(package.profile_build):
            if os.path.lexists(output):
                check(f"{prefix}.profile_build[{index}]", output)
                manifest = output / MANIFEST
                if os.path.lexists(manifest):
                    check(f"{prefix}.profile_build[{index}]", manifest)
        if package.llvm_profdata is not None:
            if os.path.lexists(package.llvm_profdata):
                check(f"{prefix}.llvm_profdata", package.llvm_profdata)
        else:
            tool = builds.get(name).manifest_profdata if name in builds else None
            if tool is not None and os.path.lexists(tool):
                check(f"{prefix}.profile_build", tool, f"the llvm-profdata named in its {MANIFEST}: ")
            elif tool is None and (on_path := shutil.which("llvm-profdata")) is not None:
                check(f"{prefix}.llvm_profdata", Path(on_path), "not set, so the llvm-profdata on PATH is used: ")
