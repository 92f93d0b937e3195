"""Binary substitution: the declared package keeps its place, the binary behind it changes.

On NixOS the system path does not hold a profiled package itself but a stand-in
(nixos-module/substitute.nix): the package's file tree in which every file is a symlink through
``<substitute_dir>/<package>/<output's store name>``. pgod points each of those links at the
profiling build's output, or at the optimized build's output of the same name while that build
is active. Whatever reaches the system path (login shells, systemd units, cron, scripts calling
``/run/current-system/sw/bin/lua``) therefore runs the optimized binary at the declared package's
own precedence, and nothing shadows users' own profiles. This is the pattern of
``/run/opengl-driver``: a fixed path in the system closure, filled from outside the evaluation.

What is active is recorded in ``<state_dir>/substitution.json`` together with the profiling
outputs it was built for. ``substitute_dir`` is meant to live on /run, so at every boot and every
``nixos-rebuild switch`` or rollback the module's activation script runs ``pgod
--apply-substitution`` with that generation's configuration: a package whose profiling build is
the one the optimized build was made from gets the optimized build, any other the profiling build
of the generation being activated. The daemon applies the same rule whenever the active set
changes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog

from pgod.config import Config
from pgod.durable import replace_file

log = structlog.get_logger(__name__)

RECORD_NAME = "substitution.json"
_STORE_BASENAME = re.compile(r"[0-9a-df-np-sv-z]{32}-(.+)")


def store_name(path: Path | str) -> str:
    """A store path's name without its hash: the same for a package's profiling and optimized
    builds (the adapters change neither name nor outputs), so outputs are matched by it."""
    base = os.path.basename(str(path).rstrip("/"))
    matched = _STORE_BASENAME.fullmatch(base)
    return matched.group(1) if matched else base


@dataclass(frozen=True)
class Active:
    """An optimized build in use: its outputs, and the profiling outputs it was built from."""

    built_for: tuple[str, ...]
    outputs: tuple[str, ...]


def record_path(config: Config) -> Path:
    return config.state_dir / RECORD_NAME


def write_record(config: Config, active: dict[str, Active]) -> None:
    document = {
        "version": 1,
        "packages": {
            name: {"built_for": list(entry.built_for), "outputs": list(entry.outputs)}
            for name, entry in sorted(active.items())
        },
    }
    replace_file(record_path(config), (json.dumps(document, indent=2) + "\n").encode())


def read_record(config: Config) -> dict[str, Active]:
    """The recorded active builds; an absent or unreadable record means none (the safe side:
    every package gets its profiling build)."""
    try:
        document = json.loads(record_path(config).read_text())
        packages = document["packages"]
        return {
            str(name): Active(tuple(map(str, entry["built_for"])), tuple(map(str, entry["outputs"])))
            for name, entry in packages.items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("substitution.record_unreadable", path=str(record_path(config)), error=str(err))
        return {}


def plan(config: Config, active: dict[str, Active]) -> dict[Path, str]:
    """Each stand-in link under substitute_dir and the store path it must point at."""
    assert config.substitute_dir is not None
    links: dict[Path, str] = {}
    for name, package in config.packages.items():
        profiling = tuple(str(p) for p in package.profile_build)
        entry = active.get(name)
        optimized = {}
        if entry is not None and sorted(entry.built_for) == sorted(profiling):
            optimized = {store_name(o): o for o in entry.outputs if os.path.isdir(o)}
        for output in profiling:
            links[config.substitute_dir / name / store_name(output)] = optimized.get(store_name(output), output)
    return links


def _world_readable_dir(directory: Path) -> None:
    """Every user runs programs through these links: their folders are 0755 whatever the
    daemon's umask (0077 under systemd)."""
    if not directory.is_dir():
        _world_readable_dir(directory.parent)
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)


def _point(link: Path, target: str) -> bool:
    """Make ``link`` a symlink to ``target`` in one rename; False when it already was."""
    try:
        if os.readlink(link) == target:
            return False
    except FileNotFoundError:
        pass
    except OSError:  # OSError(EINVAL): not a symlink. It is replaced all the same.
        pass
    _world_readable_dir(link.parent)
    temporary = link.parent / f".{link.name}.{secrets.token_hex(8)}"
    os.symlink(target, temporary)
    os.replace(temporary, link)
    return True


def apply(config: Config, active: dict[str, Active]) -> list[str]:
    """Point every stand-in link as ``plan`` says and drop links of packages no longer
    configured. Returns the links that changed."""
    if config.substitute_dir is None:
        return []
    wanted = plan(config, active)
    changed = [str(link) for link, target in wanted.items() if _point(link, target)]
    root = config.substitute_dir
    for directory in [d for d in root.iterdir() if d.is_dir() and not d.is_symlink()] if root.is_dir() else []:
        for entry in directory.iterdir():
            if entry.is_symlink() and entry not in wanted:
                entry.unlink()
                changed.append(str(entry))
        if not any(directory.iterdir()):
            directory.rmdir()
    if changed:
        log.info("substitution.changed", links=changed)
    return changed


def publish(config: Config, active: dict[str, Active]) -> list[str]:
    """Record what is active, then point the links: the record first, so a crash in between
    leaves a record the next apply (daemon start, boot) carries out."""
    write_record(config, active)
    return apply(config, active)


def apply_recorded(config: Config) -> list[str]:
    """What the activation script runs: the recorded active builds, judged against this
    generation's configuration."""
    return apply(config, read_record(config))
