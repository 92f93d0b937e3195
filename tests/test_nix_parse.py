"""Every Nix file of the repository parses, and so do the shell hooks Nix builds source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".git", ".venv", "node_modules", "build", "demo-state"}


def repo_files(suffix: str) -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob(f"*{suffix}")
        if not SKIPPED_DIRS.intersection(path.relative_to(REPO).parts[:-1]) and not path.is_symlink()
    )


NIX_FILES = repo_files(".nix")
needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate is not installed")


def test_the_nix_files_are_found():
    names = {path.relative_to(REPO).as_posix() for path in NIX_FILES}
    assert {"flake.nix", "nixos-module/default.nix", "stdenv-adapters/default.nix", "nix/package.nix"} <= names


@needs_nix
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_nix_file_parses(path):
    result = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "path",
    [REPO / "stdenv-adapters" / "pgo-setup-hook.sh", REPO / "nix" / "tests" / "fixture" / "setup.sh"],
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_build_shell_script_parses(path):
    result = subprocess.run(["bash", "-n", "-O", "extglob", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
