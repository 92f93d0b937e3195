"""Watch the spool with inotify and hand ready entry names to the engine, a buffer at a time.

A regular file is ready when its writer closes it (IN_CLOSE_WRITE), or when it is renamed into
the spool (IN_MOVED_TO): a rename brings a file whole, as atomic writers rely on. Links, FIFOs
and devices never get a close event, so an entry created (IN_CREATE) and not closed within the
same read is looked at: anything but a new, empty regular file is handed over at once (a link
or a FIFO to be rejected; a regular file with content, as made by linkat(2) of an O_TMPFILE, as
an Arrival, which the engine takes once it parses whole or after a settling time). So is a new,
empty file named for a pid that is no running process of its owner: a squatter, who need never
close it. This thread
only enqueues names; it never reads a file's content.

Why not watchdog's Observer: it runs three threads and builds several Python objects per inotify
event, and it also reports our own renames out of the spool. Measured with the ingest
benchmark, that pipeline cost 0.3 to 0.5 s of CPU per 2,000 raw files, more than everything else
pgod does with them. This module uses watchdog's inotify bindings and constants and reads the events itself:
one thread, one ``read`` per buffer of events, one queue item per buffer. It also sees what the
Observer hides: a queue overflow (events lost: the engine rescans the spool) and the spool
itself going away (the daemon stops with an error instead of waiting forever).
"""

from __future__ import annotations

import ctypes
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import inotify_add_watch, inotify_init

from pgod.intake.live import WRITER_TEMP_PREFIX, is_live_name
from pgod.intake.squatting import EMPTY_FILE_GRACE_SECONDS, squatter
from pgod.osthread import name_os_thread

log = structlog.get_logger(__name__)

# Not IN_MOVED_FROM: the engine's own claims are renames out of the spool.
WATCH_MASK = (
    IN.IN_CREATE | IN.IN_CLOSE_WRITE | IN.IN_MOVED_TO | IN.IN_DELETE_SELF | IN.IN_MOVE_SELF
    | IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW
)
_WATCH_GONE = IN.IN_DELETE_SELF | IN.IN_MOVE_SELF | IN.IN_IGNORED | IN.IN_UNMOUNT
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
READ_SIZE = 64 * 1024  # bytes of events per read (each event is 16 bytes plus its name)
# After a read that did not fill the buffer, let events pile up this long before the next one:
# a burst of exits then costs a few wake-ups instead of one per file (measured: 0.03 → 0.007 s
# of CPU per 2,000 files). The kernel queue (16,384 events by default) outlasts it easily.
COALESCE_MS = 5
_WRITER_TEMP = os.fsencode(WRITER_TEMP_PREFIX)



class Arrival(str):
    """A spool name that appeared with content but no close event (linked in, for one): taken
    once it parses whole, or after ARRIVAL_SETTLE_SECONDS."""


class SpoolWatchError(OSError):
    """The spool cannot be watched."""


class SpoolWatcher:
    """An inotify watch on one folder, not recursive, read by one thread.

    ``submit`` gets the ready names of each buffer of events, ``rescan`` is called when the
    kernel dropped events (the whole spool must be looked at again), and ``lost`` when the
    spool folder itself was removed or moved away, with a sentence saying so.
    """

    def __init__(
        self,
        spool_dir: Path,
        submit: Callable[[list[str]], None],
        rescan: Callable[[], None],
        lost: Callable[[str], None],
    ) -> None:
        self.spool_dir = os.fsdecode(spool_dir)
        self._submit = submit
        self._rescan = rescan
        self._lost = lost
        self._fd = inotify_init()
        if self._fd < 0:
            error = ctypes.get_errno()
            raise SpoolWatchError(error, f"inotify_init: {os.strerror(error)}")
        os.set_inheritable(self._fd, False)
        if inotify_add_watch(self._fd, os.fsencode(self.spool_dir), WATCH_MASK) < 0:
            error = ctypes.get_errno()
            os.close(self._fd)
            raise SpoolWatchError(error, f"cannot watch {self.spool_dir}: {os.strerror(error)}")
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="pgod-spool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._wake_read, self._wake_write):
            os.close(fd)

    def _run(self) -> None:
        name_os_thread()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        stop_poller = select.poll()  # the wake pipe alone: a pause that stop() still ends
        stop_poller.register(self._wake_read, select.POLLIN)
        while True:
            ready_fds = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready_fds:
                return
            try:
                buffer = os.read(self._fd, READ_SIZE)
            except InterruptedError:
                continue
            except OSError as err:  # the inotify descriptor itself failed: nothing more will come
                self._lost(f"reading the spool's inotify events failed: {err.strerror}")
                return
            try:
                if not self._handle(buffer):
                    return
            except Exception:  # a bug here must not silence the spool for good
                log.exception("spool.watch_failed")
                self._rescan()
            if len(buffer) < READ_SIZE // 2 and stop_poller.poll(COALESCE_MS):
                return

    def _handle(self, buffer: bytes) -> bool:
        """Turn one buffer of events into names for the engine; False once the watch is gone."""
        ready: dict[str, str] = {}  # name → name (ready) or Arrival (appeared with content)
        created: list[str] = []
        overflow = gone = False
        offset = 0
        while offset + _EVENT.size <= len(buffer):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
            raw_name = buffer[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN.IN_Q_OVERFLOW:
                overflow = True
            elif mask & _WATCH_GONE:
                gone = True
            elif raw_name and mask & IN.IN_ISDIR:
                # Folders are never claimed, but one named like a program's profile may squat
                # that program's name: the engine looks at those.
                if mask & (IN.IN_CREATE | IN.IN_MOVED_TO) and raw_name.endswith(b".profraw"):
                    ready[os.fsdecode(raw_name)] = os.fsdecode(raw_name)
            elif raw_name.startswith(_WRITER_TEMP):
                pass  # a live writer's temp file, renamed over its live name once whole: nobody's to take
            elif raw_name:
                name = os.fsdecode(raw_name)
                if mask & (IN.IN_CLOSE_WRITE | IN.IN_MOVED_TO):
                    ready[name] = name
                elif mask & IN.IN_CREATE:
                    created.append(name)
        for name in created:
            if name not in ready and (kind := self._appeared(name)) is not None:
                ready[name] = kind
        if ready:
            self._submit(list(ready.values()))
        if overflow:
            log.warning("spool.events_lost", hint="the inotify queue overflowed; rescanning the spool")
            self._rescan()
        if gone:
            self._lost(f"the spool folder {self.spool_dir} was removed or moved away")
            return False
        return True

    def _appeared(self, name: str) -> str | None:
        """An entry created but not (yet) closed by a writer: what to hand over now, if anything."""
        try:
            info = os.lstat(f"{self.spool_dir}/{name}")
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return name  # a link, FIFO, device or second hard link is never "closed": take it now
        if is_live_name(name):
            return name  # a live run's file, held open by its writer for as long as it runs: follow it now
        if info.st_size > 0 or time.time() - info.st_mtime > EMPTY_FILE_GRACE_SECONDS:
            return Arrival(name)  # content already there, or an old empty file
        if squatter(name, info.st_uid):
            # Named for a pid that is no running process of its owner: someone holding a
            # program's name ahead of it, who need never close it, so no close event may come.
            # The engine frees it once it has stayed empty a moment (squatting.py).
            return name
        return None  # a new, empty file being written: its close event will come
