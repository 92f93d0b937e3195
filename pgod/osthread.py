"""Kernel-visible thread names, so `top -H`, `ps -L` and /proc/PID/task/*/comm tell the daemon's
threads apart (engine, spool watch, builds): which one uses the CPU is then plain to see, by an
operator and by the ingest benchmark. Python before 3.14 names threads for itself only."""

from __future__ import annotations

import ctypes
import threading

_PR_SET_NAME = 15
_COMM_BYTES = 15  # the kernel keeps 16 bytes, the last one a NUL


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread its Python name (or ``name``) in the kernel too; best effort."""
    text = (name or threading.current_thread().name).encode("utf-8", "replace")[:_COMM_BYTES]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(text), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: only a diagnostic is lost
        pass
