"""The ingest benchmark's scenarios, each measured on a real pgod: files put into the spool of an
idle daemon until its package counts them all (small, large, trickling), the idle daemon after
that, and a daemon started with a backlog in its spool. Each returns a dataclass of figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ingest_config, say
from benchmarks.ingest.files import baseline_cpu, make_copies
from testbed.bus import PrivateBus
from testbed.measured import MeasuredDaemon, proc_wakeups, thread_cpu

TARGETS = {
    "small_ratio": 5.0,
    "small_files_per_s": 2000.0,
    "large_ratio": 2.0,
    "idle_cpu_s": 0.1,
    "idle_rss_mb": 80.0,
}

SMALL_PACKAGE = "bench"
LARGE_PACKAGE = "bench_large"


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
    daemon: MeasuredDaemon,
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


def idle_scenario(daemon: MeasuredDaemon, seconds: float) -> IdleResult:
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
    config = ingest_config(root / "pgod.toml", root, {SMALL_PACKAGE: build_dir})
    say(f"backlog: starting pgod with {count} files in the spool")
    daemon = MeasuredDaemon(bus, config, root, root / "pgod.log")
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
