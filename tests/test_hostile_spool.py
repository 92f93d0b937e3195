"""A hostile spool: every bad entry is rejected with a reason, nothing linked is touched, good files still merge."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import sys
from testbed.clangs import run_instrumented
from testbed.programs import workload_inputs

from testbed.daemon import wait_for
from testbed.users import AS_NOBODY, as_uid
from pgod.intake.profraw import parse_profraw

SECRET = b"root-only secret\n"


def make_secret(path: Path) -> Path:
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    os.utime(path, (1_000_000, 2_000_000))  # atime < mtime: any read would move atime (relatime)
    return path


def untouched(path: Path) -> bool:
    info = os.stat(path)
    return path.read_bytes() == SECRET and info.st_atime == 1_000_000 and info.st_mtime == 2_000_000


def test_hostile_entries_are_quarantined_and_good_files_still_merge(pgod, workload, clang14, tmp_path):
    exe = workload / "bin" / "workload"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "s.c").write_text("int main(void) { return 0; }\n")
    stranger_exe = clang14.compile(stranger / "s.c", stranger / "stranger")
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    daemon = pgod.daemon()

    symlink_target = make_secret(tmp_path / "secret-for-symlink")
    hardlink_target = make_secret(tmp_path / "secret-for-hardlink")
    good_raw = tmp_path / "raw"
    good_raw.mkdir()
    run_instrumented(exe, ["5", "abc"], good_raw / "one.profraw")
    data = (good_raw / "one.profraw").read_bytes()

    os.symlink(symlink_target, pgod.spool / "link.profraw")
    os.link(hardlink_target, pgod.spool / "hard.profraw")
    os.mkfifo(pgod.spool / "fifo.profraw")
    # An empty file is what a still-running program leaves (the runtime appends at exit), so
    # only an old one is rejected: drop in one whose time stamp says it was left long ago.
    (tmp_path / "empty.profraw").write_bytes(b"")
    os.utime(tmp_path / "empty.profraw", (1_000_000, 1_000_000))
    os.rename(tmp_path / "empty.profraw", pgod.spool / "empty.profraw")
    (pgod.spool / "truncated.profraw").write_bytes(data[: len(data) // 2])
    (pgod.spool / "random.profraw").write_bytes(os.urandom(4096))
    run_instrumented(stranger_exe, [], pgod.spool / "stranger-%p.profraw")

    status = wait_for(
        lambda: (s := daemon.status())["quarantine"]["files"] >= 6 and s["unattributed"]["files"] >= 1 and s,
        30,
        "six rejections and one unattributed profile",
    )
    assert status["quarantine"]["files"] == 6
    assert status["unattributed"]["files"] == 1
    rejections = sorted(
        (row["file"], row["reason"]) for row in daemon_rejections(pgod)
    )
    assert rejections == [
        ("empty.profraw", "empty"),
        ("fifo.profraw", "fifo"),
        ("hard.profraw", "hard-link"),
        ("link.profraw", "symlink"),
        ("random.profraw", "profraw-bad-magic"),
        ("truncated.profraw", rejections[5][1]),
    ]
    assert rejections[5][1].startswith("profraw-"), rejections[5]
    assert untouched(symlink_target) and untouched(hardlink_target)

    for args in workload_inputs(10):
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] == 10 and p, 30, "good files merged")
    assert package["quarantined"] == 0
    assert daemon.process.poll() is None
    assert os.listdir(pgod.spool) == []


def daemon_rejections(pgod) -> list[dict]:
    """The quarantine table, as recorded: read from the database the daemon wrote."""
    import sqlite3

    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        return [{"file": f, "reason": r} for f, r in db.execute("select original_name, reason from quarantine")]


LIB_C = "int libf(int x) { int s = 0; for (int i = 0; i < x; i++) s += i % 3 ? i : 1; return s; }\n"
MAIN_C = textwrap.dedent(
    """
    #include <stdio.h>
    #include <stdlib.h>
    int libf(int);
    int main(int argc, char **argv) { printf("%d\\n", libf(argc > 1 ? atoi(argv[1]) : 10)); return 0; }
    """
)


def app_and_library(clang, directory: Path) -> tuple[Path, Path, Path]:
    """An instrumented program and the instrumented library it links: each run writes one file
    holding two raw profiles. Returns the executable and the two build folders."""
    app, lib = directory / "app", directory / "lib"
    app.mkdir()
    lib.mkdir()
    (lib / "lib.c").write_text(LIB_C)
    (app / "main.c").write_text(MAIN_C)
    clang.compile(lib / "lib.c", lib / "libl.so", shared=True)
    exe = clang.compile(app / "main.c", app / "app", extra=(f"-L{lib}", "-ll", f"-Wl,-rpath,{lib}"))
    return exe, app, lib


def test_one_file_with_executable_and_library_profiles_is_split_between_packages(pgod, clang14, tmp_path):
    exe, app, lib = app_and_library(clang14, tmp_path)
    probe = tmp_path / "probe"
    probe.mkdir()
    run_instrumented(exe, ["7"], probe / "x.profraw")
    from pgod.intake.profraw import parse_profraw

    assert len(parse_profraw((probe / "x.profraw").read_bytes())) == 2, "the runtime wrote one file with two profiles"

    profdata = str(clang14.profdata)
    pgod.write_config(
        {
            "app": {"profile_build": [str(app)], "build": ["true"], "llvm_profdata": profdata},
            "lib": {"profile_build": [str(lib)], "build": ["true"], "llvm_profdata": profdata},
        }
    )
    daemon = pgod.daemon()
    for n in range(5):
        run_instrumented(exe, [str(n * 10)], pgod.spool / "%p.profraw")
    status = wait_for(
        lambda: (s := daemon.status()) and all(p["files"] == 5 for p in s["packages"]) and s, 30, "both packages merged"
    )
    functions = {p["name"]: profile_functions(clang14, Path(p["profile"])) for p in status["packages"]}
    assert "main" in functions["app"] and "libf" not in functions["app"]
    assert "libf" in functions["lib"] and "main" not in functions["lib"]
    assert status["unattributed"]["files"] == 0


def profile_functions(clang, profile: Path) -> set[str]:
    shown = clang.profdata_show(profile, "--all-functions").stdout
    return {line.strip().rstrip(":") for line in shown.splitlines() if line.startswith("  ") and line.rstrip().endswith(":") and not line.startswith("    ")}


def test_a_fresh_empty_file_is_left_for_its_writer_to_finish(pgod, workload, clang14, request):
    """The runtime creates its file empty at program start and appends at exit: a fresh empty
    file is a program still running, and claiming it would only produce a false rejection."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    daemon = pgod.daemon()
    running = subprocess.Popen(["sleep", "300"])  # the program whose pid the file is named after
    request.addfinalizer(running.kill)
    started = pgod.spool / f"{running.pid}.profraw"
    started.write_bytes(b"")
    run_instrumented(workload / "bin" / "workload", ["9", "x"], pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 1, 30, "the finished program's profile merged")
    # Now the "running" program exits: the runtime appends its profile to the same file.
    data = next(iter((pgod.state / "profiles" / "workload").iterdir()))  # noqa: F841 (exists)
    probe = pgod.root / "probe"
    probe.mkdir()
    run_instrumented(workload / "bin" / "workload", ["11", "y"], probe / "p.profraw")
    with open(started, "ab") as appending:
        appending.write((probe / "p.profraw").read_bytes())
    wait_for(lambda: daemon.package("workload")["files"] == 2, 30, "the appended profile merged")
    assert daemon.status()["quarantine"]["files"] == 0


def test_a_broken_elf_in_a_profile_build_is_named_and_the_rest_still_attributed(pgod, workload, llvm_profdata_14, tmp_path):
    """A file that starts like ELF but sends pyelftools to a wild offset (e_shoff 0x7fff made it
    raise OSError, which once stopped the daemon's start-up): the package and path are named,
    and the package's good binaries are still attributed."""
    import shutil
    import struct

    build = tmp_path / "build"
    shutil.copytree(workload, build)
    broken = bytearray((build / "bin" / "workload").read_bytes())
    struct.pack_into("<Q", broken, 0x28, 0x7FFF)  # e_shoff
    (build / "bin" / "broken").write_bytes(broken)
    pgod.write_config({"workload": {"profile_build": [str(build)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    problems = [json.loads(line) for line in daemon.log().splitlines() if '"attribution.problem"' in line]
    assert [(p["package"], str(build / "bin" / "broken") in p["problem"]) for p in problems] == [("workload", True)]
    run_instrumented(build / "bin" / "workload", ["3", "x"], pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 1, 30, "the good binary's profile merged")


def test_names_are_bytes_and_folders_stop_nothing(pgod, workload, clang14, tmp_path):
    """Names that are not UTF-8 are claimed (a good profile) or quarantined with their row kept
    (a bad one), shown with their odd bytes escaped; a folder named like a profile, there before
    the start-up scan and made after it, is left alone without stopping a scan or a pruning."""
    exe = workload / "bin" / "workload"
    raw = tmp_path / "raw"
    raw.mkdir()
    run_instrumented(exe, ["5", "abc"], raw / "one.profraw")
    spool = os.fsencode(pgod.spool)
    os.mkdir(spool + b"/d.profraw")
    os.rename(raw / "one.profraw", spool + b"/good-\xff\xfe.profraw")
    # Kept only one quarantined file: pruning runs and must step over the folder it meets.
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}},
                      unattributed_max_files=1)
    daemon = pgod.daemon()
    wait_for(lambda: daemon.package("workload")["files"] == 1, 30, "the good file under a non-UTF-8 name merged")
    os.mkdir(spool + b"/later.profraw")
    with open(spool + b"/bad-\xc3\x28.profraw", "wb") as bad:
        bad.write(os.urandom(512))
    status = wait_for(lambda: (s := daemon.status())["quarantine"]["files"] == 1 and s, 30, "the bad file quarantined")
    shown = daemon.pgoctl("show", "workload", "--json").stdout + json.dumps(status)
    run_instrumented(exe, ["9", "after"], pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 2, 30, "intake goes on")
    assert sorted(os.listdir(pgod.spool)) == ["d.profraw", "later.profraw"]
    log = daemon.log()
    assert "bad-\\\\xc3(.profraw" in log and "profraw-bad-magic" in log, log[-3000:]
    assert '"level": "error"' not in log and "Traceback" not in log
    assert shown  # status and show answered throughout


def test_squatted_pid_names_are_freed_and_the_other_users_profiles_counted(pgod, workload, clang14, tmp_path):
    """A user takes every free pid's profile name (empty, 0644: nobody else may write them) and
    a folder for some; the names are freed quickly, and another user's programs, getting those
    pids, write and are counted as theirs."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    pgod.spool.chmod(0o1777)  # as on a real system: everyone writes there
    daemon = pgod.daemon()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    squat = textwrap.dedent(f"""
        import os
        for pid in range(300, {pid_max}):
            if os.path.exists(f"/proc/{{pid}}"):
                continue
            name = f"{pgod.spool}/{{pid}}.profraw"
            try:
                if pid % 100 == 0:
                    os.mkdir(name)
                    if pid % 200 == 0:
                        open(f"{{name}}/inside", "w").close()
                else:
                    os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
            except OSError:
                pass
    """)
    # A uid of the test's own, not nobody: a name is a squatter's only while no process of its
    # owner has that pid, and any other nobody process on the machine (a benchmark's flood)
    # would, rightly, keep pgod from freeing the name it got (seen once, pid 15767).
    squatter_uid = 4322
    as_squatter = ["setpriv", f"--reuid={squatter_uid}", f"--regid={squatter_uid}", *AS_NOBODY[3:]]
    subprocess.run([*as_squatter, sys.executable, "-c", squat], check=True, timeout=120)
    squatted = lambda: [e for e in os.scandir(pgod.spool) if e.name.endswith(".profraw")]  # noqa: E731
    assert len(squatted()) > 1000
    wait_for(lambda: not squatted(), 120, "squatted names freed", interval=0.5)

    uid = 4321  # another user, with no profile of its own in the spool yet
    for args in workload_inputs(5):
        subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=+dac_read_search",
             "--ambient-caps=+dac_read_search", str(workload / "bin" / "workload"), *args],
            env={"LLVM_PROFILE_FILE": f"{pgod.spool}/%p.profraw", "PATH": "/usr/bin:/bin"},
            check=True, capture_output=True, timeout=60,
        )
    wait_for(lambda: daemon.package("workload")["files"] == 5, 60, "the other user's five profiles merged")


def test_an_empty_name_of_its_owners_running_process_waits_for_it_but_not_for_ever(pgod, workload, clang14):
    """An empty `<pid>.profraw` whose pid is a running process of the file's owner is that
    program's (the runtime makes it at start, writes it at exit), so it is left alone. But the
    process need not be its writer (here a `sleep` that got the pid): then no event ever comes
    for the name, and it is freed all the same once that process is gone."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    pgod.spool.chmod(0o1777)
    daemon = pgod.daemon()
    owner = 4323
    as_owner = as_uid(owner)  # with the right to traverse the test's private folders
    sleeper = subprocess.Popen([*as_owner, "sleep", "600"])  # setpriv execs sleep: the pid stays
    name = pgod.spool / f"{sleeper.pid}.profraw"
    try:
        subprocess.run([*as_owner, sys.executable, "-c", f"open({str(name)!r}, 'x').close()"], check=True, timeout=60)
        # Another user's profiles counted: the daemon has had the name's close event and cycles since.
        uid = 4321
        for args in workload_inputs(2):
            subprocess.run(
                [*as_uid(uid), str(workload / "bin" / "workload"), *args],
                env={"LLVM_PROFILE_FILE": f"{pgod.spool}/other-%p.profraw", "PATH": "/usr/bin:/bin"},
                check=True, capture_output=True, timeout=60,
            )
        wait_for(lambda: daemon.package("workload")["files"] == 2, 60, "the other user's profiles merged")
        assert name.exists() and name.stat().st_size == 0, "the running owner's empty file was taken"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)
    # No event comes for the name now; it is looked at again and freed (a squatter's, as its pid
    # is no process of its owner any more).
    wait_for(lambda: not name.exists(), 60, "the name freed after its process ended")
    assert "squatted-name" in daemon.log()


def test_a_squatted_name_held_open_is_freed_without_waiting_for_a_close(pgod, workload, clang14):
    """A squatter need never close the empty files it made for free pids' names, so no close
    event comes for them: the watcher frees such a name when it appears, while the squatter
    still holds it open, and the program that later gets that pid writes its own profile."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    pgod.spool.chmod(0o1777)
    daemon = pgod.daemon()
    hold = textwrap.dedent(f"""
        import os, sys
        held = []
        pid = os.getpid() + 5000
        while len(held) < 50:
            pid += 1
            if not os.path.exists(f"/proc/{{pid}}"):
                held.append(os.open(f"{pgod.spool}/{{pid}}.profraw", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
        print("holding", flush=True)
        sys.stdin.read()  # until the test is done looking
    """)
    holder = subprocess.Popen([*AS_NOBODY, sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        squatted = lambda: [e.name for e in os.scandir(pgod.spool) if e.name.endswith(".profraw")]  # noqa: E731
        wait_for(lambda: not squatted(), 30, "names held open by their squatter freed")
        assert holder.poll() is None  # still holding them: no close freed them
        # Recorded as what they were, not as a program's empty profile.
        refused = wait_for(lambda: len(r := daemon_rejections(pgod)) == 50 and r, 30, "all 50 recorded")
        assert {row["reason"] for row in refused} == {"squatted-name"}
        run_instrumented(workload / "bin" / "workload", workload_inputs(1)[0], f"{pgod.spool}/%p.profraw")
        wait_for(lambda: daemon.package("workload")["files"] == 1, 30, "a program's own profile counted")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


FORKER_C = r"""
#include <stdio.h>
#include <unistd.h>
static int work(int n) { int s = 0; for (int i = 0; i < n; i++) s += i; return s; }
int main(void) {
    pid_t child = fork();
    if (child == 0) {  /* outlives its parent, then writes at exit under the parent's pid */
        usleep(500000);
        return work(10) & 1;
    }
    printf("%d %d\n", getpid(), child);
    return work(5) & 1;
}
"""


def test_a_forked_childs_profile_under_its_dead_parents_pid_is_counted(pgod, clang14, tmp_path):
    """The runtime expands %p once, at start, so a child forked without exec writes at exit
    under its parent's pid, which by then names no running process: the squatter's mark. Its
    file is created empty and filled a moment later; it must be merged, not freed as squatted."""
    program = tmp_path / "forker"
    (program / "bin").mkdir(parents=True)
    source = tmp_path / "forker.c"
    source.write_text(FORKER_C)
    clang14.compile(source, program / "bin" / "forker")
    pgod.write_config({"forker": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    pgod.spool.chmod(0o1777)
    daemon = pgod.daemon()
    runs = 3
    for _ in range(runs):
        parent, child = map(int, run_instrumented(program / "bin" / "forker", [], f"{pgod.spool}/%p.profraw").stdout.split())
        wait_for(lambda: not Path(f"/proc/{child}").exists(), 30, "the child exited")  # noqa: B023
    counted = wait_for(lambda: (p := daemon.package("forker"))["files"] == 2 * runs and p, 30, "parents' and children's profiles merged")
    assert counted["quarantined"] == 0
    assert [row for row in daemon_rejections(pgod) if row["reason"] == "squatted-name"] == []


def test_a_file_filled_a_moment_after_it_appears_under_a_dead_pid_is_counted(pgod, clang14, tmp_path):
    """What a forked child or a process in another pid namespace does, slowed down: the file
    appears empty under a pid that names no process of its owner (the squatter's mark), and its
    profile is written into it half a second later. It is merged, not freed as squatted."""
    program = tmp_path / "forker"
    (program / "bin").mkdir(parents=True)
    source = tmp_path / "forker.c"
    source.write_text(FORKER_C)
    clang14.compile(source, program / "bin" / "forker")
    private = tmp_path / "private"
    private.mkdir()
    _parent, child = map(int, run_instrumented(program / "bin" / "forker", [], f"{private}/%p.profraw").stdout.split())
    wait_for(lambda: not Path(f"/proc/{child}").exists(), 30, "the child exited")
    (written,) = private.iterdir()
    profile = written.read_bytes()  # the parent's profile and the child's, appended to it
    parts = len(parse_profraw(profile))
    pgod.write_config({"forker": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    pgod.spool.chmod(0o1777)
    daemon = pgod.daemon()
    slow_writer = textwrap.dedent(f"""
        import os, sys, time
        data = sys.stdin.buffer.read()
        pid = os.getpid() + 7000
        while os.path.exists(f"/proc/{{pid}}"):
            pid += 1
        fd = os.open(f"{pgod.spool}/{{pid}}.profraw", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        time.sleep(0.5)
        os.write(fd, data)
        os.close(fd)
    """)
    uid = 4321
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=+dac_read_search",
                    "--ambient-caps=+dac_read_search", sys.executable, "-c", slow_writer],
                   input=profile, check=True, timeout=60)
    counted = wait_for(lambda: (p := daemon.package("forker"))["files"] == parts and p, 30, "the profile merged")
    assert counted["quarantined"] == 0 and daemon_rejections(pgod) == []
