"""What one file or one uid may contribute, and state that stays bounded however long the history.

Real daemon, real llvm-profdata; files written as root and as uid nobody (the spool is shared).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from test_merge_isolation import sample_profile, spool_for_everyone, write_as_nobody  # noqa: F401 (fixtures)
from testbed import crafted
from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.profiles import one_shot_merge, profdata_show
from testbed.users import AS_NOBODY

NOBODY = 65534


def config(workload, llvm_profdata_14, **top) -> tuple[dict, dict]:
    return {"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}}, top


def rows(state: Path, table: str) -> int:
    with sqlite3.connect(f"file:{state / 'pgod.sqlite'}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_a_counter_no_run_could_reach_is_refused_and_the_profile_stays_true(
    pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile, tmp_path
):
    packages, top = config(workload, llvm_profdata_14)
    pgod.write_config(packages, **top)
    daemon = pgod.daemon()
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "good.profraw").write_bytes(sample_profile)
    (spool_for_everyone / "good.profraw").write_bytes(sample_profile)
    write_as_nobody(spool_for_everyone / "poisoned.profraw", crafted.poisoned_count(sample_profile))
    status = wait_for(lambda: (s := daemon.status())["quarantine"]["files"] == 1 and daemon.package("workload")["files"] == 1 and s,
                      30, "the poisoned file refused, the good one merged")
    assert status["quarantine"]["kept"]["files"] == 1
    rejection = [entry for entry in os.listdir(pgod.state / "staging" / "quarantine")]
    assert len(rejection) == 1 and rejection[0].endswith("poisoned.profraw")
    package = daemon.package("workload")
    expected = one_shot_merge(llvm_profdata_14, [reference / "good.profraw"], tmp_path / "expected.profdata")
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    log = pgod.log_path.read_text()
    assert '"reason": "implausible-count"' in log and "4611686018427387909" in log


def test_only_the_accepted_uids_count(pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile):
    packages, top = config(workload, llvm_profdata_14, accept_uids=[0])
    pgod.write_config(packages, **top)
    daemon = pgod.daemon()
    write_as_nobody(spool_for_everyone / "theirs.profraw", sample_profile)
    (spool_for_everyone / "ours.profraw").write_bytes(sample_profile)
    wait_for(lambda: daemon.package("workload")["files"] == 1 and daemon.status()["quarantine"]["files"] == 1, 30,
             "root's file counted, nobody's refused")
    assert '"reason": "uid-not-accepted"' in pgod.log_path.read_text()


def test_rows_of_finished_files_are_pruned_and_each_uids_share_is_kept(
    pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile
):
    packages, top = config(workload, llvm_profdata_14)
    pgod.write_config(packages, **top)
    daemon = pgod.daemon()
    ours, theirs = 1500, 500
    for index in range(ours):
        (spool_for_everyone / f"r{index}.profraw").write_bytes(sample_profile)
    as_nobody = (f"import sys\ndata = sys.stdin.buffer.read()\nfor i in range({theirs}):\n"
                 f"    open(f'{spool_for_everyone}/n{{i}}.profraw', 'wb').write(data)\n")
    subprocess.run([*AS_NOBODY, "python3", "-c", as_nobody], input=sample_profile, check=True)
    wait_for(lambda: daemon.package("workload")["files"] == ours + theirs, 120, "every file merged")
    # Done files' rows go within a pruning step or two (every 10 s).
    wait_for(lambda: rows(pgod.state, "spool_files") == 0 and rows(pgod.state, "parts") == 0, 60, "rows pruned", interval=0.5)
    shares = {c["uid"]: c for c in json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["contributions"]}
    assert shares[0]["files"] == ours and shares[NOBODY]["files"] == theirs
    assert shares[0]["bytes"] == ours * len(sample_profile)
    status = daemon.status()
    assert status["daemon"]["database"]["bytes"] > 0
    package = daemon.package("workload")
    assert package["total_files"] == ours + theirs and package["raw_bytes"] == (ours + theirs) * len(sample_profile)
    # After a restart nothing is counted again.
    assert daemon.stop() == 0
    daemon = pgod.daemon()
    assert daemon.package("workload")["total_files"] == ours + theirs
