"""Large allocations handed back to the kernel when freed, so a burst of big ones leaves nothing.

glibc serves an allocation of at least M_MMAP_THRESHOLD (128 KiB at start) with a mapping of its
own, which free() unmaps. But the threshold is dynamic: each time such a mapping is freed, glibc
raises the threshold to its size (up to 32 MiB), and the trim threshold to twice that, so every
later allocation of that size comes from an arena heap whose top is then not trimmed. For pgod
that turns anyone's one large input into memory kept for good: a 10 MB D-Bus argument (refused,
but GDBus has copied its body by then), a large raw profile read for its checks. Measured on the
real daemon (tests/test_dbus_bounds.py): 90 calls with a 10 MB argument left it 19 MB bigger;
with the threshold fixed, 9.5 MB, which is GDBus's own read buffer (GLib keeps one per
connection, as large as the largest message it read; the bus bounds it by its max_message_size).

Setting M_MMAP_THRESHOLD explicitly turns the dynamic adjustment off (both thresholds keep
glibc's starting values). We set it to that starting value: nothing else about allocation
changes. Other C libraries (musl returns large blocks itself) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MIN, its value at start


def return_large_allocations() -> bool:
    """Fix glibc's mmap threshold at its starting value; False where there is no glibc mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
