"""Exactly once: however the daemon dies, each raw profile is counted once in its package."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.programs import workload_inputs
from testbed.daemon import wait_for
from testbed.profiles import one_shot_merge, profdata_show
from pgod.state.failpoints import POINTS


def reference(tmp_path: Path, exe: Path, inputs, profdata: str) -> Path:
    raw = tmp_path / "reference-raw"
    raw.mkdir()
    for args in inputs:
        run_instrumented(exe, args, raw / "%p.profraw")
    return one_shot_merge(profdata, sorted(raw.iterdir()), tmp_path / "reference.profdata")


def assert_nothing_left(pgod) -> None:
    """No raw file in the spool, and staging holds nothing still waiting or already counted."""
    assert os.listdir(pgod.spool) == []
    staging = pgod.state / "staging"
    assert os.listdir(staging / "incoming") == []
    assert os.listdir(staging / "parts") == []


def configure(pgod, workload, profdata) -> None:
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": profdata}})


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_each_step_counts_every_file_once(point, pgod, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    inputs = workload_inputs(40)
    configure(pgod, workload, llvm_profdata_14)
    daemon = pgod.daemon(env={"PGOD_FAILPOINT": point})
    for args in inputs:
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
    assert daemon.process.wait(timeout=60) == -signal.SIGKILL, f"the daemon never reached {point}"

    daemon = pgod.daemon()
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] >= 40 and p, 60, "all files merged")
    expected = reference(tmp_path, exe, inputs, llvm_profdata_14)
    assert package["files"] == 40
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert_nothing_left(pgod)


def test_random_sigkills_while_files_arrive(pgod, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    inputs = workload_inputs(150)
    configure(pgod, workload, llvm_profdata_14)
    daemon = pgod.daemon()
    chance = random.Random(20261122)

    def produce():
        for args in inputs:
            run_instrumented(exe, args, pgod.spool / "%p.profraw")

    producer = threading.Thread(target=produce)
    producer.start()
    kills = 0
    while producer.is_alive() or kills < 4:
        threading.Event().wait(chance.uniform(0.05, 0.6))  # a random moment, not a synchronisation
        daemon.kill(signal.SIGKILL)
        kills += 1
        daemon = pgod.daemon(wait=chance.random() < 0.5)
        if kills >= 8:
            break
    producer.join()
    daemon = pgod.daemon() if daemon.process.poll() is not None else daemon
    wait_for(lambda: daemon.pgoctl("status", check=False).returncode == 0, 30, "daemon answers")
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] >= 150 and p, 90, "all files merged")
    expected = reference(tmp_path, exe, inputs, llvm_profdata_14)
    assert kills >= 4
    assert package["files"] == 150
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert_nothing_left(pgod)
