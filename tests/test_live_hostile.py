"""Hostile live files: anything a local user can plant under a live name is bounded and refused
with a reason, and never costs another user's run its counts (intake/live.py)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from testbed.crafted import poisoned_count
from testbed.daemon import wait_for
from testbed.live import LiveWriter, snapshots_of_a_run

OTHER_UID = 4242


@pytest.fixture(scope="module")
def program(tmp_path_factory, clang14):
    root = tmp_path_factory.mktemp("liveprog")
    files = snapshots_of_a_run(clang14, root, tmp_path_factory.mktemp("liverun"), 2)
    return root, files[0].read_bytes(), files[-1].read_bytes()


def _configure(pgod, root, profdata, **top):
    pgod.write_config({"prog": {"profile_build": [str(root)], "build": ["true"], "llvm_profdata": profdata}},
                      live_interval_s=1, **top)


def _rejections(pgod) -> dict[str, str]:
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        return dict(db.execute("SELECT original_name, reason FROM quarantine").fetchall())


def test_a_locked_file_that_is_no_raw_profile_is_refused_after_a_few_polls(pgod, program, llvm_profdata_14):
    root, first, _final = program
    _configure(pgod, root, llvm_profdata_14)
    daemon = pgod.daemon()
    junk = LiveWriter(pgod.spool)
    junk.publish(b"this is not a raw profile, however long it stays locked\n" * 20)
    honest = LiveWriter(pgod.spool, uid=OTHER_UID)
    honest.publish(first)
    refused = wait_for(lambda: _rejections(pgod).get(junk.name), 30, "the junk refused")
    assert refused == "profraw-bad-magic"
    assert not junk.path.exists()
    # The other user's run beside it was counted all along.
    assert wait_for(lambda: daemon.package("prog")["live"]["snapshots"] >= 1, 20, "the honest run counted")
    junk.end()
    honest.end()


def test_an_oversized_live_file_is_refused_at_once(pgod, program, llvm_profdata_14):
    root, _first, _final = program
    _configure(pgod, root, llvm_profdata_14, max_file_mb=1)
    pgod.daemon()
    huge = LiveWriter(pgod.spool)
    huge.publish(b"\0" * (1024 * 1024 + 8))
    assert wait_for(lambda: _rejections(pgod).get(huge.name), 30, "the oversized file refused") == "oversized"
    huge.end()


def test_links_and_fifos_under_live_names_are_refused(pgod, program, llvm_profdata_14, tmp_path):
    root, _first, _final = program
    _configure(pgod, root, llvm_profdata_14)
    pgod.daemon()
    target = tmp_path / "secret"
    target.write_text("root's file")
    os.symlink(target, pgod.spool / "live-1-00000000000000000000000000000001.profraw")
    os.mkfifo(pgod.spool / "live-2-00000000000000000000000000000002.profraw")
    rejections = wait_for(lambda: len(r := _rejections(pgod)) >= 2 and r, 30, "both refused")
    assert set(rejections.values()) <= {"symlink", "fifo", "not-regular", "special"}, rejections
    assert target.read_text() == "root's file"


def test_a_counter_no_run_reaches_is_refused_in_a_live_snapshot(pgod, program, llvm_profdata_14):
    root, first, _final = program
    _configure(pgod, root, llvm_profdata_14)
    pgod.daemon()
    writer = LiveWriter(pgod.spool)
    writer.publish(poisoned_count(first))
    assert wait_for(lambda: _rejections(pgod).get(writer.name), 30, "the growth refused") == "implausible-count"
    writer.end()


def test_a_user_at_the_bound_of_runs_does_not_hold_up_another(pgod, program, llvm_profdata_14):
    root, first, _final = program
    _configure(pgod, root, llvm_profdata_14, live_max_runs_per_uid=3)
    daemon = pgod.daemon()
    flood = [LiveWriter(pgod.spool) for _ in range(6)]
    for writer in flood:
        writer.publish(first)
    other = LiveWriter(pgod.spool, uid=OTHER_UID)
    other.publish(first)
    live = wait_for(lambda: (d := daemon.status()["daemon"]["live"])["followed"] == 4 and d, 20, "3 + 1 followed")
    assert live["over_limit"] == 3
    text = daemon.pgoctl("status").stdout
    assert "3 not followed (a user at live_max_runs_per_uid)" in text, text
    for writer in flood:
        writer.end()  # as runs end, the names waiting are followed and counted too
    assert wait_for(lambda: daemon.package("prog")["live"]["snapshots"] == 7, 60, "every run counted once")
    other.end()
