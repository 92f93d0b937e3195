"""A bounded D-Bus face: no memory kept per call, whatever the call, its answer or its size.

Real daemon on a private bus; the callers are separate processes using GIO directly (a call
costs them a fraction of a millisecond, so the daemon is what is measured).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pgod.contract import BUS_NAME, INTERFACE, OBJECT_PATH

CALLER = f"""
import sys
from gi.repository import Gio, GLib
address, method, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
connection = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
arguments = GLib.Variant("(s)", ("x" * size,)) if size else None
errors, longest = 0, 0
for _ in range(count):
    try:
        connection.call_sync("{BUS_NAME}", "{OBJECT_PATH}", "{INTERFACE}", method, arguments, None, 0, -1, None)
    except GLib.Error as error:
        errors += 1
        longest = max(longest, len(error.message))
print(errors, longest)
"""


def call(address: str, method: str, count: int, size: int = 0, callers: int = 1) -> list[tuple[int, int]]:
    """``callers`` processes each calling ``method`` ``count`` times; (errors, longest error) each."""
    processes = [
        subprocess.Popen([sys.executable, "-c", CALLER, address, method, str(count), str(size)], stdout=subprocess.PIPE, text=True)
        for _ in range(callers)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0
        errors, longest = out.split()
        results.append((int(errors), int(longest)))
    return results


def rss_mb(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def warmed_up(pgod, workload, llvm_profdata_14):
    """A daemon that has answered enough calls to have loaded what calls load (imports, caches,
    SQLite's page cache): what it grows by after that is what calls leave."""
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    call(pgod.bus.address, "GetStatus", 2_000)
    call(pgod.bus.address, "GetPackage", 500, size=len("workload"))
    return daemon


def test_a_hundred_thousand_calls_leave_the_daemon_as_big_as_it_was(pgod, workload, llvm_profdata_14):
    daemon = warmed_up(pgod, workload, llvm_profdata_14)
    address = pgod.bus.address
    before = rss_mb(daemon.process.pid)
    assert call(address, "GetStatus", 25_000, callers=4) == [(0, 0)] * 4
    after_status = rss_mb(daemon.process.pid)
    # Refusals too: a name no package has, and one of 10 MB, answered with a short error each.
    assert call(address, "GetPackage", 10_000, size=8)[0][0] == 10_000
    # The first huge message grows the bus connection's read buffer to its size once (GLib);
    # after that, more of them cost nothing that stays.
    assert call(address, "GetPackage", 5, size=10_000_000)[0][0] == 5
    before_huge = rss_mb(daemon.process.pid)
    huge = call(address, "GetPackage", 50, size=10_000_000)[0]
    assert huge[0] == 50 and huge[1] < 300
    after_refusals = rss_mb(daemon.process.pid)
    assert after_status - before < 5, f"GetStatus: {before:.1f} MB before 100,000 calls, {after_status:.1f} MB after"
    assert after_refusals - before_huge < 5, f"refusals: {before_huge:.1f} MB before, {after_refusals:.1f} MB after"
    assert daemon.status()["packages"][0]["name"] == "workload"


def test_ninety_ten_megabyte_arguments_leave_less_than_twenty_megabytes(pgod, workload, llvm_profdata_14):
    """30 calls each of GetPackage, GetBuildLog and Rebuild with a 10 MB name, from the daemon's
    first huge message on: each refused with a short error, and the daemon at most 20 MB bigger
    after them. What stays is GDBus's read buffer, as large as the largest message (heap.py);
    without the fixed mmap threshold, glibc's heap kept as much again (19 MB here)."""
    daemon = warmed_up(pgod, workload, llvm_profdata_14)
    address = pgod.bus.address
    before = rss_mb(daemon.process.pid)
    for method in ("GetPackage", "GetBuildLog", "Rebuild"):
        refused, longest = call(address, method, 30, size=10_000_000)[0]
        assert refused == 30 and longest < 300, (method, refused, longest)
    after = rss_mb(daemon.process.pid)
    # The bound is 20 MB; what may stay is the read buffer (9.5 MiB) and a little: 15.
    assert after - before < 15, f"{before:.1f} MB before 90 calls with 10 MB arguments, {after:.1f} MB after"
    assert daemon.status()["packages"][0]["name"] == "workload"
