"""Map build-ids to packages: which package does a raw profile belong to?

Each package's ``profile_build`` outputs are walked once at start; every ELF file's GNU
build-id (read with pyelftools) and every id listed in ``nix-support/pgo.json`` map to that
package. A raw profile names the build-ids of the modules it profiled, so looking them up
here is all attribution needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from pgod.config import Config, PackageConfig
from pgod.manifest import MANIFEST, PackageBuild, read_manifest

log = structlog.get_logger(__name__)

_ELF_MAGIC = b"\x7fELF"


class UnreadableElf(Exception):
    """A file that starts like ELF but cannot be read as one."""


def elf_build_id(path: Path) -> str | None:
    """The GNU build-id of an ELF file as lowercase hex, or None if it has none or is not ELF.

    Raises UnreadableElf for a file with ELF's magic that pyelftools cannot walk."""
    with open(path, "rb") as stream:
        if stream.read(4) != _ELF_MAGIC:
            return None
        stream.seek(0)
        try:
            elf = ELFFile(stream)
            for section in elf.iter_sections():
                if not isinstance(section, NoteSection):
                    continue
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"]).lower()
        # pyelftools raises many kinds of error on a malformed file (its own, construct's,
        # ValueError, OSError from a seek to a wild offset...): all mean "not readable as ELF".
        except Exception as err:  # noqa: BLE001
            raise UnreadableElf(f"{type(err).__name__}: {err}") from None
    return None


def scan_package(package: PackageConfig) -> PackageBuild:
    """Collect the build-ids and the manifest's llvm-profdata of one package's profiling build."""
    build = PackageBuild(package.name)
    for output in package.profile_build:
        if not output.exists():
            build.problems.append(f"{output} does not exist")
            continue
        read_manifest(output / MANIFEST, build)
        for path in _regular_files(output):
            try:
                build_id = elf_build_id(path)
            except UnreadableElf as err:
                build.problems.append(f"{path}: unreadable ELF, its profiles cannot be attributed ({err})")
                continue
            if build_id:
                build.build_ids.add(build_id)
    tool = build.manifest_profdata
    if package.llvm_profdata is None and tool is not None and not os.access(tool, os.X_OK):
        # A profiled package names its llvm-profdata without keeping it in its closure (all of
        # LLVM would be), so the garbage collector may have taken it.
        build.problems.append(
            f"pgo.json names {tool}, which is not there (a profiled package does not keep its LLVM"
            f" alive): set packages.{package.name}.llvm_profdata, as the NixOS module does"
        )
    return build


def _regular_files(root: Path):
    """Regular files under root; symlinks are skipped (their targets are walked where they live)."""
    if root.is_file() and not root.is_symlink():
        yield root
        return
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink() and path.is_file():
                yield path


def scan_packages(config: Config) -> dict[str, PackageBuild]:
    """Every configured package's profiling build, scanned once at start-up: the trust check
    and the attribution index both read the result (walking the ELF files is the slow part).
    Nothing is logged here: a refused configuration is one line on stderr (daemon.check_trust)."""
    return {name: scan_package(package) for name, package in config.packages.items()}


class Attributor:
    """The build-id → package index for the whole configuration."""

    def __init__(self, builds: dict[str, PackageBuild]) -> None:
        self.builds = builds
        self._owner: dict[str, str] = {}
        self._added: set[tuple[str, tuple[str, ...]]] = set()  # add_outputs' builds
        for name, build in builds.items():
            for problem in build.problems:
                log.warning("attribution.problem", package=name, problem=problem)
            log.info("attribution.indexed", package=name, build_ids=len(build.build_ids))
            for build_id in build.build_ids:
                other = self._owner.setdefault(build_id, name)
                if other != name:
                    log.warning("attribution.shared_build_id", build_id=build_id, packages=[other, name])

    def add_outputs(self, name: str, outputs: list[str]) -> None:
        """Attribute the profiles of another build to `name` too: the context-sensitive stage's
        build, which is in use in the profiling build's place (stages.py)."""
        if (name, tuple(outputs)) in self._added:
            return  # start-up is redone after a failed step: the index already has them
        self._added.add((name, tuple(outputs)))
        extra = scan_package(PackageConfig(name, tuple(Path(o) for o in outputs), ("true",), 0))
        for problem in extra.problems:
            log.warning("attribution.problem", package=name, problem=problem)
        for build_id in extra.build_ids:
            other = self._owner.setdefault(build_id, name)
            if other != name:
                log.warning("attribution.shared_build_id", build_id=build_id, packages=[other, name])
        log.info("attribution.indexed", package=name, build_ids=len(extra.build_ids), stage_build=outputs)

    def package_for(self, binary_ids: tuple[str, ...]) -> str | None:
        """The package owning the first known binary id of a raw profile, else None."""
        for binary_id in binary_ids:
            owner = self._owner.get(binary_id)
            if owner is not None:
                return owner
        return None
