"""The spool watch on the real kernel's inotify: what is handed over, when, and what happens when
events are lost (queue overflow) or the spool itself goes away."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import threading
from pathlib import Path

import pytest
from test_daemon_ingest import run_workload
from testbed.daemon import wait_for
from testbed.programs import workload_inputs

from pgod.intake.spool import Arrival
from pgod.contract import EXIT_FAILED
from pgod.intake.spool import SpoolWatcher

MAX_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


class Recorder:
    """The watcher's three callbacks, recording what they were given."""

    def __init__(self) -> None:
        self.batches: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        self.rescans = threading.Event()
        self.lost: list[str] = []
        self.lost_event = threading.Event()

    def submit(self, names: list[str]) -> None:
        self.batches.put(names)

    def rescan(self) -> None:
        self.rescans.set()

    def on_lost(self, reason: str) -> None:
        self.lost.append(reason)
        self.lost_event.set()

    def next_names(self, timeout: float = 10) -> list[str]:
        return self.batches.get(timeout=timeout)

    def nothing_more(self) -> bool:
        return self.batches.empty()

    def until_closed(self, name: str) -> list[str]:
        """Every name handed over up to and including ``name`` as closed by its writer (it may
        come first as an Arrival, when the watch looked while the writer was still at it)."""
        seen: list[str] = []
        while not any(n == name and not isinstance(n, Arrival) for n in seen):
            seen.extend(self.next_names())
        return seen


@pytest.fixture
def spool(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.fixture
def watched(spool):
    recorder = Recorder()
    watcher = SpoolWatcher(spool, recorder.submit, recorder.rescan, recorder.on_lost)
    watcher.start()
    yield recorder
    watcher.stop()


@contextlib.contextmanager
def inotify_queue_limit(events: int):
    """Lower the kernel's per-instance event queue for inotify instances made meanwhile."""
    if os.geteuid() != 0:
        pytest.skip("needs root to lower fs.inotify.max_queued_events")
    saved = MAX_EVENTS.read_text()
    MAX_EVENTS.write_text(f"{events}\n")
    try:
        yield
    finally:
        MAX_EVENTS.write_text(saved)


def test_a_written_file_is_handed_over_once_closed(spool, watched):
    with open(spool / "run.profraw", "wb") as out:
        out.write(b"x" * 100)
    assert set(watched.until_closed("run.profraw")) == {"run.profraw"}


def test_an_empty_file_still_open_is_left_to_its_writer(spool, watched):
    writer = open(spool / "running.profraw", "wb")  # the runtime creates it at start
    try:
        (spool / "other.profraw").write_bytes(b"y")  # a later event, to know the first was read
        assert set(watched.until_closed("other.profraw")) == {"other.profraw"}
        assert watched.nothing_more()
    finally:
        writer.close()
    assert set(watched.until_closed("running.profraw")) == {"running.profraw"}


def test_entries_that_are_never_closed_are_handed_over_at_once(spool, watched, tmp_path):
    os.mkfifo(spool / "fifo.profraw")
    assert watched.next_names() == ["fifo.profraw"]
    os.symlink("/etc/shadow", spool / "link.profraw")
    assert watched.next_names() == ["link.profraw"]
    outside = tmp_path / "outside"
    outside.write_bytes(b"z" * 10)
    os.link(outside, spool / "hardlink.profraw")
    assert watched.next_names() == ["hardlink.profraw"]


def test_a_file_moved_in_is_ready_and_folders_are_ignored(spool, watched, tmp_path):
    (spool / "subdir").mkdir()
    done = tmp_path / "done.profraw"
    done.write_bytes(b"w" * 10)
    os.rename(done, spool / "done.profraw")
    names = watched.next_names()
    assert names == ["done.profraw"] and not isinstance(names[0], Arrival)
    assert watched.nothing_more()


def test_a_file_linked_in_with_content_is_an_arrival(spool, watched):
    """An atomic writer may link an O_TMPFILE into place: IN_CREATE, content, no close event."""
    fd = os.open(spool, os.O_TMPFILE | os.O_WRONLY, 0o600)
    proc_fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.write(fd, b"v" * 10)
        os.link(str(fd), spool / "linked.profraw", src_dir_fd=proc_fds, follow_symlinks=True)
        names = watched.next_names()
    finally:
        os.close(fd)
        os.close(proc_fds)
    assert names == ["linked.profraw"] and isinstance(names[0], Arrival)


def test_renames_out_of_the_spool_are_not_reported(spool, watched, tmp_path):
    (spool / "a.profraw").write_bytes(b"a")
    watched.until_closed("a.profraw")
    os.rename(spool / "a.profraw", tmp_path / "claimed")  # what the engine's claim does
    (spool / "b.profraw").write_bytes(b"b")
    assert set(watched.until_closed("b.profraw")) == {"b.profraw"}


def test_lost_events_ask_for_a_rescan(spool):
    recorder = Recorder()
    with inotify_queue_limit(16):
        watcher = SpoolWatcher(spool, recorder.submit, recorder.rescan, recorder.on_lost)
    try:
        for index in range(40):  # 80 events into a queue of 16, nobody reading yet
            (spool / f"{index}.profraw").write_bytes(b"p")
        watcher.start()
        assert recorder.rescans.wait(10), "no rescan after the inotify queue overflowed"
    finally:
        watcher.stop()


def test_the_spool_going_away_is_reported(spool, watched, tmp_path):
    os.rename(spool, tmp_path / "elsewhere")
    assert watched.lost_event.wait(10)
    assert "was removed or moved away" in watched.lost[0]


# ---- the daemon -----------------------------------------------------------------------------
def test_daemon_counts_files_whose_events_were_lost(pgod, workload, llvm_profdata_14, tmp_path):
    """With a tiny inotify queue and the daemon stopped while 60 programs exit, the events
    overflow; the rescan still finds and counts every file."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    with inotify_queue_limit(16):
        daemon = pgod.daemon()
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        run_workload(workload / "bin" / "workload", pgod.spool, workload_inputs(60))
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    wait_for(lambda: daemon.package("workload")["files"] == 60, 60, "60 files counted after the overflow")
    assert "spool.events_lost" in daemon.log()
    assert [name for name in os.listdir(pgod.spool) if not name.startswith(".pgod-staging-")] == []


def test_daemon_stops_with_an_error_when_the_spool_is_removed(pgod, workload, llvm_profdata_14):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    shutil.rmtree(pgod.spool)
    assert daemon.process.wait(timeout=30) == EXIT_FAILED
    assert "daemon.spool_lost" in daemon.log()
