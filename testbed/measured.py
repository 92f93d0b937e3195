"""pgod under measurement, for the benchmarks: its CPU, memory and wake-ups from /proc, its
progress from its own state database (read-only, costing it nothing), and its status by one
D-Bus call (no `pgoctl` process per question).

`MeasuredDaemon` is one `pgod --bus session` on a `testbed.bus.PrivateBus`; the ingest, hostile
and fairness benchmarks run it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from pgod.contract import BUS_NAME, OBJECT_PATH
from testbed.bus import PrivateBus
from testbed.daemon import pgod_argv, spawn_logged, stop_process

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- /proc figures -------------------------------------------------------------------------------
def child_cpu(argv: list[str]) -> float:
    """user+sys CPU seconds of one child process (os.wait4's rusage)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {errors.read().decode(errors='replace')[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own CPU, CPU of waited-for children) in seconds: utime+stime, cutime+cstime of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stream:
        data = stream.read()
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is field 3 (state)
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each of the process's threads, summed by thread name (pgod names its own:
    pgod-engine, pgod-spool, pgod-build-*; the rest keep the process name)."""
    totals: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as stream:
                data = stream.read()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        name = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].split()
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return totals


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_wakeups(pid: int) -> int:
    """Context switches summed over every thread: a proxy for wake-ups."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as stream:
                for line in stream:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


# ---- the daemon under test -----------------------------------------------------------------------
class StateDb:
    """Read-only look at the daemon's SQLite (WAL): progress without costing the daemon a D-Bus call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _query(self, sql: str, *args):
        if self._conn is None:
            if not self.path.exists():
                return None
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        return self._conn.execute(sql, args).fetchone()

    def files(self, package: str) -> int:
        row = self._query("SELECT files FROM packages WHERE name = ?", package)
        return row[0] if row else 0

    def merges(self, package: str) -> tuple[int, float | None]:
        """(number of llvm-profdata merges recorded, wall-clock time of the last one)."""
        row = self._query("SELECT count(*), max(at) FROM merges WHERE package = ?", package)
        return (row[0], row[1]) if row else (0, None)

    def quarantine_reasons(self) -> list[str]:
        """The reason of every quarantined file, as the daemon recorded them."""
        self._query("SELECT 1")
        return [row[0] for row in self._conn.execute("SELECT reason FROM quarantine")]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class MeasuredDaemon:
    """One `pgod --bus session` process on the private bus, started at once; its pgod.log, its
    state database and its figures."""

    #: Extra environment for every daemon started (``--pgod-source`` sets PYTHONPATH here).
    extra_env: dict[str, str] = {}

    def __init__(self, bus: PrivateBus, config: Path, root: Path, log_path: Path) -> None:
        self.bus = bus
        self.root = root
        self.spool = root / "spool"
        self.db = StateDb(root / "state" / "pgod.sqlite")
        self.log_path = log_path
        self._proxy = None
        env = {**os.environ, **self.extra_env, "DBUS_SESSION_BUS_ADDRESS": bus.address}
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.process = spawn_logged(pgod_argv(config, "session"), log_path, env, cwd="/")

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.pid)

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def hwm_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pgod exited with {self.process.returncode}; log tail:\n{tail}")

    def proxy(self):
        """pgod's object on the bus (pydbus), connected on first use."""
        if self._proxy is None:
            self._proxy = self.bus.connection.get(BUS_NAME, OBJECT_PATH)
        return self._proxy

    def status(self, timeout: float = 30) -> dict:
        """GetStatus over D-Bus: the document `pgoctl status --json` prints, one call, no process spawn."""
        return json.loads(self.proxy().GetStatus(timeout=timeout))

    def wait_on_bus(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                self.status(timeout=5)
                return
            except Exception:
                self._proxy = None
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def wait_idle(self, quiet: float = 1.0, timeout: float = 120) -> tuple[float, float]:
        """Wait until the daemon's CPU (own + children) stops moving for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = sum(self.cpu())
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            self.check_alive()
            now_cpu = sum(self.cpu())
            if now_cpu - last > 0.5 / CLK_TCK:
                last, since = now_cpu, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.cpu()

    def package_files(self, package: str, poll: str) -> int:
        if poll == "dbus":
            document = self.status()
            return next((p["files"] for p in document["packages"] if p["name"] == package), 0)
        return self.db.files(package)

    def stop(self) -> None:
        self.db.close()
        stop_process(self.process)
