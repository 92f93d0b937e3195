"""The program side of live profiles (issue 20, docs/design/live-protocol.md), with real clangs.

stdenv-adapters/live/pgod-live.c is compiled as the adapter compiles it (uninstrumented, hidden
visibility) and linked into small instrumented C programs built by clang 14 and 19 with the
adapter's flags (IR instrumentation, the spool's %p name baked in, --build-id). The programs take
commands on stdin, so every count they make is known: `w N` calls step() N times, `l N` calls the
shared library's lib_step() N times, `fork N PATH` forks a child that calls step() N times and
exits once PATH exists, `exec` becomes /bin/sleep, `spin` calls step() forever, `closeall PATH`
closes every descriptor and opens PATH 8 times, `dl N PATH` dlopens a library, calls its lib_step()
N times and dlcloses it.

Checked from outside, as pgod's reader sees it: the live file's name, its OFD write lock
(F_OFD_GETLK from this process), its bytes (pgod's parser, llvm-profdata of the same release).
Every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgod.intake.profraw import parse_profraw
from testbed.clangs import elf_build_id
from testbed.live_programs import (
    DEADLINE,
    LIVE_NAME,
    calls,
    counts,
    environment,
    live_files,
    locked,
    poll,
    published,
    run,
    snapshot,
    start,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def spool(tmp_path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


# --- the tests --------------------------------------------------------------------------------


def test_a_running_program_publishes_locked_rising_snapshots_and_ends_with_its_exit_counts(built, spool, tmp_path, programs):
    stats = tmp_path / "stats"
    program = start(programs, built.prog, environment(spool, PGOD_LIVE_STATS=str(stats)))
    # One extra thread, named, taking none of the program's signals.
    def tasks() -> list[Path]:
        return [Path(f"/proc/{program.pid}/task/{tid}") for tid in os.listdir(f"/proc/{program.pid}/task")]

    (dumper,) = poll(lambda: [t for t in tasks() if (t / "comm").read_text().strip() == "pgod-live"], "the thread's name")
    assert len(tasks()) == 2
    blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", (dumper / "status").read_text()).group(1), 16)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGALRM, signal.SIGPIPE):
        assert blocked & (1 << (number - 1)), f"the dumper thread blocks {number!r}"

    assert live_files(spool, program.pid) == [], "the name appears with the first snapshot, not at start"
    program.send("w 100000")
    assert program.line().startswith("ok ")
    (live,) = poll(lambda: live_files(spool, program.pid), "the live file, with the first snapshot")
    assert live.stat().st_mode & 0o777 == 0o600
    first_inode, first = poll(published(built.clang, live, tmp_path, "step", 100000), "a snapshot with step() called 100000 times")
    assert locked(live), "each snapshot is published locked"
    assert len(parse_profraw(first)) == 1

    program.send("w 200000")
    assert program.line().startswith("ok ")
    second_inode, second = poll(published(built.clang, live, tmp_path, "step", 300000), "a snapshot with 300000 calls")
    assert second_inode != first_inode, "a snapshot is a new inode renamed over the name"
    assert locked(live)
    before, after = counts(built.clang, first, tmp_path), counts(built.clang, second, tmp_path)
    assert sum(map(sum, after.values())) > sum(map(sum, before.values()))
    assert all(a >= b for f in before for a, b in zip(after[f], before[f])), "cumulative: no counter goes down"

    # Idle (blocked reading stdin): no counter moves, so no snapshot for three intervals.
    deadline = time.monotonic() + 3.2
    while time.monotonic() < deadline:
        assert snapshot(live)[0] == second_inode, "an idle program writes no snapshot (the counter sum is unchanged)"
        time.sleep(0.05)

    assert program.finish() == 0
    assert not locked(live), "the lock ends with the process"
    assert sorted(p.name for p in spool.iterdir()) == [live.name], "no exit file, no temporary left"
    final = live.read_bytes()
    (part,) = parse_profraw(final)
    assert tuple(part.binary_ids) == (elf_build_id(built.prog),)
    line = stats.read_text()
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert int(fields["dumps"]) >= 3 and int(fields["skipped"]) >= 2, line
    assert fields["file"] == str(live)

    # The same commands, the same object code, without pgod-live.o: the runtime's own exit write.
    reference_spool = tmp_path / "reference"
    reference_spool.mkdir()
    subprocess.run([str(built.prog_exit)], input=b"w 100000\nw 200000\n", env=environment(reference_spool), check=True,
                   stdout=subprocess.DEVNULL, timeout=DEADLINE)
    (exit_file,) = reference_spool.iterdir()
    expected, got = counts(built.clang, exit_file, tmp_path), counts(built.clang, final, tmp_path)
    assert set(got) == set(expected) and {"main", "work", "step"} <= set(got)
    for function in expected:
        assert got[function] == expected[function], function
    assert calls(got, "step") == 300000


def test_sigkill_leaves_the_last_snapshot_whole_and_unlocked(built, spool, tmp_path, programs):
    program = start(programs, built.prog, environment(spool))
    program.send("w 50000")
    program.line()
    (live,) = poll(lambda: live_files(spool, program.pid), "the live file")
    program.send("spin")
    assert program.line() == "spinning"

    def grown():
        _inode, data = snapshot(live)
        return data if data and calls(counts(built.clang, data, tmp_path), "step") > 50000 else None

    poll(grown, "a snapshot taken while the program spins")
    os.kill(program.pid, signal.SIGKILL)
    assert program.process.wait(timeout=DEADLINE) == -signal.SIGKILL
    assert not locked(live), "the kernel drops the lock of a killed process"
    data = live.read_bytes()
    (part,) = parse_profraw(data)
    assert tuple(part.binary_ids) == (elf_build_id(built.prog),)
    assert calls(counts(built.clang, data, tmp_path), "step") > 50000
    assert [p.name for p in spool.glob("*.profraw")] == [live.name], "no exit file (the runtime points at /dev/null)"


def dynamic_symbols(elf: Path) -> set[str]:
    """Names the module defines in its dynamic symbol table with default or protected visibility."""
    table = run(["readelf", "--dyn-syms", "-W", str(elf)]).stdout
    names = set()
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[6] != "UND" and fields[5] in ("DEFAULT", "PROTECTED"):
            names.add(fields[7].split("@")[0])
    return names


def test_an_executable_and_its_instrumented_library_each_report_their_own_module(built, spool, tmp_path, programs):
    # Nothing of the runtime or of the object can be interposed between the modules.
    for module in (built.prog_lib, built.lib):
        exported = dynamic_symbols(module)
        assert not {s for s in exported if s.startswith(("__llvm_profile", "pgod_live", "live_"))}, (module, exported)
    program = start(programs, built.prog_lib, environment(spool))
    program.send("w 1000")
    program.line()
    program.send("l 3000")
    program.line()
    files = poll(lambda: (found := live_files(spool, program.pid)) and len(found) == 2 and found, "two live files")
    assert all(locked(f) for f in files)
    assert program.finish() == 0
    by_module = {}
    for path in files:
        assert not locked(path)
        (part,) = parse_profraw(path.read_bytes())
        (build_id,) = part.binary_ids
        by_module[build_id] = counts(built.clang, path, tmp_path)
    exe, lib = elf_build_id(built.prog_lib), elf_build_id(built.lib)
    assert set(by_module) == {exe, lib}
    assert "lib_step" not in by_module[exe] and calls(by_module[exe], "step") == 1000
    assert set(by_module[lib]) == {"lib_step"} and calls(by_module[lib], "lib_step") == 3000
    assert sorted(spool.iterdir()) == sorted(files)


def test_a_fork_child_makes_its_own_run_without_the_parents_counts(built, spool, tmp_path, programs):
    go = tmp_path / "go"
    program = start(programs, built.prog, environment(spool))
    program.send("w 1000")
    program.line()
    (parent_file,) = poll(lambda: live_files(spool, program.pid), "the parent's live file")
    program.send(f"fork 2000 {go}")
    child_pid = int(program.line().split()[1])
    # The child's own dumper thread publishes its own run while it waits (its counters were reset
    # at the fork: 2000 calls, not 3000).
    (child_file,) = poll(lambda: live_files(spool, child_pid), "the child's live file (its first snapshot)")
    poll(published(built.clang, child_file, tmp_path, "step", 2000), "the child's snapshot with its own 2000 calls")
    assert locked(child_file) and locked(parent_file)
    held = {os.stat(f"/proc/{child_pid}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{child_pid}/fd")}
    assert parent_file.stat().st_ino not in held, "the child closed its copy of the parent's descriptor"
    assert child_file.stat().st_ino in held
    go.touch()
    assert program.line() == "reaped 0"
    poll(lambda: not locked(child_file), "the child's lock gone with the child")
    assert locked(parent_file), "the parent's run is still the parent's"
    program.send("w 4000")
    program.line()
    assert program.finish() == 0
    parent, child = counts(built.clang, parent_file, tmp_path), counts(built.clang, child_file, tmp_path)
    assert calls(parent, "step") == 1000 + 4000
    assert calls(child, "step") == 2000
    assert calls(parent, "step") + calls(child, "step") == 7000, "every call counted once"
    assert sorted(spool.iterdir()) == sorted([parent_file, child_file])


def test_a_program_that_closes_every_descriptor_ends_the_run_and_keeps_its_files_intact(built, spool, tmp_path, programs):
    """A daemon closing every fd takes the lock away: the reader sees the run ended at its last
    snapshot. The object must stop there (no snapshot under the same name, no exit file: both would
    count the same calls twice) and never touch the descriptor numbers the program now uses."""
    stats = tmp_path / "stats"
    own = tmp_path / "own-file"
    program = start(programs, built.prog, environment(spool, PGOD_LIVE_STATS=str(stats)))
    program.send("w 1000")
    program.line()
    (live,) = poll(lambda: live_files(spool, program.pid), "the live file")
    inode, _ = poll(published(built.clang, live, tmp_path, "step", 1000), "a snapshot with 1000 calls")
    program.send(f"closeall {own}")
    assert program.line() == "closed 3 10", "the program's files got every number the object had"
    assert not locked(live), "closing the descriptors dropped the lock"
    program.send("w 5000")
    program.line()
    go = tmp_path / "go"
    go.touch()
    program.send(f"fork 10 {go}")  # the fork handler must not close what now is the program's
    program.line()
    assert program.line() == "reaped 0"
    assert program.finish() == 0
    assert own.read_text() == "child\n" * 8 + "intact\n" * 8, "the program's own files were neither closed nor written by the object"
    assert snapshot(live)[0] == inode and calls(counts(built.clang, live, tmp_path), "step") == 1000
    assert sorted(p.name for p in spool.iterdir()) == [live.name], "no exit file, no temporary"
    # the statistics line comes only if the end found the loss (not the thread): one snapshot in all
    assert not stats.exists() or stats.read_text().startswith("dumps=1 "), stats.read_text()


def test_dlclose_ends_the_librarys_run_and_leaves_nothing_open(built, spool, tmp_path, programs):
    program = start(programs, built.prog, environment(spool))
    program.send("w 1000")
    program.line()
    (exe_file,) = poll(lambda: live_files(spool, program.pid), "the program's live file")
    fds = f"/proc/{program.pid}/fd"
    open_before = len(os.listdir(fds))
    lib_files = []
    for cycle, n in enumerate((300, 700)):
        program.send(f"dl {n} {built.lib}")
        assert program.line() == "unloaded"
        (new,) = set(live_files(spool, program.pid)) - {exe_file} - set(lib_files)
        lib_files.append(new)
        assert not locked(new), "the library's run ended with dlclose"
        (part,) = parse_profraw(new.read_bytes())
        assert tuple(part.binary_ids) == (elf_build_id(built.lib),)
        assert calls(counts(built.clang, new, tmp_path), "lib_step") == n, "each load is a run of its own"
        assert len(os.listdir(fds)) == open_before, f"cycle {cycle}: the unloaded module's descriptors are closed"
        assert not [t for t in os.listdir(f"/proc/{program.pid}/task")
                    if Path(f"/proc/{program.pid}/task/{t}/comm").read_text().strip() == "pgod-live"][1:], "its thread is gone"
    assert locked(exe_file), "the program's own run goes on"
    assert program.finish() == 0
    assert sorted(spool.iterdir()) == sorted([exe_file, *lib_files])


def test_exec_releases_the_lock_and_keeps_the_last_snapshot(built, spool, tmp_path, programs):
    program = start(programs, built.prog, environment(spool))
    program.send("w 1000")
    program.line()
    (live,) = poll(lambda: live_files(spool, program.pid), "the live file")
    poll(published(built.clang, live, tmp_path, "step", 1000), "a snapshot with 1000 calls")
    assert locked(live)
    program.send("exec")
    poll(lambda: os.readlink(f"/proc/{program.pid}/exe") == "/usr/bin/sleep", "the program became /bin/sleep")
    assert program.process.poll() is None, "the same process still runs"
    poll(lambda: not locked(live), "the lock released by exec (O_CLOEXEC)")
    assert calls(counts(built.clang, live, tmp_path), "step") == 1000
    program.kill()


@pytest.mark.parametrize(
    "case", ["dev-null", "interval-0", "baked-in", "one-name-pattern"],
)
def test_where_the_object_stays_off_and_where_it_takes_the_baked_in_spool(built, spool, tmp_path, case):
    stats = tmp_path / "stats"
    for leftover in built.baked.iterdir():
        leftover.unlink()
    env = environment(spool, PGOD_LIVE_STATS=str(stats))
    if case == "dev-null":
        env["LLVM_PROFILE_FILE"] = "/dev/null"
    elif case == "interval-0":
        env["PGOD_LIVE_INTERVAL_S"] = "0"
    elif case == "baked-in":
        del env["LLVM_PROFILE_FILE"]
    else:
        env["LLVM_PROFILE_FILE"] = f"{spool}/all.profraw"
    done = subprocess.run([str(built.prog)], check=False, input=b"w 100\n", env=env, stdout=subprocess.DEVNULL, timeout=DEADLINE)
    assert done.returncode == 0
    written = sorted(p.name for p in spool.iterdir()) + sorted(f"baked/{p.name}" for p in built.baked.iterdir())
    if case == "dev-null":
        assert written == [] and not stats.exists(), "off: no live file, the runtime writes to /dev/null"
    elif case == "interval-0":
        assert len(written) == 1 and re.fullmatch(r"\d+\.profraw", written[0]), written
        assert not stats.exists(), "off: the runtime's own exit write, to its %p name"
    elif case == "baked-in":
        assert len(written) == 1 and LIVE_NAME.fullmatch(written[0].removeprefix("baked/")), written
        assert written[0].startswith("baked/"), "LLVM_PROFILE_FILE unset: the folder baked in at build time"
        assert calls(counts(built.clang, built.baked / written[0].removeprefix("baked/"), tmp_path), "step") == 100
    else:
        assert written == ["all.profraw"], "one name for every process: the runtime's business"
        assert not stats.exists()
