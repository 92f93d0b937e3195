"""What a profiling build says about itself in ``nix-support/pgo.json``: its build-ids, its
instrumentation kind and the llvm-profdata of its compiler.

Shared: the daemon reads it beside the ELF files it walks (intake.attribution), `pgoctl report`
reads only this, so the report needs neither pyelftools nor the daemon's code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pgod.config import PackageConfig

MANIFEST = Path("nix-support/pgo.json")


@dataclass
class PackageBuild:
    """What the profiling build of one package contains."""

    name: str
    build_ids: set[str] = field(default_factory=set)
    manifest_profdata: Path | None = None
    # pgo.json's "instrumentation" ("fe", "ir", "cs-ir"); manifests before it were all "fe".
    instrumentation: str | None = None
    problems: list[str] = field(default_factory=list)


def read_manifest(path: Path, build: PackageBuild) -> None:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        build.problems.append(f"{path}: unreadable manifest: {err}")
        return
    if not isinstance(manifest, dict) or manifest.get("version") != 1:
        build.problems.append(f"{path}: not a version 1 pgo.json")
        return
    build.build_ids.update(str(i).lower() for i in manifest.get("build_ids", []) if isinstance(i, str))
    if isinstance(manifest.get("llvm_profdata"), str):
        build.manifest_profdata = Path(manifest["llvm_profdata"])
    kind = manifest.get("instrumentation", "fe")
    if kind in ("fe", "ir", "cs-ir") and build.instrumentation is None:
        build.instrumentation = kind


def resolve_profdata(package: PackageConfig, build: PackageBuild | None) -> str:
    """The llvm-profdata matching the package's compiler: config, then manifest, then PATH."""
    if package.llvm_profdata is not None:
        return str(package.llvm_profdata)
    if build is not None and build.manifest_profdata is not None:
        return str(build.manifest_profdata)
    return shutil.which("llvm-profdata") or "llvm-profdata"


def profdata_for(package: PackageConfig) -> str:
    """resolve_profdata without walking the build's ELF files: only its manifests are read
    (for readers of the state, such as `pgoctl report`, that need no build-ids)."""
    build = PackageBuild(package.name)
    for output in package.profile_build:
        read_manifest(output / MANIFEST, build)
    return resolve_profdata(package, build)
