"""Files that pass pgod's checks but hurt llvm-profdata block nothing: each is found, quarantined
with its reason, and every other file is merged and counted once (real daemon, real tools)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_clang
from testbed import crafted
from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.profiles import one_shot_merge, profdata_show
from testbed.programs import WORKLOAD_C, workload_inputs
from testbed.users import AS_NOBODY

GOOD_RUNS = 8


def write_as_nobody(path: Path, content: bytes) -> None:
    """Create ``path`` as uid nobody would: the spool is world-writable, its files untrusted."""
    subprocess.run(
        [*AS_NOBODY, "sh", "-c", 'cat > "$1"', "sh", str(path)],
        input=content, check=True,
    )


@pytest.fixture
def spool_for_everyone(pgod):
    os.chmod(pgod.spool, 0o1777)
    return pgod.spool


@pytest.fixture(scope="module")
def sample_profile(workload, tmp_path_factory) -> bytes:
    """A real raw profile of the workload program, the base every crafted file starts from."""
    directory = tmp_path_factory.mktemp("sample")
    run_instrumented(workload / "bin" / "workload", ["7", "abc"], directory / "sample.profraw")
    return (directory / "sample.profraw").read_bytes()


def good_runs(exe: Path, spool: Path, reference: Path) -> list[list[str]]:
    """Another user's runs: written to the spool and, the same, to a reference folder."""
    inputs = workload_inputs(GOOD_RUNS)
    for args in inputs:
        run_instrumented(exe, args, spool / "%p.profraw")
        run_instrumented(exe, args, reference / "%p.profraw")
    return inputs


@pytest.mark.parametrize(
    ("craft", "reason"),
    [
        (crafted.names_length_crash, "merge-crash"),
        (crafted.names_allocation, "merge-memory-limit"),
        (crafted.shared_counters, "merge-output-limit"),
    ],
    ids=["segfault", "huge-allocation", "expansion"],
)
def test_a_file_that_breaks_llvm_profdata_is_quarantined_and_the_rest_counted_once(
    pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile, tmp_path, craft, reason
):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    bad = craft(sample_profile)
    # The same bytes alone, outside pgod: llvm-profdata really is hurt by them.
    (tmp_path / "bad.profraw").write_bytes(bad)
    alone = subprocess.run([llvm_profdata_14, "merge", "-o", str(tmp_path / "alone.profdata"), str(tmp_path / "bad.profraw")],
                           capture_output=True, text=True)
    if reason == "merge-output-limit":
        assert alone.returncode == 0 and (tmp_path / "alone.profdata").stat().st_size > 100 * len(bad)
    else:
        assert alone.returncode < 0 or "out of memory" in alone.stderr, alone.stderr[-500:]
    daemon = pgod.daemon()
    reference = tmp_path / "reference"
    reference.mkdir()
    exe = workload / "bin" / "workload"
    # The bad file arrives in the middle of a batch of good ones.
    good_runs(exe, spool_for_everyone, reference)
    write_as_nobody(spool_for_everyone / "crafted.profraw", bad)
    good_runs(exe, spool_for_everyone, reference)

    package = wait_for(
        lambda: (p := daemon.package("workload"))["files"] + p["quarantined"] == 2 * GOOD_RUNS + 1 and p,
        60, "every file settled",
    )
    assert package["files"] == 2 * GOOD_RUNS and package["quarantined"] == 1
    expected = one_shot_merge(llvm_profdata_14, sorted(reference.iterdir()), tmp_path / "expected.profdata")
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert package["raw_bytes"] == sum(entry.stat().st_size for entry in reference.iterdir())
    shown = daemon.pgoctl("show", "workload", "--json").stdout
    assert reason in shown, shown
    assert package["state"] == "profiling" and package["last_error"] is None
    # Later files of the same package are merged as usual: nothing waits behind the bad one.
    run_instrumented(exe, ["3", "after"], spool_for_everyone / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 2 * GOOD_RUNS + 1, 30, "a later file merged")


def test_a_culprit_is_shown_under_the_name_its_program_wrote_and_its_owner(
    pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile
):
    """Files nobody writes that make llvm-profdata crash are quarantined by the merge: `pgoctl show`
    names each as it came into the spool, with its owner, never by pgod's staging name; a part of
    a file holding several profiles says which part, and the file's good part is counted."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    bad = crafted.names_length_crash(sample_profile)
    write_as_nobody(spool_for_everyone / "crashes-it.profraw", bad)
    write_as_nobody(spool_for_everyone / "two-profiles.profraw", sample_profile + bad)
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] + p["quarantined"] == 3 and p, 60, "every part settled")
    assert package["files"] == 1 and package["quarantined"] == 2
    shown = json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["quarantine"]
    nobody = pwd.getpwnam("nobody").pw_uid
    assert sorted((q["file"], q["owner_uid"], q["reason"]) for q in shown) == [
        ("crashes-it.profraw", nobody, "merge-crash"), ("two-profiles.profraw (part 2)", nobody, "merge-crash"),
    ]
    text = daemon.pgoctl("show", "workload").stdout
    assert f"crashes-it.profraw (nobody (uid {nobody})): merge-crash" in text, text
    assert f"two-profiles.profraw (part 2) (nobody (uid {nobody})): merge-crash" in text, text


@pytest.mark.parametrize("restart", [False, True], ids=["kept-in-memory", "read-again-after-a-restart"])
def test_bytes_rewritten_after_they_were_checked_are_never_merged(
    pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile, tmp_path, restart
):
    """The writer keeps a descriptor of its file and rewrites it once pgod has read and checked
    it, before the merge. pgod hands llvm-profdata only the bytes it checked: those it still
    holds in memory (the original is counted), or, after a restart, the file read again, which
    no longer matches its digest (quarantined as changed). The replacement, an expanding file,
    is never merged."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    target = spool_for_everyone / "kept-open.profraw"
    workbench = tmp_path / "writer"
    workbench.mkdir()
    os.chmod(workbench, 0o777)
    writer = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c", _KEEP_AND_REWRITE, str(workbench / "kept-open.profraw"), str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        writer.stdin.write(len(sample_profile).to_bytes(4, "little") + sample_profile)
        writer.stdin.flush()
        assert writer.stdout.readline() == b"written\n"
        # Read, checked and recorded: then hold the daemon still, so the rewrite surely comes
        # between the check and the merge (which waits up to a second for more files).
        wait_for(lambda: _part_statuses(pgod.state), 30, "the file claimed, checked and recorded")
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            assert _part_statuses(pgod.state) == ["pending"], "the merge came before the test could rewrite the file"
            replacement = crafted.shared_counters(sample_profile)
            writer.stdin.write(len(replacement).to_bytes(4, "little") + replacement)
            writer.stdin.flush()
            assert writer.stdout.readline() == b"rewritten\n"
        finally:
            if restart:
                daemon.kill()  # SIGKILL: what it held in memory is gone
            else:
                os.kill(daemon.process.pid, signal.SIGCONT)
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    if restart:
        daemon = pgod.daemon()
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] + p["quarantined"] == 1 and p, 30, "the file settled")
    if restart:
        assert package["quarantined"] == 1 and package["files"] == 0 and package["profile"] is None
        shown = daemon.pgoctl("show", "workload", "--json").stdout
        assert "changed-after-check" in shown and "bytes when checked" in shown, shown
    else:
        (tmp_path / "checked.profraw").write_bytes(sample_profile)
        expected = one_shot_merge(llvm_profdata_14, [tmp_path / "checked.profraw"], tmp_path / "expected.profdata")
        assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
        assert package["raw_bytes"] == len(sample_profile) and package["quarantined"] == 0


# The writer: writes what it is sent into a file of its own, moves it into the spool whole (so pgod
# takes it at once), keeps the descriptor, then overwrites the same inode with the next thing it
# is sent (each message: a 4-byte length, then the bytes).
_KEEP_AND_REWRITE = """
import os, sys
def message():
    size = int.from_bytes(sys.stdin.buffer.read(4), "little")
    return sys.stdin.buffer.read(size)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, message())
os.rename(sys.argv[1], sys.argv[2]); print("written", flush=True)
replacement = message()
os.pwrite(fd, replacement, 0); print("rewritten", flush=True)
os.close(fd)
"""


def _part_statuses(state: Path) -> list[str]:
    """The status of every part pgod has recorded (read-only, beside the running daemon)."""
    database = state / "pgod.sqlite"
    if not database.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as connection:
        return [row[0] for row in connection.execute("SELECT status FROM parts ORDER BY id")]


PROBE = """
import json, sys
from pgod.confine import Identity, run_confined, set_no_new_privs
from pgod.merge.confined import limits_for
set_no_new_privs()  # what the daemon does at its start
identity = Identity.for_user("pgod-merge")
limits = limits_for(10 << 20)
probe = run_confined(
    ["sh", "-c", "{ id -u; id -G; grep -E '^(Cap(Eff|Prm|Amb)|NoNewPrivs):' /proc/self/status; "
     "prlimit --noheadings --output RESOURCE,SOFT,HARD --as --cpu --fsize --core; } >&2; exit 3"],
    limits, identity,
)
print(json.dumps({"returncode": probe.returncode, "stderr": probe.stderr, "uid": identity.uid, "gid": identity.gid,
                  "limits": [limits.memory_bytes, limits.cpu_seconds, limits.output_bytes]}))
"""


def test_llvm_profdata_runs_as_the_merge_user_without_capabilities_and_inside_limits():
    """What the confined child is, read from inside it: uid, groups, capabilities, limits.
    (Its stdout is discarded by design, so it reports on stderr.) Run from a process of its own
    that sets no_new_privs first, as the daemon does at its start (the test process must not)."""
    from pgod.confine import Identity

    assert Identity.for_user("pgod-merge") is not None, "the suite runs as root, so pgod drops to its merge user"
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["returncode"] == 3, report["stderr"]
    uid, groups, *rest = report["stderr"].strip().split("\n")
    assert int(uid) == report["uid"] and groups.split() == [str(report["gid"])]
    status = dict(line.split(":\t") for line in rest if ":\t" in line)
    assert status["CapEff"] == status["CapPrm"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    seen = {line.split()[0]: line.split()[1:] for line in rest if ":\t" not in line}
    memory, cpu, output = report["limits"]
    assert seen["AS"] == [str(memory)] * 2
    assert seen["CPU"] == [str(cpu)] * 2
    assert seen["FSIZE"] == [str(output)] * 2
    assert seen["CORE"] == ["0", "0"]


def test_a_wall_clock_timeout_kills_the_child_and_says_so(tmp_path):
    from pgod.confine import Identity, Limits, run_confined

    finished = run_confined(["sleep", "600"], Limits(1 << 30, 60, 1 << 20, wall_seconds=0.5), Identity.for_user("pgod-merge"))
    assert finished.timed_out and finished.signal_name == "SIGKILL"


def test_claims_ingest_and_dbus_go_on_while_a_merge_runs(pgod, workload, llvm_profdata_14, tmp_path):
    """Package `slow` is merged by an llvm-profdata that waits for a go-ahead before it starts:
    meanwhile another package's files are claimed and recorded, status answers, and a mutating
    call (reset) is carried out. Released, both packages count every file once."""
    import shutil
    import tempfile

    gate = Path(tempfile.mkdtemp(prefix="pgod-gate-"))
    os.chmod(gate, 0o1777)  # the merge user runs the tool: it must reach the gate
    # The tool itself where only root may change it: pgod refuses to run one others could.
    tool = Path(tempfile.mkdtemp(prefix="pgod-gated-tool-")) / "llvm-profdata"
    os.chmod(tool.parent, 0o755)
    tool.write_text(f"#!/bin/sh\n: > {gate}/started\nwhile [ ! -e {gate}/go ]; do sleep 0.05; done\nexec {llvm_profdata_14} \"$@\"\n")
    tool.chmod(0o755)
    # A second package: the same program with one more symbol, so another build-id.
    fast_build = tmp_path / "fast"
    (fast_build / "bin").mkdir(parents=True)
    fast_source = tmp_path / "fast.c"
    fast_source.write_text(WORKLOAD_C + "\nint fast_marker;\n")
    fast_exe = require_clang(14).compile(fast_source, fast_build / "bin" / "workload")
    pgod.write_config({
        "slow": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": str(tool)},
        "fast": {"profile_build": [str(fast_build)], "build": ["true"], "llvm_profdata": llvm_profdata_14},
    })
    daemon = pgod.daemon()
    try:
        for args in workload_inputs(3):
            run_instrumented(workload / "bin" / "workload", args, pgod.spool / "%p.profraw")
        wait_for(lambda: (gate / "started").exists(), 30, "the slow merge started")
        for args in workload_inputs(4):
            run_instrumented(fast_exe, args, pgod.spool / "%p.profraw")
        wait_for(lambda: os.listdir(pgod.spool) == [] and len(_part_statuses(pgod.state)) == 7, 30,
                 "the other package's files claimed and recorded while the merge runs")
        assert daemon.status()["packages"], "status answers while the merge runs"
        daemon.pgoctl("reset", "fast")  # through the engine: carried out while the merge runs
        assert not (gate / "go").exists() and daemon.package("slow")["files"] == 0
    finally:
        (gate / "go").touch()
    wait_for(lambda: daemon.package("slow")["files"] == 3 and daemon.package("fast")["files"] == 4, 30, "both merged")
    shutil.rmtree(gate)
    shutil.rmtree(tool.parent)


def test_no_dbus_method_blocks_status_while_the_engine_works_on_it(pgod, workload, llvm_profdata_14, tmp_path):
    """`pgoctl rebuild` runs on the engine, whose `nix-store --add` of the profile here waits for
    a go-ahead: while the rebuild call waits for the engine, status calls are answered and the
    daemon's signals go out. Released, the rebuild returns and the build runs."""
    import shutil

    gate = tmp_path / "gate"
    gate.mkdir()
    real = shutil.which("nix-store")
    (gate / "nix-store").write_text(f"#!/bin/sh\n: > {gate}/started\nwhile [ ! -e {gate}/go ]; do sleep 0.05; done\nexec {real} \"$@\"\n")
    (gate / "nix-store").chmod(0o755)
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon(env={"PATH": f"{gate}:{os.environ['PATH']}"})
    run_instrumented(workload / "bin" / "workload", ["4", "x"], pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 1, 30, "a profile to rebuild with")
    rebuild = subprocess.Popen([*daemon.pgoctl_argv(), "rebuild", "workload"], env=daemon.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (gate / "started").exists(), 30, "the engine inside the rebuild")
        answered = [daemon.status() for _ in range(5)]  # each a GetStatus, while Rebuild waits
        assert all(document["packages"][0]["name"] == "workload" for document in answered)
        assert rebuild.poll() is None, "the rebuild call is still waiting for the engine"
    finally:
        (gate / "go").touch()
    assert rebuild.wait(timeout=60) == 0, rebuild.stderr.read()
    wait_for(lambda: daemon.package("workload")["state"] != "profiling", 60, "the build started")
