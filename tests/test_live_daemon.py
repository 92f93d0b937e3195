"""The daemon's side of live runs (intake/live.py) with real snapshots and real llvm-profdata.

The snapshots are a real program's (testbed.live.SNAPSHOTS_PROGRAM, clang 14, IR: counters and
value profiles), published by testbed.live.LiveWriter by the protocol the linked-in object
follows, so each step can be placed between the daemon's polls and its deaths. Whatever happens,
the package's profile must end up equal, function by function, to one llvm-profdata merge of
the run's final snapshot: every growth counted once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import zlib
import subprocess
from pathlib import Path

import pytest

from pgod.state.failpoints import LIVE_POINTS
from testbed.daemon import wait_for
from testbed.live import LiveWriter, is_locked, snapshots_of_a_run
from testbed.profiles import one_shot_merge

ROUNDS = 3


def _show(profdata: str, path: Path) -> str:
    return subprocess.run(
        [profdata, "show", "--all-functions", "--counts", "--ic-targets", "--memop-sizes", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, clang14):
    """The package folder (its ELF is what attributes the snapshots) and the run's snapshots, in order."""
    root = tmp_path_factory.mktemp("liveprog")
    files = snapshots_of_a_run(clang14, root, tmp_path_factory.mktemp("liverun"), ROUNDS)
    return root, [f.read_bytes() for f in files], files[-1]


def _configure(pgod, root, profdata, **top):
    pgod.write_config({"prog": {"profile_build": [str(root)], "build": ["true"], "llvm_profdata": profdata}},
                      live_interval_s=1, **top)


def _snapshots_counted(daemon) -> int:
    return daemon.package("prog")["live"]["snapshots"]


def _pending_parts(pgod) -> int:
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM parts WHERE status = 'pending'").fetchone()[0]


def _baseline_is(pgod, name: str, snapshot: bytes) -> bool:
    """Has pgod taken this snapshot of the run (its stored baseline)? Each wait is for one snapshot:
    a run's snapshot that pgod never read is folded into the next, which the count of snapshots
    taken would not tell apart from a lost one."""
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        row = db.execute("SELECT baseline FROM live_runs WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] is not None and zlib.decompress(row[0]) == snapshot


def _has_row(pgod, name: str) -> bool:
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        return db.execute("SELECT 1 FROM live_runs WHERE name = ?", (name,)).fetchone() is not None


def _settled(pgod, daemon, name: str) -> dict:
    """Wait until the run's file is gone, it reports no more and no part waits to be merged."""
    def done():
        # In this order: nothing is pending before the package is read, so its profile is the last.
        if (pgod.spool / name).exists() or _pending_parts(pgod) != 0:
            return None
        package = daemon.package("prog")
        return package if package["live"]["processes"] == 0 else None
    return wait_for(done, 60, "the ended run counted and its file deleted")


def test_a_run_is_counted_while_it_runs_and_once_in_all(pgod, snapshots, llvm_profdata_14, tmp_path):
    root, snaps, final = snapshots
    _configure(pgod, root, llvm_profdata_14)
    daemon = pgod.daemon()
    writer = LiveWriter(pgod.spool)
    assert wait_for(lambda: daemon.status()["daemon"]["live"]["followed"] == 1, 20, "the live name followed")
    for index, snapshot in enumerate(snaps):
        writer.publish(snapshot)
        wait_for(lambda: _snapshots_counted(daemon) >= index + 1, 20, f"snapshot {index} counted while it runs")
        package = daemon.package("prog")
        assert package["live"]["processes"] == 1 and is_locked(pgod.spool / writer.name)
        if index == 0:
            status = daemon.pgoctl("status").stdout
            assert "live: 1 running program reporting (prog 1)" in status, status
            show = daemon.pgoctl("show", "prog").stdout
            assert "live:       1 running program reporting;" in show, show
        assert wait_for(lambda: daemon.package("prog")["files"] >= index + 1, 20, "its growth merged")
    writer.end()
    package = _settled(pgod, daemon, writer.name)
    expected = one_shot_merge(llvm_profdata_14, [final], tmp_path / "final.profdata")
    assert _show(llvm_profdata_14, Path(package["profile"])) == _show(llvm_profdata_14, expected)
    assert package["live"]["bytes"] > 0 and package["live"]["snapshots"] == len(snaps)
    assert package["files"] == len(snaps)
    # The report's growth chart shows what came from the running program.
    out = tmp_path / "report"
    daemon.pgoctl("report", "prog", "--config", str(pgod.config_path), "--output", str(out))
    growth = json.loads((out / "report.json").read_text())["packages"][0]["growth"]
    assert growth["points"][-1]["total_live_bytes"] == package["live"]["bytes"] == growth["total_raw_bytes"]
    assert (out / "prog-growth.svg").exists()


def test_a_run_that_ended_before_pgod_started_counts_whole(pgod, snapshots, llvm_profdata_14, tmp_path):
    root, snaps, final = snapshots
    _configure(pgod, root, llvm_profdata_14)
    writer = LiveWriter(pgod.spool)
    writer.publish(snaps[-1])
    writer.end()  # a power cut or a SIGKILL while pgod was down: the last snapshot, unlocked
    daemon = pgod.daemon()
    package = _settled(pgod, daemon, writer.name)
    expected = one_shot_merge(llvm_profdata_14, [final], tmp_path / "final.profdata")
    assert _show(llvm_profdata_14, Path(package["profile"])) == _show(llvm_profdata_14, expected)


@pytest.mark.parametrize("point", LIVE_POINTS)
def test_pgod_killed_at_each_live_step_counts_the_run_once(point, pgod, snapshots, llvm_profdata_14, tmp_path):
    root, snaps, final = snapshots
    _configure(pgod, root, llvm_profdata_14)
    daemon = pgod.daemon(env={"PGOD_FAILPOINT": point})
    writer = LiveWriter(pgod.spool)
    died = False
    for index, snapshot in enumerate(snaps):
        last = index == len(snaps) - 1
        writer.publish(snapshot)
        if last:
            writer.end()

        def taken_or_dead(daemon=daemon, snapshot=snapshot, last=last):
            if daemon.process.poll() is not None:
                return True
            if last:  # the ended run's file goes, then (after-live-end) its row: both gone = passed
                return not writer.path.exists() and not _has_row(pgod, writer.name)
            return _baseline_is(pgod, writer.name, snapshot) or not writer.path.exists()  # (or ended, deleted)

        wait_for(taken_or_dead, 30, f"snapshot {index} taken, or the daemon dead at {point}")
        if daemon.process.poll() is not None:
            assert daemon.process.returncode == -signal.SIGKILL
            died = True
            daemon = pgod.daemon()  # restarted between polls, with the run still going (or ended)
            wait_for(lambda snapshot=snapshot: _baseline_is(pgod, writer.name, snapshot) or not writer.path.exists(),
                     30, f"snapshot {index} taken after the restart")
    assert died, f"the daemon never reached {point}"
    package = _settled(pgod, daemon, writer.name)
    expected = one_shot_merge(llvm_profdata_14, [final], tmp_path / "final.profdata")
    assert _show(llvm_profdata_14, Path(package["profile"])) == _show(llvm_profdata_14, expected)
    assert os.listdir(pgod.state / "staging" / "incoming") == []


def test_an_older_snapshot_left_by_a_power_cut_is_not_counted_again(pgod, snapshots, llvm_profdata_14, tmp_path):
    """The writer never syncs: after a power cut the name may hold an older snapshot than the one
    pgod counted before the cut (its last renames lost with the page cache). Counters below the
    baseline, from an earlier boot: nothing to count, where a new run would count them twice."""
    root, snaps, _final = snapshots
    _configure(pgod, root, llvm_profdata_14)
    daemon = pgod.daemon()
    writer = LiveWriter(pgod.spool)
    writer.publish(snaps[2])
    wait_for(lambda: _snapshots_counted(daemon) == 1, 20, "the later snapshot counted")
    daemon.kill(signal.SIGKILL)
    writer.publish(snaps[0])  # what the disk kept of the file
    writer.end()  # the program died with the machine
    with sqlite3.connect(pgod.state / "pgod.sqlite") as db:
        db.execute("UPDATE live_runs SET boot_id = 'the boot before the cut'")
    daemon = pgod.daemon()
    package = _settled(pgod, daemon, writer.name)
    expected = one_shot_merge(llvm_profdata_14, [_written(tmp_path, snaps[2])], tmp_path / "counted.profdata")
    assert _show(llvm_profdata_14, Path(package["profile"])) == _show(llvm_profdata_14, expected)
    assert "live.older_than_counted" in pgod.log_path.read_text()


def _written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"snapshot-{len(list(tmp_path.glob('snapshot-*')))}.profraw"
    path.write_bytes(data)
    return path


def test_at_the_default_interval_a_short_run_is_counted_and_ended_within_seconds(pgod, snapshots, llvm_profdata_14,
                                                                                 tmp_path):
    """Read every 300 s by default, a run's first snapshot (a short program's only one) is still
    read on its event, and its end (the writer's close at exit) taken on the next event's probe."""
    root, snaps, final = snapshots
    pgod.write_config({"prog": {"profile_build": [str(root)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    assert daemon.status()["daemon"]["live"]["interval_s"] == 300
    writer = LiveWriter(pgod.spool)
    writer.publish(snaps[-1])
    wait_for(lambda: _snapshots_counted(daemon) == 1, 20, "the first snapshot read on its event, not at the tick")
    writer.end()
    package = _settled(pgod, daemon, writer.name)
    expected = one_shot_merge(llvm_profdata_14, [final], tmp_path / "final.profdata")
    assert _show(llvm_profdata_14, Path(package["profile"])) == _show(llvm_profdata_14, expected)
