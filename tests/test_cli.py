"""pgoctl: exit codes and the human rendering of status."""

from __future__ import annotations

import json

from testbed.daemon import Daemon
from pgod.ctl.render import human_bytes, progress_bar, render_status


def test_status_without_daemon_exits_3_and_says_how_to_start_it(bus, tmp_path):
    result = Daemon(tmp_path / "unused.toml", bus, tmp_path / "log").pgoctl("status", check=False)
    assert result.returncode == 3
    assert "not reachable" in result.stderr and "pgod --config" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_error_exits_2(bus, tmp_path):
    result = Daemon(tmp_path / "unused.toml", bus, tmp_path / "log").pgoctl("frobnicate", check=False)
    assert result.returncode == 2


def test_status_table_shows_progress_sizes_and_counts(pgod, workload, llvm_profdata_14):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14, "threshold_mb": 1}})
    daemon = pgod.daemon()
    table = daemon.pgoctl("status").stdout
    assert "workload" in table and "profiling" in table and "[....................]   0%" in table
    assert "0 B / 1.0 MiB" in table
    document = json.loads(daemon.pgoctl("status", "--json").stdout)
    assert set(document) >= {"daemon", "packages", "unattributed", "quarantine"}
    assert set(document["packages"][0]) >= {
        "name", "state", "raw_bytes", "threshold_bytes", "files", "quarantined", "profile", "optimized", "active", "last_error",
    }
    unknown = daemon.pgoctl("show", "nosuch", check=False)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr


def test_human_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(16 * 1024 * 1024) == "16.0 MiB"
    assert progress_bar(5, 10, width=10) == "[#####.....]  50%"
    assert progress_bar(50, 10, width=10) == "[##########] 100%"


def test_render_status_lists_unattributed_and_quarantine():
    document = {
        "daemon": {"version": "x", "spool_backlog": 3},
        "packages": [],
        "unattributed": {"files": 2, "bytes": 2048},
        "quarantine": {"files": 1, "bytes": 10},
    }
    text = render_status(document)
    assert "spool backlog: 3" in text and "unattributed: 2 files, 2.0 KiB" in text and "quarantine: 1 files" in text


def test_watch_prints_a_new_status_when_the_daemon_signals_a_change(pgod, workload, llvm_profdata_14):
    import subprocess

    from testbed.clangs import run_instrumented
    from testbed.daemon import BIN

    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    # Unbuffered, so select() sees every line that is not yet read.
    watcher = subprocess.Popen([str(BIN / "pgoctl"), "--bus", "session", "watch", "--json"], stdout=subprocess.PIPE,
                               bufsize=0, env=daemon.env())
    try:
        first = json.loads(line_within(watcher, 30))
        assert first["packages"][0]["files"] == 0
        run_instrumented(workload / "bin" / "workload", ["3", "abc"], pgod.spool / "%p.profraw")
        # Each line is printed only when a signal arrives.
        while (update := json.loads(line_within(watcher, 30)))["packages"][0]["files"] != 1:
            pass
        assert update["packages"][0]["raw_bytes"] > 0
    finally:
        watcher.terminate()
        assert watcher.wait(timeout=10) == 0


def line_within(process, seconds: float) -> str:
    """The next line of a child's stdout, failing (not hanging) if none comes in time."""
    import select

    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, f"no output within {seconds}s"
    return process.stdout.readline().decode()
