"""The real daemon on a private bus, fed by a real instrumented program: counts are exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.profiles import one_shot_merge, profdata_show
from testbed.programs import workload_inputs


def run_workload(exe: Path, directory: Path, inputs: list[list[str]]) -> None:
    for args in inputs:
        run_instrumented(exe, args, directory / "%p.profraw")


def reference_profile(tmp_path: Path, exe: Path, inputs: list[list[str]], profdata: str) -> Path:
    """One `llvm-profdata merge` over the raw files of the same runs: the expected result."""
    raw = tmp_path / "reference-raw"
    raw.mkdir()
    run_workload(exe, raw, inputs)
    return one_shot_merge(profdata, sorted(raw.iterdir()), tmp_path / "reference.profdata")


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_200_runs_are_counted_once_and_match_one_shot_merge(pgod, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    inputs = workload_inputs(200)
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()

    run_workload(exe, pgod.spool, inputs)

    package = wait_for(
        lambda: (p := daemon.package("workload"))["files"] == 200 and p, 60, "200 files merged"
    )
    sizes = []
    raw = tmp_path / "reference-raw"
    expected = reference_profile(tmp_path, exe, inputs, llvm_profdata_14)
    sizes = [entry.stat().st_size for entry in raw.iterdir()]
    assert package["raw_bytes"] == sum(sizes)
    assert package["state"] == "profiling"
    assert package["quarantined"] == 0
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    status = daemon.status()
    assert status["unattributed"] == {"files": 0, "bytes": 0, "kept": {"files": 0, "bytes": 0}}
    assert status["quarantine"] == {"files": 0, "bytes": 0, "kept": {"files": 0, "bytes": 0}}
    assert leftovers(pgod.spool) == []


def test_backlog_present_at_start_is_taken(pgod, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    inputs = workload_inputs(30)
    run_workload(exe, pgod.spool, inputs)
    # Age the files: fresh ones at start are deferred as possibly still open by their writer.
    for entry in pgod.spool.iterdir():
        os.utime(entry, (1, 1))
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] == 30 and p, 60, "backlog merged")
    expected = reference_profile(tmp_path, exe, inputs, llvm_profdata_14)
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert daemon.status()["daemon"]["spool_backlog"] == 0


def test_threshold_starts_a_build_and_a_failing_build_backs_off(pgod, workload, llvm_profdata_14):
    """Crossing the threshold starts the package's build; `true` prints no output path, so the
    build fails, the package shows the error and a retry is scheduled later, not at once."""
    exe = workload / "bin" / "workload"
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14, "threshold_mb": 0.01}}
    )
    daemon = pgod.daemon()
    run_workload(exe, pgod.spool, workload_inputs(40))
    package = wait_for(lambda: (p := daemon.package("workload"))["state"] == "failed" and p, 60, "build failed")
    assert package["last_error"] == "build succeeded but printed no output path"
    assert "threshold_reached" in daemon.log()
    detail = daemon.pgoctl("show", "workload", "--json")
    builds = json.loads(detail.stdout)["builds"]
    assert len(builds) == 1 and builds[0]["status"] == "failed"
    assert builds[0]["profile"].startswith("/nix/store/") and builds[0]["profile"].endswith(".profdata")
    # The retry waits (the backoff starts at 30 s by default): more data does not start another build.
    run_workload(exe, pgod.spool, workload_inputs(5))
    wait_for(lambda: daemon.package("workload")["files"] == 5, 30, "new files merged")
    assert len(json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["builds"]) == 1
    assert daemon.process.poll() is None


def test_sigterm_exits_zero(pgod, workload, llvm_profdata_14):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    assert daemon.stop() == 0


def test_files_renamed_into_the_spool_are_taken(pgod, workload, llvm_profdata_14, tmp_path):
    """A profile written elsewhere and moved in gets no close event in the spool, only a create."""
    exe = workload / "bin" / "workload"
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    outside = pgod.root / "outside"
    outside.mkdir()
    run_workload(exe, outside, workload_inputs(25))
    for entry in outside.iterdir():
        os.rename(entry, pgod.spool / entry.name)
    wait_for(lambda: daemon.package("workload")["files"] == 25, 30, "moved-in files merged")
    assert daemon.status()["quarantine"]["files"] == 0


def test_a_failing_build_is_retried_later_with_a_growing_delay(pgod, workload, llvm_profdata_14):
    """Retries come, but spaced out: with a 1 s base, builds start at about 0, 1 and 3 s."""
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["false"], "llvm_profdata": llvm_profdata_14, "threshold_mb": 0.001}},
        build_retry_seconds=1,
    )
    daemon = pgod.daemon()
    run_workload(workload / "bin" / "workload", pgod.spool, workload_inputs(5))

    def builds() -> list[dict]:
        return json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["builds"]

    def finished() -> list[dict]:
        return [b for b in builds() if b["status"] != "running"]

    history = wait_for(lambda: (b := finished()) and len(b) >= 3 and b, 30, "two retries after the first failure")
    starts = sorted(b["started_at"] for b in history[:3])
    assert all(b["status"] == "failed" and "build exited 1" in b["error"] for b in history[:3])
    assert starts[1] - starts[0] >= 0.9 and starts[2] - starts[1] >= 1.9, starts
    package = daemon.package("workload")
    assert package["state"] in ("failed", "building") and package["last_error"].startswith("build exited 1")
    assert daemon.process.poll() is None and daemon.pgoctl("status").returncode == 0
