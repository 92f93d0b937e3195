"""Watch the spool with inotify (watchdog) and hand ready entry names to the engine.

A regular file is ready when its writer closes it (IN_CLOSE_WRITE). One renamed into the spool
from elsewhere shows up as created, with its content already there; it is handed over as an
Arrival, which the engine takes once it parses whole (or after a settling time). Links, FIFOs
and devices never get a close event, so they are handed over as soon as they appear, to be
rejected. This thread only enqueues names; it never reads a file's content.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .engine import EMPTY_FILE_GRACE_SECONDS, Arrival


class _SpoolHandler(FileSystemEventHandler):
    def __init__(self, spool_dir: Path, submit: Callable[[str], None]) -> None:
        self.spool_dir = os.fsdecode(spool_dir)
        self.submit = submit

    def _name_in_spool(self, path: str | bytes) -> str | None:
        directory, name = os.path.split(os.fsdecode(path))
        return name if directory == self.spool_dir and name else None

    def on_closed(self, event: FileSystemEvent) -> None:
        name = self._name_in_spool(event.src_path)
        if name:
            self.submit(name)

    def on_moved(self, event: FileSystemEvent) -> None:
        name = self._name_in_spool(event.dest_path)
        if name:
            self.submit(Arrival(name))

    def on_created(self, event: FileSystemEvent) -> None:
        name = self._name_in_spool(event.src_path)
        if not name:
            return
        try:
            info = os.lstat(event.src_path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            # A link, FIFO, device or second hard link will never be "closed": take it now.
            self.submit(name)
        elif info.st_size > 0 or time.time() - info.st_mtime > EMPTY_FILE_GRACE_SECONDS:
            # Content already there (renamed in from elsewhere), or an old empty file.
            self.submit(Arrival(name))
        # else: a new, empty file being written; its close event will come.


class SpoolWatcher:
    """An inotify watch on one folder, not recursive."""

    def __init__(self, spool_dir: Path, submit: Callable[[str], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(
            _SpoolHandler(spool_dir, submit),
            os.fsdecode(spool_dir),
            recursive=False,
            event_filter=[FileClosedEvent, FileCreatedEvent, FileMovedEvent],
        )

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
