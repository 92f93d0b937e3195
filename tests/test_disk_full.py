"""A full disk loses nothing: the real daemon with its state on a small tmpfs that fills up and
empties again while profiles arrive; nothing good is quarantined and every file counts once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.programs import workload_inputs
from testbed.daemon import wait_for
from testbed.profiles import one_shot_merge, profdata_show
from testbed.users import AS_NOBODY
from pgod.config import MB
from pgod.intake.room import KEEP_FREE_CAP, keep_free


def state_on_tmpfs(pgod, size: str):
    """The daemon's state folder on a tmpfs of its own of ``size`` (mount's words: "8m")."""
    pgod.state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "pgod-test-state", str(pgod.state)], check=True)
    yield pgod.state
    for daemon in pgod.daemons:
        daemon.stop()
    subprocess.run(["umount", "-l", str(pgod.state)], check=True)


@pytest.fixture
def small_state(pgod):
    yield from state_on_tmpfs(pgod, "8m")


@pytest.fixture
def state_16m(pgod):
    """Less than the old fixed margin of 64 MB."""
    yield from state_on_tmpfs(pgod, "16m")


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the file that did it."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # ends at ENOSPC
    return filler


def test_a_full_state_disk_pauses_merging_and_resumes_when_room_returns(pgod, small_state, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    reference = tmp_path / "reference"
    reference.mkdir()
    # No free-space margin: this test is about the disk really filling up.
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
                      keep_free_mb=0)
    daemon = pgod.daemon()
    inputs = workload_inputs(30)
    for args in inputs[:10]:
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
        run_instrumented(exe, args, reference / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 10, 30, "the first files merged")

    filler = fill(small_state)
    for args in inputs[10:]:
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
        run_instrumented(exe, args, reference / "%p.profraw")
    # The full disk shows: intake waits for room, or the merge says why it cannot store its profile.
    seen = wait_for(
        lambda: (s := daemon.status())["daemon"]["disk"]["state"] == "full" and s
        or "disk full" in (daemon.package("workload")["last_error"] or "") and daemon.status(),
        60, "the full disk noticed",
    )
    assert seen["quarantine"]["files"] == 0
    assert daemon.package("workload")["files"] == 10, "nothing merged while there is no room"

    filler.unlink()
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] == 30 and p, 60, "merging resumed by itself")
    status = daemon.status()
    assert status["quarantine"]["files"] == 0 and status["daemon"]["disk"] == {"state": "ok"}
    expected = one_shot_merge(llvm_profdata_14, sorted(reference.iterdir()), tmp_path / "expected.profdata")
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert package["raw_bytes"] == sum(entry.stat().st_size for entry in reference.iterdir())


def test_intake_waits_while_free_space_is_below_keep_free(pgod, small_state, workload, llvm_profdata_14, tmp_path):
    """keep_free_mb = 4 on an 8 MiB state file system: with less free than that, files stay in the
    spool and status says why; with room again they are taken by themselves, counted once."""
    exe = workload / "bin" / "workload"
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
                      keep_free_mb=4)
    daemon = pgod.daemon()
    ballast = small_state / "ballast"
    ballast.write_bytes(b"\0" * (5 << 20))  # leaves less than 4 MiB free
    for args in workload_inputs(5):
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
    disk = wait_for(lambda: (d := daemon.status()["daemon"]["disk"])["state"] == "low" and d, 30, "intake waiting for room")
    assert "keep_free_mb = 4" in disk["detail"] and str(small_state) in disk["detail"]
    assert len(list(pgod.spool.glob("*.profraw"))) == 5 and daemon.package("workload")["files"] == 0
    ballast.unlink()
    wait_for(lambda: daemon.package("workload")["files"] == 5, 30, "taken once there is room")
    assert daemon.status()["daemon"]["disk"] == {"state": "ok"} and daemon.status()["quarantine"]["files"] == 0


def test_two_part_files_survive_a_full_disk_under_spool_and_state(pgod, clang14, tmp_path):
    """Spool and state on one 20 MiB tmpfs, as the issue found it: files holding an executable's
    and a library's profile wait, claimed, while the disk is full (their part copies cannot be
    written), and once it empties every part counts once for its package; nothing is quarantined."""
    from test_hostile_spool import app_and_library

    from pgod.intake.profraw import parse_profraw

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "pgod-test-disk", str(disk)], check=True)
    try:
        exe, app, lib = app_and_library(clang14, tmp_path)
        spool = disk / "spool"
        spool.mkdir()
        pgod.spool = spool
        pgod.state = disk / "state"
        profdata = str(clang14.profdata)
        pgod.write_config({"app": {"profile_build": [str(app)], "build": ["true"], "llvm_profdata": profdata},
                           "lib": {"profile_build": [str(lib)], "build": ["true"], "llvm_profdata": profdata}},
                          keep_free_mb=0)
        daemon = pgod.daemon()
        reference = tmp_path / "reference"
        reference.mkdir()
        for n in range(3):
            run_instrumented(exe, [str(n * 10)], spool / "%p.profraw")
            run_instrumented(exe, [str(n * 10)], reference / "%p.profraw")
        wait_for(lambda: all(p["files"] == 3 for p in daemon.status()["packages"]), 30, "the first files merged")
        os.kill(daemon.process.pid, signal.SIGSTOP)  # files pile up in the spool, then the disk fills
        try:
            for n in range(3, 12):
                run_instrumented(exe, [str(n * 10)], spool / "%p.profraw")
                run_instrumented(exe, [str(n * 10)], reference / "%p.profraw")
            filler = fill(disk)
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        seen = wait_for(lambda: (s := daemon.status())["daemon"]["disk"]["state"] == "full" and s, 60, "the full disk noticed")
        assert seen["quarantine"]["files"] == 0
        filler.unlink()
        status = wait_for(lambda: (s := daemon.status()) and all(p["files"] == 12 for p in s["packages"]) and s, 60,
                          "every part counted once there is room")
        assert status["quarantine"]["files"] == 0 and status["unattributed"]["files"] == 0
        parts = [parse_profraw(path.read_bytes()) for path in reference.iterdir()]
        expected = {"app": sum(p[0].length for p in parts), "lib": sum(p[1].length for p in parts)}
        assert {p["name"]: p["raw_bytes"] for p in status["packages"]} == expected
        for package in status["packages"]:  # main and libf run once per program run: 12 runs, counted once
            merged = subprocess.run([profdata, "show", package["profile"]], capture_output=True, text=True, check=True)
            assert "Maximum function count: 12\n" in merged.stdout, merged.stdout
    finally:
        for daemon in pgod.daemons:
            daemon.stop()
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_the_default_margin_is_systemds_share_of_the_file_system_capped():
    assert keep_free(16 * MB, None) == int(16 * MB * 0.15)
    assert keep_free(1 << 40, None) == KEEP_FREE_CAP == 4 << 30  # a 1 TiB /var keeps 4 GiB, not 150 GiB
    assert keep_free(1 << 40, 64 * MB) == 64 * MB and keep_free(16 * MB, 0) == 0  # keep_free_mb as written


def log_events(daemon, name: str) -> list[dict]:
    return [event for line in daemon.log().splitlines() if line.startswith("{")
            and (event := json.loads(line))["event"] == name]


def as_nobody(exe: Path, args: list[str], spool: Path) -> None:
    subprocess.run([*AS_NOBODY, str(exe), *args], check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": f"{spool}/%p.profraw", "PATH": "/usr/bin:/bin"})


def test_a_small_state_file_system_takes_profiles_and_waits_once_below_its_margin(pgod, state_16m, workload, llvm_profdata_14):
    """No keep_free_mb, state on 16 MiB: profiles (written by nobody) are taken, as the fixed 64 MB
    margin never let them be; filled below 15 % of 16 MiB, intake waits, says for what, logs it
    once across its retries, and takes the files by itself once there is room."""
    exe = workload / "bin" / "workload"
    os.chmod(pgod.spool, 0o1777)
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    inputs = workload_inputs(10)
    for args in inputs[:5]:
        as_nobody(exe, args, pgod.spool)
    wait_for(lambda: daemon.package("workload")["files"] == 5, 30, "profiles taken on a 16 MiB state file system")
    assert daemon.status()["daemon"]["disk"] == {"state": "ok"}

    info = os.statvfs(state_16m)
    ballast = state_16m / "ballast"
    ballast.write_bytes(b"\0" * (info.f_bavail * info.f_frsize - (1 << 20)))  # 1 MiB left, the margin is 2.4
    for args in inputs[5:]:
        as_nobody(exe, args, pgod.spool)
    disk = wait_for(lambda: (d := daemon.status()["daemon"]["disk"])["state"] == "low" and d, 30, "intake waiting for room")
    assert disk["folder"] == str(state_16m) and disk["keep_free_bytes"] == int(16 * MB * 0.15)
    assert disk["free_bytes"] < disk["keep_free_bytes"] and disk["filesystem_bytes"] == 16 * MB
    assert "15 % of its 16.0 MB" in disk["detail"] and "intake waits until 2.4 MB are free" in disk["detail"]
    assert "intake paused, disk low: " + disk["detail"] in daemon.pgoctl("status").stdout
    # Start-up is redone every 5 s while intake waits (a spool scan each time): after two of
    # them, the state was logged once and never taken back.
    scans_before = len(log_events(daemon, "spool.scan"))
    wait_for(lambda: len(log_events(daemon, "spool.scan")) >= scans_before + 2, 30, "two retries while low", interval=0.5)
    assert len(log_events(daemon, "disk.low")) == 1 and log_events(daemon, "disk.room_again") == []
    assert len(list(pgod.spool.glob("*.profraw"))) == 5 and daemon.package("workload")["files"] == 5

    ballast.unlink()
    wait_for(lambda: daemon.package("workload")["files"] == 10, 30, "taken once there is room")
    status = daemon.status()
    assert status["daemon"]["disk"] == {"state": "ok"} and status["quarantine"]["files"] == 0
    assert len(log_events(daemon, "disk.low")) == 1 and len(log_events(daemon, "disk.room_again")) == 1
