"""Ingest benchmark: what the real pgod daemon costs next to one plain `llvm-profdata merge`.

Run from the repository root:  python -m benchmarks.ingest [--quick] [--json] [--idle-seconds N]

It builds real instrumented programs with clang-14, makes raw profiles by running them, starts the
installed `pgod` on a private dbus-daemon, and measures, in one run:

1. small raw files (a few hundred bytes): pgod's CPU (its own + its llvm-profdata children) to
   claim, record and merge them, against the CPU of ONE `llvm-profdata-14 merge -f LIST` over the
   same files; wall time and files/s.
2. the same for large raw files (~100 KB: a program with 1,500 functions).
3. idle cost after the backlog: CPU over N seconds with nobody polling, RSS, wake-ups.
4. a backlog present at start: N small files in the spool before the daemon starts: peak RSS,
   time until all are merged, and `spool_backlog` from status as it goes.

There are no asserts and no pass/fail: figures and their targets, printed as a table (or JSON with
--json). See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgod.contract import BUS_NAME, OBJECT_PATH

BIN = Path(sys.executable).parent
CLANG = Path("/usr/bin/clang-14")
PROFDATA = Path("/usr/bin/llvm-profdata-14")
PROFILE_FLAGS = ("-O1", "-fprofile-instr-generate", "-Wl,--build-id")
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "small_ratio": 5.0,
    "small_files_per_s": 2000.0,
    "large_ratio": 2.0,
    "idle_cpu_s": 0.1,
    "idle_rss_mb": 80.0,
}
FULL = {"small": 2000, "large": 300, "backlog": 20000, "idle": 60.0, "trickle": 200}
QUICK = {"small": 200, "large": 30, "backlog": 2000, "idle": 5.0, "trickle": 40}
TRICKLE_RATE = 20.0  # files/s in the trickle scenario: programs exiting one after another

SMALL_PACKAGE = "bench"
LARGE_PACKAGE = "bench_large"
LARGE_FUNCTIONS = 1500  # 1,500 functions × (data record + 2 counters) ≈ 100 KB of raw profile

# Counters depend on the input, so the seed runs give different profiles (the tests' program).
SMALL_C = (Path(__file__).resolve().parents[1] / "tests" / "programs" / "workload.c").read_text()


def large_c(functions: int) -> str:
    """Many small functions with a branch each, called through a table so none is inlined away."""
    lines = ["#include <stdio.h>", "#include <stdlib.h>"]
    for i in range(functions):
        lines.append(
            f"__attribute__((noinline)) static unsigned f{i}(unsigned x) "
            f"{{ if ((x ^ {i}u) & {1 << (i % 5)}u) return x * {2 * i + 3}u + {i}u; return (x >> 1) ^ {i}u; }}"
        )
    lines.append("typedef unsigned (*fn)(unsigned);")
    lines.append("static fn table[] = {" + ",".join(f"f{i}" for i in range(functions)) + "};")
    lines.append(
        textwrap.dedent(
            f"""\
            int main(int argc, char **argv) {{
                unsigned seed = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 1, acc = seed;
                for (unsigned i = 0; i < {functions}u * 4u; i++)
                    acc += table[(i * 7u + seed * 13u) % {functions}u](acc + i);
                printf("%u\\n", acc);
                return 0;
            }}"""
        )
    )
    return "\n".join(lines) + "\n"


# ---- small helpers -------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def compile_program(source_text: str, directory: Path, name: str) -> Path:
    """Compile one C file, instrumented, into ``directory/bin/name``; returns the executable."""
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.c"
    source.write_text(source_text)
    exe = directory / "bin" / name
    subprocess.run([str(CLANG), *PROFILE_FLAGS, str(source), "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def seed_profiles(exe: Path, directory: Path, runs: int, args_for) -> list[Path]:
    """Run the program ``runs`` times, one raw profile per run."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    for i in range(runs):
        path = directory / f"seed-{i:03d}.profraw"
        subprocess.run(
            [str(exe), *args_for(i)],
            env={**os.environ, "LLVM_PROFILE_FILE": str(path)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seeds.append(path)
    return seeds


def make_copies(seeds: list[Path], directory: Path, count: int, prefix: str, mtime: float | None = None) -> list[Path]:
    """``count`` distinct raw files (own inode, one link each) cycling through the seed profiles.

    Why copies and not ``count`` runs: what pgod and llvm-profdata spend per file (rename, stat,
    open, header parse, reading and adding the counters) depends on the file's size and layout,
    which every run of one binary shares, not on the counter values. The seeds still differ, so
    the merged profile is a real sum; copying is ~100× faster than exec'ing 20,000 processes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    blobs = [seed.read_bytes() for seed in seeds]
    paths = []
    for i in range(count):
        path = directory / f"{prefix}-{i:06d}.profraw"
        with open(path, "wb") as out:
            out.write(blobs[i % len(blobs)])
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


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


def baseline_cpu(files: list[Path], workdir: Path, repeats: int = 3) -> float:
    """CPU of ONE `llvm-profdata merge -o OUT -f LIST` over ``files``: median of ``repeats`` calls."""
    workdir.mkdir(parents=True, exist_ok=True)
    listing = workdir / "inputs.txt"
    listing.write_text("".join(f"{path}\n" for path in files))
    output = workdir / "baseline.profdata"
    cpu = [child_cpu([str(PROFDATA), "merge", "-o", str(output), "-f", str(listing)]) for _ in range(repeats)]
    return statistics.median(cpu)


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


def stop_process(process: subprocess.Popen | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def toml_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, root: Path, packages: dict[str, Path]) -> Path:
    lines = [
        f"spool_dir = {toml_value(root / 'spool')}",
        f"state_dir = {toml_value(root / 'state')}",
        f"profile_link = {toml_value(root / 'profile')}",
        "threshold_mb = 1000000",  # never reach a build: this measures ingest only
    ]
    for name, build_dir in packages.items():
        lines += [
            f"\n[packages.{name}]",
            f"profile_build = {toml_value([build_dir])}",
            'build = ["true"]',
            f"llvm_profdata = {toml_value(PROFDATA)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


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

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Daemon:
    """One `pgod --bus session` process on the private bus."""

    #: Extra environment for every daemon started (``--pgod-source`` sets PYTHONPATH here).
    extra_env: dict[str, str] = {}

    def __init__(self, bus, config: Path, root: Path, log_path: Path) -> None:
        self.bus = bus
        self.root = root
        self.spool = root / "spool"
        self.db = StateDb(root / "state" / "pgod.sqlite")
        self.log_path = log_path
        self._proxy = None
        env = {**os.environ, **self.extra_env, "DBUS_SESSION_BUS_ADDRESS": bus.address}
        with open(log_path, "ab") as log:
            self.started_wall = time.time()
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [str(BIN / "pgod"), "--config", str(config), "--bus", "session"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
            )

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

    def status(self, timeout: float = 30) -> dict:
        """GetStatus over D-Bus: the document `pgoctl status --json` prints, one call, no process spawn."""
        if self._proxy is None:
            self._proxy = self.bus.connection.get(BUS_NAME, OBJECT_PATH)
        return json.loads(self._proxy.GetStatus(timeout=timeout))

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


class PrivateBus:
    """A session-type dbus-daemon of our own, and one client connection to it."""

    def __init__(self, directory: Path) -> None:
        from pydbus import connect

        self.process = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1", f"--address=unix:path={directory / 'bus.socket'}"],
            stdout=subprocess.PIPE,
            stderr=open(directory / "dbus-daemon.log", "ab"),  # its fd-limit warning is noise here
            text=True,
        )
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("dbus-daemon did not start")
        self.connection = connect(self.address)

    def close(self) -> None:
        try:
            self.connection.con.close_sync(None)
        except Exception:
            pass
        stop_process(self.process)


# ---- scenarios -----------------------------------------------------------------------------------
@dataclass
class IngestResult:
    scenario: str
    files: int
    file_bytes: int  # size of one raw file (all copies of the seeds have about this size)
    merged: int  # files counted by the daemon during the scenario (== files when complete)
    complete: bool
    wall_s: float  # first file into the spool → the daemon's commit counting the last one
    pgod_cpu_s: float  # own + llvm-profdata children, including the clean-up after the last commit
    pgod_own_cpu_s: float  # the Python process (all threads)
    pgod_profdata_cpu_s: float  # its waited-for children: llvm-profdata
    baseline_cpu_s: float  # one `llvm-profdata merge -f` over the same files (median of 3)
    ratio: float | None  # pgod_cpu_s / baseline_cpu_s
    ratio_target: float | None
    files_per_s: float
    files_per_s_target: float | None
    merges: int  # llvm-profdata calls pgod made (rows in its merges table)
    cpu_ms_per_file: float = 0.0
    arrival_s: float = 0.0  # how long the benchmark took to put the files into the spool
    lag_s: float = 0.0  # last file into the spool → the commit counting the last one
    threads_cpu_s: dict[str, float] = field(default_factory=dict)  # pgod's own CPU by thread name
    note: str = ""


def ingest_scenario(
    daemon: Daemon,
    package: str,
    files: list[Path],
    scenario: str,
    baseline: float,
    poll: str,
    stall_s: float,
    ratio_target: float | None,
    rate_target: float | None,
    arrival_mode: str = "rename",
    rate: float | None = None,
) -> IngestResult:
    """Put ``files`` into the spool of an idle daemon; wait until its package counts them all.

    ``rename`` (the default) moves each file in from a folder on the same filesystem, so it
    arrives whole, by IN_MOVED_TO; ``write`` creates each in the spool and writes it, as the LLVM
    profile runtime does (IN_CREATE, then IN_CLOSE_WRITE). ``rate`` (files/s) spaces the arrivals
    out, as programs exiting one by one would; by default they all arrive at once.
    """
    poll_interval = 0.2 if poll == "dbus" else 0.05
    own0, kids0 = daemon.wait_idle()
    threads0 = thread_cpu(daemon.pid)
    before = daemon.db.files(package)
    merges_before, _ = daemon.db.merges(package)
    target = before + len(files)
    size = files[0].stat().st_size
    contents = [path.read_bytes() for path in files] if arrival_mode == "write" else []
    started = time.monotonic()
    started_wall = time.time()
    for index, path in enumerate(files):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        if arrival_mode == "write":
            with open(daemon.spool / path.name, "wb") as out:
                out.write(contents[index])
        else:
            os.rename(path, daemon.spool / path.name)  # IN_MOVED_TO in the spool, like an atomic writer
    arrival = time.monotonic() - started
    count, last_change = before, time.monotonic()
    while count < target:
        daemon.check_alive()
        time.sleep(poll_interval)
        now_count = daemon.package_files(package, poll)
        if now_count != count:
            count, last_change = now_count, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            break
    wall = time.monotonic() - started
    own1, kids1 = daemon.wait_idle()
    threads1 = thread_cpu(daemon.pid)
    merges_after, last_merge_at = daemon.db.merges(package)
    complete = count >= target
    if complete and last_merge_at is not None:
        wall = max(0.0, last_merge_at - started_wall)  # the commit's own time stamp: no polling lag
    merged = count - before
    note = ""
    if not complete:
        left = sum(1 for entry in os.scandir(daemon.spool) if not entry.name.startswith("."))
        note = f"stalled: {merged} of {len(files)} counted, no progress for {stall_s:.0f} s, {left} still in the spool"
    cpu = (own1 - own0) + (kids1 - kids0)
    return IngestResult(
        scenario=scenario,
        files=len(files),
        file_bytes=size,
        merged=merged,
        complete=complete,
        wall_s=wall,
        pgod_cpu_s=cpu,
        pgod_own_cpu_s=own1 - own0,
        pgod_profdata_cpu_s=kids1 - kids0,
        baseline_cpu_s=baseline,
        ratio=cpu / baseline if baseline > 0 else None,
        ratio_target=ratio_target,
        files_per_s=merged / wall if wall > 0 else 0.0,
        files_per_s_target=rate_target,
        merges=merges_after - merges_before,
        cpu_ms_per_file=1000 * cpu / merged if merged else 0.0,
        arrival_s=arrival,
        lag_s=max(0.0, wall - arrival),
        threads_cpu_s={name: round(cpu - threads0.get(name, 0.0), 3) for name, cpu in sorted(threads1.items())
                       if cpu - threads0.get(name, 0.0) > 0},
        note=note,
    )


@dataclass
class IdleResult:
    seconds: float
    cpu_s: float
    cpu_target_s: float
    rss_mb: float
    rss_target_mb: float
    peak_rss_mb: float  # VmHWM over the daemon's life so far (it has ingested scenarios 1 and 2)
    wakeups_per_s: float
    threads: int
    status_call_cpu_ms: float  # daemon CPU per GetStatus call (what each `pgoctl status` costs it)


def idle_scenario(daemon: Daemon, seconds: float) -> IdleResult:
    daemon.wait_idle()
    own0, kids0 = daemon.cpu()
    wake0 = proc_wakeups(daemon.pid)
    time.sleep(seconds)  # no polling of any kind during the window
    own1, kids1 = daemon.cpu()
    wake1 = proc_wakeups(daemon.pid)
    rss, hwm = daemon.rss_mb(), daemon.hwm_mb()
    threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
    # Then: what one status call costs the daemon (this is why the ingest scenarios poll SQLite).
    calls = 50
    before = sum(daemon.cpu())
    for _ in range(calls):
        daemon.status()
    status_ms = (sum(daemon.wait_idle(quiet=0.5)) - before) / calls * 1000
    return IdleResult(
        seconds=seconds,
        cpu_s=(own1 - own0) + (kids1 - kids0),
        cpu_target_s=TARGETS["idle_cpu_s"],
        rss_mb=rss,
        rss_target_mb=TARGETS["idle_rss_mb"],
        peak_rss_mb=hwm,
        wakeups_per_s=(wake1 - wake0) / seconds if seconds > 0 else 0.0,
        threads=threads,
        status_call_cpu_ms=status_ms,
    )


@dataclass
class BacklogResult:
    files: int
    file_bytes: int
    complete: bool
    merged: int
    seconds: float  # daemon process start → commit counting the last file
    files_per_s: float
    pgod_cpu_s: float  # whole process life: start-up + scan + ingest + merges + status calls
    baseline_cpu_s: float
    ratio: float | None
    merges: int
    peak_rss_mb: float  # highest VmRSS sampled every 0.5 s
    vm_hwm_mb: float  # the kernel's own peak (VmHWM) at the end
    backlog_first: int | None
    backlog_middle: int | None
    backlog_last: int | None
    backlog_max: int | None
    backlog_non_increasing: bool  # from its highest value on, it never went up
    backlog_zero_before_scan: bool  # status answered 0 while the start-up scan had not counted the files yet
    max_status_latency_s: float  # slowest GetStatus answer while the backlog was worked off
    samples: list[dict] = field(default_factory=list)
    note: str = ""


def backlog_scenario(bus: PrivateBus, root: Path, build_dir: Path, seeds: list[Path], count: int, stall_s: float) -> BacklogResult:
    root.mkdir(parents=True)
    spool = root / "spool"
    # Older than the daemon's 5 s "may still be written" window, so the start-up scan takes them.
    past = time.time() - 3600
    files = make_copies(seeds, spool, count, "backlog", mtime=past)
    size = files[0].stat().st_size
    say(f"backlog: baseline merge of {count} files")
    baseline = baseline_cpu(files, root / "baseline")
    config = write_config(root / "pgod.toml", root, {SMALL_PACKAGE: build_dir})
    say(f"backlog: starting pgod with {count} files in the spool")
    daemon = Daemon(bus, config, root, root / "pgod.log")
    try:
        samples: list[dict] = []
        merged, last_change = 0, time.monotonic()
        next_tick = time.monotonic()
        while True:
            daemon.check_alive()
            t = time.monotonic() - daemon.started
            sample = {"t": round(t, 2), "rss_mb": round(daemon.rss_mb(), 1), "spool_backlog": None, "files": None}
            asked = time.monotonic()
            try:
                document = daemon.status(timeout=30)
                sample["status_latency_s"] = round(time.monotonic() - asked, 3)
                sample["spool_backlog"] = document["daemon"]["spool_backlog"]
                sample["files"] = next(p["files"] for p in document["packages"] if p["name"] == SMALL_PACKAGE)
            except Exception:
                daemon._proxy = None  # not on the bus yet
            samples.append(sample)
            if sample["files"] is not None:
                if sample["files"] != merged:
                    merged, last_change = sample["files"], time.monotonic()
                if merged >= count:
                    break
            if time.monotonic() - last_change > stall_s:
                break
            next_tick += 0.5
            time.sleep(max(0.0, next_tick - time.monotonic()))
        own, kids = daemon.wait_idle()
        n_merges, last_merge_at = daemon.db.merges(SMALL_PACKAGE)
        complete = merged >= count
        seconds = (last_merge_at - daemon.started_wall) if (complete and last_merge_at) else time.monotonic() - daemon.started
        hwm = daemon.hwm_mb()
    finally:
        daemon.stop()
    backlog = [s["spool_backlog"] for s in samples if s["spool_backlog"] is not None]
    latencies = [s["status_latency_s"] for s in samples if "status_latency_s" in s]
    cpu = own + kids
    return BacklogResult(
        files=count,
        file_bytes=size,
        complete=complete,
        merged=merged,
        seconds=seconds,
        files_per_s=merged / seconds if seconds > 0 else 0.0,
        pgod_cpu_s=cpu,
        baseline_cpu_s=baseline,
        ratio=cpu / baseline if baseline > 0 else None,
        merges=n_merges,
        peak_rss_mb=max(s["rss_mb"] for s in samples),
        vm_hwm_mb=hwm,
        backlog_first=backlog[0] if backlog else None,
        backlog_middle=backlog[len(backlog) // 2] if backlog else None,
        backlog_last=backlog[-1] if backlog else None,
        backlog_max=max(backlog) if backlog else None,
        backlog_non_increasing=_non_increasing_from_peak(backlog),
        backlog_zero_before_scan=bool(backlog) and backlog[0] == 0 and max(backlog) > 0,
        max_status_latency_s=max(latencies) if latencies else 0.0,
        samples=samples,
        note="" if complete else f"stalled: {merged} of {count} counted after {seconds:.0f} s",
    )


def _non_increasing_from_peak(values: list[int]) -> bool:
    if not values:
        return False
    tail = values[values.index(max(values)) :]
    return all(a >= b for a, b in zip(tail, tail[1:]))


# ---- report --------------------------------------------------------------------------------------
def _fmt_size(size: int) -> str:
    return f"{size} B" if size < 10_000 else f"{size / 1000:.1f} kB"


def _target(value: float | None, target: float | None, op: str, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{text} ({op}{target:g}{unit})" if target is not None else text


def render(report: dict) -> str:
    out = []
    setup = report["setup"]
    out.append(
        f"pgod ingest benchmark ({setup['mode']} run, clang-14/llvm-profdata-14, {setup['cpus']} CPUs, "
        f"pgod from {setup['pgod']}, files arrive by {setup['arrival']}, progress polled via {setup['poll']}; {report['runtime_s']:.0f} s total)"
    )
    header = (
        f"{'scenario':<22}{'files':>7}{'size':>10}{'wall s':>8}{'pgod CPU s':>12}{'(own+llvm)':>14}"
        f"{'baseline s':>12}{'ratio (target)':>17}{'files/s (target)':>19}{'merges':>8}{'ms/file':>9}"
    )
    out.append(header)
    out.append("-" * len(header))
    rows = [report.get("small"), report.get("large"), report.get("trickle")]
    for row in filter(None, rows):
        out.append(
            f"{row['scenario']:<22}{row['files']:>7}{_fmt_size(row['file_bytes']):>10}{row['wall_s']:>8.2f}"
            f"{row['pgod_cpu_s']:>12.2f}{'(%.2f+%.2f)' % (row['pgod_own_cpu_s'], row['pgod_profdata_cpu_s']):>14}"
            f"{row['baseline_cpu_s']:>12.3f}{_target(row['ratio'], row['ratio_target'], '≤', '×'):>17}"
            f"{_target(row['files_per_s'], row['files_per_s_target'], '≥'):>19}{row['merges']:>8}{row['cpu_ms_per_file']:>9.3f}"
        )
        by_thread = ", ".join(f"{name} {cpu:.3f}" for name, cpu in sorted(row["threads_cpu_s"].items(), key=lambda kv: -kv[1]))
        out.append(f"    arrival {row['arrival_s']:.2f} s, counted {row['lag_s']:.2f} s after the last; own CPU by thread: {by_thread or '-'}")
        if row["note"]:
            out.append(f"    !! {row['note']}")
    backlog = report.get("backlog")
    if backlog:
        out.append(
            f"{'4 backlog at start':<22}{backlog['files']:>7}{_fmt_size(backlog['file_bytes']):>10}{backlog['seconds']:>8.2f}"
            f"{backlog['pgod_cpu_s']:>12.2f}{'(incl start)':>14}{backlog['baseline_cpu_s']:>12.3f}"
            f"{_target(backlog['ratio'], None, ''):>17}{_target(backlog['files_per_s'], None, ''):>19}{backlog['merges']:>8}"
            f"{1000 * backlog['pgod_cpu_s'] / max(1, backlog['merged']):>9.3f}"
        )
    out.append("")
    start = report.get("startup")
    if start:
        out.append(f"start-up (daemon A, empty spool): {start['cpu_s']:.2f} s CPU, {start['seconds']:.2f} s to first answer, RSS {start['rss_mb']:.1f} MB")
    idle = report.get("idle")
    if idle:
        out.append(
            f"3 idle after the backlog, {idle['seconds']:.0f} s unpolled: CPU {idle['cpu_s']:.3f} s (target <{idle['cpu_target_s']:g}), "
            f"RSS {idle['rss_mb']:.1f} MB (target <{idle['rss_target_mb']:g}), peak so far {idle['peak_rss_mb']:.1f} MB, "
            f"{idle['wakeups_per_s']:.1f} wake-ups/s, {idle['threads']} threads; one status call costs the daemon "
            f"{idle['status_call_cpu_ms']:.1f} ms CPU"
        )
    if backlog:
        out.append(
            f"4 backlog at start: peak RSS {backlog['peak_rss_mb']:.1f} MB sampled / {backlog['vm_hwm_mb']:.1f} MB VmHWM; "
            f"all {backlog['merged']} merged {backlog['seconds']:.1f} s after exec; spool_backlog first/middle/last "
            f"{backlog['backlog_first']}/{backlog['backlog_middle']}/{backlog['backlog_last']} (max {backlog['backlog_max']}, "
            f"non-increasing from its peak: {'yes' if backlog['backlog_non_increasing'] else 'NO'}"
            f"{'; read 0 before the start-up scan counted the files' if backlog['backlog_zero_before_scan'] else ''}); slowest status answer "
            f"{backlog['max_status_latency_s']:.2f} s"
        )
        if backlog["note"]:
            out.append(f"    !! {backlog['note']}")
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts for a smoke run (%s)" % QUICK)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--idle-seconds", type=float, help="length of the idle window (default 60, --quick 5)")
    parser.add_argument("--small-files", type=int, help="number of small raw files (default 2000)")
    parser.add_argument("--large-files", type=int, help="number of ~100 KB raw files (default 300)")
    parser.add_argument("--backlog-files", type=int, help="files in the spool before start (default 20000)")
    parser.add_argument("--trickle-files", type=int, help="small files arriving one by one at 20/s (default 200)")
    parser.add_argument("--seed-runs", type=int, default=50, help="real program runs whose profiles are copied")
    parser.add_argument(
        "--poll",
        choices=("sqlite", "dbus"),
        default="sqlite",
        help="how scenarios 1-2 watch progress: read the state DB (free for the daemon) or GetStatus every 0.2 s",
    )
    parser.add_argument(
        "--arrival",
        choices=("rename", "write"),
        default="rename",
        help="how files reach the spool in scenarios 1-2: renamed in whole (IN_MOVED_TO), or written there (IN_CLOSE_WRITE)",
    )
    parser.add_argument(
        "--pgod-source",
        type=Path,
        help="run the daemon from this folder's pgod package (PYTHONPATH), e.g. a patched copy under /tmp",
    )
    parser.add_argument("--stall-seconds", type=float, default=30, help="give up a scenario after this long without progress")
    parser.add_argument("--skip", action="append", default=[], choices=("small", "large", "idle", "backlog", "trickle"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (daemon logs, state)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = dict(QUICK if args.quick else FULL)
    for key, value in (("small", args.small_files), ("large", args.large_files), ("backlog", args.backlog_files), ("idle", args.idle_seconds), ("trickle", args.trickle_files)):
        if value is not None:
            counts[key] = value
    for tool in (CLANG, PROFDATA):
        if not os.access(tool, os.X_OK):
            print(f"benchmark: {tool} not found (apt-get install clang-14 llvm-14)", file=sys.stderr)
            return 2
    if shutil.which("dbus-daemon") is None:
        print("benchmark: dbus-daemon not found (apt-get install dbus)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    if args.pgod_source is not None:
        Daemon.extra_env = {"PYTHONPATH": str(args.pgod_source.resolve())}
    daemon_pgod = subprocess.run(
        [str(BIN / "python"), "-c", "import pgod; print(pgod.__file__)"],
        env={**os.environ, **Daemon.extra_env}, cwd="/", capture_output=True, text=True, check=True,
    ).stdout.strip()

    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pgod-bench-", dir="/tmp"))
    bus: PrivateBus | None = None
    daemon: Daemon | None = None
    report: dict = {
        "setup": {"mode": "quick" if args.quick else "full", "cpus": os.cpu_count(), "poll": args.poll, "arrival": args.arrival, "counts": counts,
                  "pgod": str(Path(daemon_pgod).parent),
                  "seed_runs": args.seed_runs, "tmp": str(tmp)},
        "targets": TARGETS,
    }
    try:
        say(f"working in {tmp}")
        say("compiling the instrumented programs (clang-14)")
        small_dir = tmp / "programs" / "small"
        large_dir = tmp / "programs" / "large"
        small_exe = compile_program(SMALL_C, small_dir, "small")
        large_exe = compile_program(large_c(LARGE_FUNCTIONS), large_dir, "large")
        words = ["alpha", "b3ta", "GAMMA 7", "d", "42 x 42", "zz top 99"]
        small_seeds = seed_profiles(small_exe, tmp / "seeds" / "small", args.seed_runs, lambda i: [str(i * 7 + 1), words[i % 6] * (1 + i % 3)])
        large_seeds = seed_profiles(large_exe, tmp / "seeds" / "large", args.seed_runs, lambda i: [str(i + 1)])
        report["setup"]["small_profraw_bytes"] = small_seeds[0].stat().st_size
        report["setup"]["large_profraw_bytes"] = large_seeds[0].stat().st_size

        bus = PrivateBus(tmp)
        # Daemon A: scenarios 1, 2 and 3. Files are staged in `outbox` on the same filesystem as the
        # spool, then renamed in: each arrives whole, by IN_MOVED_TO.
        root_a = tmp / "daemon-a"
        root_a.mkdir()
        outbox = root_a / "outbox"
        small_files = make_copies(small_seeds, outbox / "small", counts["small"], "small") if "small" not in args.skip else []
        large_files = make_copies(large_seeds, outbox / "large", counts["large"], "large") if "large" not in args.skip else []
        trickle_files = make_copies(small_seeds, outbox / "trickle", counts["trickle"], "trickle") if "trickle" not in args.skip else []
        baselines = {}
        for name, files in (("small", small_files), ("large", large_files), ("trickle", trickle_files)):
            if files:
                say(f"baseline: one llvm-profdata merge of {len(files)} {name} files (median of 3)")
                baselines[name] = baseline_cpu(files, root_a / f"baseline-{name}")
        config_a = write_config(root_a / "pgod.toml", root_a, {SMALL_PACKAGE: small_dir / "bin", LARGE_PACKAGE: large_dir / "bin"})
        say("starting pgod (daemon A)")
        daemon = Daemon(bus, config_a, root_a, root_a / "pgod.log")
        daemon.wait_on_bus()
        up = time.monotonic() - daemon.started
        own, kids = daemon.wait_idle()
        report["startup"] = {"seconds": up, "cpu_s": own + kids, "rss_mb": daemon.rss_mb()}

        if small_files:
            say(f"1: {len(small_files)} small files into the spool")
            report["small"] = asdict(
                ingest_scenario(daemon, SMALL_PACKAGE, small_files, "1 small files", baselines["small"], args.poll,
                                args.stall_seconds, TARGETS["small_ratio"], TARGETS["small_files_per_s"], args.arrival)
            )
        if large_files:
            say(f"2: {len(large_files)} large files into the spool")
            report["large"] = asdict(
                ingest_scenario(daemon, LARGE_PACKAGE, large_files, "2 large files", baselines["large"], args.poll,
                                args.stall_seconds, TARGETS["large_ratio"], None, args.arrival)
            )
        if trickle_files:
            say(f"5: {len(trickle_files)} small files arriving one by one at {TRICKLE_RATE:g}/s")
            report["trickle"] = asdict(
                ingest_scenario(daemon, SMALL_PACKAGE, trickle_files, f"5 trickle {TRICKLE_RATE:g}/s", baselines["trickle"],
                                args.poll, args.stall_seconds, None, None, args.arrival, rate=TRICKLE_RATE)
            )
        if "idle" not in args.skip:
            say(f"3: idle for {counts['idle']:g} s (no polling)")
            report["idle"] = asdict(idle_scenario(daemon, counts["idle"]))
        daemon.stop()
        daemon = None

        if "backlog" not in args.skip:
            say(f"4: {counts['backlog']} files in the spool before start")
            result = backlog_scenario(bus, tmp / "daemon-b", small_dir / "bin", small_seeds, counts["backlog"], args.stall_seconds)
            report["backlog"] = asdict(result)
    finally:
        if daemon is not None:
            daemon.stop()
        if bus is not None:
            bus.close()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["runtime_s"] = time.monotonic() - began
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
