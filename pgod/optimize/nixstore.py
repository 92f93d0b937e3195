"""Thin wrappers over the Nix commands pgod needs: add to the store, GC roots, profiles.

Activation goes through Nix's own profile machinery (`nix-env --profile`), so every change is a
generation and rollback is Nix's. No nixpkgs is needed: nix-env's user environment builder is
built into Nix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NIX_TIMEOUT_SECONDS = 300


class NixError(RuntimeError):
    """A Nix command failed; the message carries its stderr."""


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=NIX_TIMEOUT_SECONDS)
    except FileNotFoundError:
        raise NixError(f"{argv[0]} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise NixError(f"{' '.join(argv[:3])} timed out after {NIX_TIMEOUT_SECONDS}s") from None
    if proc.returncode != 0:
        raise NixError(f"{' '.join(argv[:3])} exited {proc.returncode}: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def add_file(source: Path, name: str) -> str:
    """Copy ``source`` into the Nix store under ``name``; returns the store path."""
    with tempfile.TemporaryDirectory(prefix="pgod-add-") as scratch:
        named = Path(scratch) / name
        shutil.copyfile(source, named)
        return _run(["nix-store", "--add", str(named)]).strip()


def add_root(store_path: str, root: Path) -> None:
    """Keep ``store_path`` alive across garbage collection through the symlink ``root``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    _run(["nix-store", "--realise", store_path, "--add-root", str(root), "--indirect"])


def outputs_of(store_path: str) -> list[str]:
    """Every output of the derivation that built ``store_path`` and is in the store; the path
    alone when Nix does not know its deriver (a path copied in from elsewhere)."""
    deriver = _run(["nix-store", "--query", "--deriver", store_path]).strip()
    if not deriver.endswith(".drv") or not os.path.exists(deriver):
        return [store_path]
    outputs = [o for o in _run(["nix-store", "--query", "--outputs", deriver]).split() if os.path.isdir(o)]
    return outputs if store_path in outputs else [store_path, *outputs]


def profile_set(profile: Path, store_paths: list[str]) -> None:
    """Make the profile's new generation hold exactly ``store_paths`` (possibly none)."""
    profile.parent.mkdir(parents=True, exist_ok=True)
    if store_paths:
        _run(["nix-env", "--profile", str(profile), "--install", "--remove-all", *store_paths])
    elif profile.exists() or profile.is_symlink():
        _run(["nix-env", "--profile", str(profile), "--uninstall", ".*"])


def profile_rollback(profile: Path) -> None:
    _run(["nix-env", "--profile", str(profile), "--rollback"])


def profile_contents(profile: Path) -> set[str]:
    """Store paths installed in the profile's current generation."""
    if not (profile.exists() or profile.is_symlink()):
        return set()
    lines = _run(["nix-env", "--profile", str(profile), "--query", "--out-path"]).splitlines()
    return {line.split()[-1] for line in lines if line.strip()}


def profile_generation(profile: Path) -> int | None:
    """The current generation number, read from the profile symlink (`name-N-link`)."""
    try:
        target = os.readlink(profile)
    except OSError:
        return None
    parts = target.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
