"""Issue 20's acceptance with every part real: programs built with stdenv-adapters/live/pgod-live.c
by clang 14 and 19, the real daemon following them, llvm-profdata of the same release.

A program that never exits gets its counts into its package's profile while it runs; after its
exit (or a SIGKILL, or pgod's own deaths and restarts between its polls) the package's profile is
what one merge of the process's final raw profile gives, function by function: nothing counted
twice, nothing lost but what came after the last report of a killed program. An executable and
its instrumented shared library each count in their own package.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from testbed.daemon import wait_for
from testbed.live_programs import calls, counts, environment, start

pytestmark = pytest.mark.slow


def _package_folder(tmp_path: Path, name: str, *files: Path) -> Path:
    """A package's profile_build folder holding copies of its ELF files (attribution by build-id)."""
    folder = tmp_path / name / "bin"
    folder.mkdir(parents=True)
    for file in files:
        shutil.copy2(file, folder / file.name)
    return folder.parent


def _configure(pgod, clang, packages: dict[str, Path]) -> None:
    pgod.write_config(
        {name: {"profile_build": [str(folder)], "build": ["true"], "llvm_profdata": str(clang.profdata)}
         for name, folder in packages.items()},
        live_interval_s=1,
    )


def _profile_counts(clang, daemon, name: str, scratch: Path) -> dict[str, list[int]]:
    profile = daemon.package(name)["profile"]
    return counts(clang, Path(profile), scratch) if profile else {}


def _pending_parts(pgod) -> int:
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM parts WHERE status = 'pending'").fetchone()[0]


def _settled(pgod, daemon, names: list[str]) -> None:
    """Every live file gone (counted and deleted), no run reporting, nothing left to merge."""
    def done():
        if list(pgod.spool.glob("live-*.profraw")):
            return False
        return all(daemon.package(n)["live"]["processes"] == 0 for n in names) and _pending_parts(pgod) == 0
    wait_for(done, 60, "every run ended, counted, its file deleted")


def _reference(built, tmp_path: Path, commands: bytes) -> dict[str, list[int]]:
    """The same commands, the same object code without the live object: the runtime's exit write."""
    spool = tmp_path / "reference"
    spool.mkdir()
    subprocess.run([str(built.prog_exit)], input=commands, env=environment(spool), check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    (exit_file,) = spool.iterdir()
    return counts(built.clang, exit_file, tmp_path)


def _step_calls_counted(built, daemon, tmp_path, expected: int):
    return lambda: calls(_profile_counts(built.clang, daemon, "prog", tmp_path), "step") == expected


@pytest.mark.parametrize("pgod_dies", [None, "between-polls", "after-live-record"])
def test_a_program_that_never_exits_is_counted_while_it_runs_and_exactly_once(
        built, pgod, programs, tmp_path, pgod_dies):
    _configure(pgod, built.clang, {"prog": _package_folder(tmp_path, "prog", built.prog)})
    daemon = pgod.daemon(env={"PGOD_FAILPOINT": pgod_dies} if pgod_dies == "after-live-record" else {})
    program = start(programs, built.prog, environment(pgod.spool))
    program.send("w 1000")
    program.line()
    if pgod_dies == "after-live-record":
        # The first growth is recorded, then pgod dies before anything after it: restarted.
        assert daemon.process.wait(timeout=60) == -signal.SIGKILL
        daemon = pgod.daemon()
    wait_for(_step_calls_counted(built, daemon, tmp_path, 1000), 30, "its first counts in the profile while it runs")
    assert daemon.package("prog")["live"]["processes"] == 1
    if pgod_dies == "between-polls":
        daemon.kill(signal.SIGKILL)
        program.send("w 500")  # reported while pgod is down
        program.line()
        daemon = pgod.daemon()
    else:
        program.send("w 500")
        program.line()
    wait_for(_step_calls_counted(built, daemon, tmp_path, 1500), 30, "the growth counted while it runs")
    program.send("w 250")
    program.line()
    wait_for(_step_calls_counted(built, daemon, tmp_path, 1750), 30, "and the next")
    assert program.finish() == 0
    _settled(pgod, daemon, ["prog"])
    expected = _reference(built, tmp_path, b"w 1000\nw 500\nw 250\n")
    got = _profile_counts(built.clang, daemon, "prog", tmp_path)
    assert set(got) == set(expected) and {"main", "work", "step"} <= set(got)
    for function in expected:
        assert got[function] == expected[function], function
    assert daemon.package("prog")["live"]["snapshots"] >= 3


def test_a_sigkilled_program_counts_up_to_its_last_report_once(built, pgod, programs, tmp_path):
    _configure(pgod, built.clang, {"prog": _package_folder(tmp_path, "prog", built.prog)})
    daemon = pgod.daemon()
    program = start(programs, built.prog, environment(pgod.spool))
    program.send("w 2000")
    program.line()
    program.send("w 300")
    program.line()
    wait_for(_step_calls_counted(built, daemon, tmp_path, 2300), 30, "its counts in the profile")
    program.kill()  # SIGKILL: no exit write, no last snapshot
    _settled(pgod, daemon, ["prog"])
    expected = _reference(built, tmp_path, b"w 2000\nw 300\n")
    got = _profile_counts(built.clang, daemon, "prog", tmp_path)
    for function in ("work", "step"):  # main's own counters differ by the exit it never made
        assert got[function] == expected[function], function


def test_an_executable_and_its_instrumented_library_each_count_in_their_own_package(built, pgod, programs, tmp_path):
    _configure(pgod, built.clang, {"app": _package_folder(tmp_path, "app", built.prog_lib),
                                   "libstep": _package_folder(tmp_path, "libstep", built.lib)})
    daemon = pgod.daemon()
    program = start(programs, built.prog_lib, environment(pgod.spool))
    program.send("w 700")
    program.line()
    program.send("l 400")
    program.line()
    wait_for(lambda: daemon.package("app")["live"]["processes"] == 1 and daemon.package("libstep")["live"]["processes"] == 1,
             30, "one run reporting in each package")
    assert program.finish() == 0
    _settled(pgod, daemon, ["app", "libstep"])
    app = _profile_counts(built.clang, daemon, "app", tmp_path)
    lib = _profile_counts(built.clang, daemon, "libstep", tmp_path)
    assert calls(app, "step") == 700 and "lib_step" not in app
    assert set(lib) == {"lib_step"} and calls(lib, "lib_step") == 400
