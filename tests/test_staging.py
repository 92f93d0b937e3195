"""Staging must be reachable by rename from the spool, even when the state folder is not."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.programs import workload_inputs


@pytest.fixture
def spool_on_other_filesystem():
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temp folder's")
    spool = Path(tempfile.mkdtemp(prefix="pgod-spool-", dir="/dev/shm"))
    yield spool
    shutil.rmtree(spool, ignore_errors=True)


def in_spool_staging(spool: Path) -> Path:
    (staging,) = [entry for entry in spool.iterdir() if entry.name.startswith(".pgod-staging-")]
    return staging


def test_staging_falls_back_into_the_spool_when_rename_cannot_reach_state(pgod, workload, llvm_profdata_14, spool_on_other_filesystem):
    spool = spool_on_other_filesystem
    pgod.spool = spool
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    staging = in_spool_staging(spool)
    info = os.lstat(staging)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    for args in workload_inputs(10):
        run_instrumented(workload / "bin" / "workload", args, spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 10, 30, "files merged through the in-spool staging")
    assert os.listdir(spool) == [staging.name]
    assert daemon.status()["quarantine"]["files"] == 0
    # The random name is kept: a restart uses the same folder.
    assert daemon.stop() == 0
    pgod.daemon()
    assert in_spool_staging(spool) == staging


def test_planted_staging_and_probe_names_do_not_stop_the_daemon(pgod, workload, llvm_profdata_14, spool_on_other_filesystem):
    """Names anyone could guess, planted by another user before pgod starts: folders, symlinks
    and files under the old fixed staging name and under probe names of every pid."""
    spool = spool_on_other_filesystem
    (spool / ".pgod-staging").symlink_to("/etc")
    for pid in range(1, int(Path("/proc/sys/kernel/pid_max").read_text()) + 1, 7):
        (spool / f".pgod-probe-{pid}").mkdir()
    os.chown(spool / ".pgod-probe-1", 65534, 65534)
    pgod.spool = spool
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    staging = in_spool_staging(spool)
    assert os.lstat(staging).st_uid == os.geteuid()
    for args in workload_inputs(3):
        run_instrumented(workload / "bin" / "workload", args, spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["files"] == 3, 30, "files merged beside the planted names")


def test_pruning_keeps_the_newest_within_count_and_bytes_and_steps_over_folders(tmp_path):
    from pgod.state.layout import prune_oldest

    kept = tmp_path / "kept"
    kept.mkdir()
    for index in range(6):
        (kept / f"{index:04x}-file").write_bytes(b"x" * 1000)
    (kept / "0000-a-folder").mkdir()
    assert prune_oldest(kept, keep=5, max_bytes=2500) == 4
    assert sorted(os.listdir(kept)) == ["0000-a-folder", "0004-file", "0005-file"]
    assert prune_oldest(kept, keep=1) == 1
    assert sorted(os.listdir(kept)) == ["0000-a-folder", "0005-file"]
