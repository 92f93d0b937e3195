"""Build and run programs instrumented by the Debian clangs installed here.

Tests, benchmarks and the guest runs that need real raw profiles (not hand-made bytes) import
this module to find which clang/llvm-profdata pairs exist, compile C sources with
`-fprofile-instr-generate`, run the result with `LLVM_PROFILE_FILE` set, and read the GNU
build-id that the profile runtime should copy into the raw profile's binary-id section.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgod.intake.attribution import elf_build_id  # noqa: F401 (the helper tests read build-ids with)

#: The LLVM releases whose raw-profile formats pgod must read (v7, v8, v8, v10).
CLANG_VERSIONS: tuple[int, ...] = (13, 14, 16, 19)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """subprocess.run that raises CalledProcessError with the command's stderr as a note."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        exc.add_note(f"stderr of {argv[0]}: {exc.stderr.strip()}")
        raise


@dataclass(frozen=True)
class Clang:
    """One installed clang together with the llvm-profdata of the same release."""

    version: int
    cc: Path
    profdata: Path

    def compile(
        self,
        src_path: str | os.PathLike[str],
        out_path: str | os.PathLike[str],
        *,
        shared: bool = False,
        ir: bool = False,
        extra: tuple[str, ...] | list[str] = (),
    ) -> Path:
        """Compile and link one C file into an instrumented executable (or `shared` library).

        `ir` selects IR instrumentation (`-fprofile-generate`, which also profiles values such
        as memcpy sizes) instead of clang's front-end instrumentation. `extra` is appended
        last, so it can name libraries to link and `-Wl,-rpath,…`.
        Raises `subprocess.CalledProcessError` (with the compiler's stderr as a note) on failure.
        """
        instrument = "-fprofile-generate" if ir else "-fprofile-instr-generate"
        # --build-id is what lets pgod attribute a raw profile to the ELF file it came from.
        argv = [str(self.cc), "-O1", instrument, "-Wl,--build-id"]
        if shared:
            argv += ["-shared", "-fPIC"]
        argv += [str(src_path), "-o", str(out_path), *extra]
        _run(argv)
        return Path(out_path)

    def profdata_show(
        self, profile: str | os.PathLike[str], *args: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `llvm-profdata show ARGS PROFILE` of this release; the caller checks returncode."""
        argv = [str(self.profdata), "show", *args, str(profile)]
        return subprocess.run(argv, capture_output=True, text=True)


def find_clang(version: int) -> Clang | None:
    """The clang-N / llvm-profdata-N pair in /usr/bin, or None when either is missing."""
    cc = Path(f"/usr/bin/clang-{version}")
    profdata = Path(f"/usr/bin/llvm-profdata-{version}")
    if os.access(cc, os.X_OK) and os.access(profdata, os.X_OK):
        return Clang(version, cc, profdata)
    return None


def available_clangs() -> list[Clang]:
    """Every pair from CLANG_VERSIONS that is installed, oldest first."""
    return [c for c in map(find_clang, CLANG_VERSIONS) if c is not None]


def missing_packages_message(version: int) -> str:
    """Why a test for `version` is skipped, naming the Debian packages that would enable it."""
    return (
        f"clang {version} not installed (need /usr/bin/clang-{version} and "
        f"/usr/bin/llvm-profdata-{version}: apt-get install clang-{version} llvm-{version})"
    )


def run_instrumented(
    exe: str | os.PathLike[str],
    args: tuple[str, ...] | list[str],
    profile_pattern: str | os.PathLike[str],
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an instrumented program to completion with LLVM_PROFILE_FILE=`profile_pattern`.

    The profile is written at normal exit, so the program must exit normally; a non-zero exit
    status raises `subprocess.CalledProcessError`.
    """
    full_env = {**os.environ, **(env or {}), "LLVM_PROFILE_FILE": str(profile_pattern)}
    return _run([str(exe), *args], env=full_env, timeout=60)
