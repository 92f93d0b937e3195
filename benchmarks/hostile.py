"""Hostile-input benchmark: what crafted raw profiles cost the real daemon, and whether status
stays responsive meanwhile.

One run: a daemon on a private bus; good files of one program arrive together with each kind of
file that hurts llvm-profdata (testbed/crafted.py: a segfault, a 1 TiB allocation, an expanding
file, and a large expanding one near its limits). A thread calls GetStatus back to back the
whole time. Printed: per scenario the time until every file settled, llvm-profdata runs (the
bisection's cost), the quarantine reasons, the daemon's peak RSS, and the status latency
(median, max) measured in the same run.

    python -m benchmarks.hostile [--good N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import ingest_config, say
from testbed import crafted  # the same crafted files the tests use
from testbed.bus import PrivateBus
from testbed.measured import MeasuredDaemon
from testbed.programs import CLANG, PROFDATA, compile_program, seed_profiles
from testbed.programs import WORKLOAD_C as PROGRAM

SCENARIOS = {
    "segfault": crafted.names_length_crash,
    "1 TiB allocation": crafted.names_allocation,
    "expansion 56 KB → 8 MB": crafted.shared_counters,
    "expansion 1 MB → 400 MB": lambda profile: crafted.shared_counters(profile, records=20000, counters=2500),
}


class StatusProbe(threading.Thread):
    """GetStatus back to back: the latency a user's `pgoctl status` sees."""

    def __init__(self, daemon: MeasuredDaemon) -> None:
        super().__init__(name="status-probe", daemon=True)
        self.daemon_under_test = daemon
        self.latencies: list[float] = []
        self.failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            began = time.monotonic()
            try:
                self.daemon_under_test.status(timeout=30)
            except Exception:
                self.failures += 1
            self.latencies.append(time.monotonic() - began)
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(60)


def run_scenario(tmp: Path, bus: PrivateBus, build: Path, seeds: list[Path], name: str, bad: bytes) -> dict:
    root = tmp / f"scenario-{len(list(tmp.glob('scenario-*')))}"
    (root / "spool").mkdir(parents=True)
    config = ingest_config(root / "pgod.toml", root, {"bench": build})
    daemon = MeasuredDaemon(bus, config, root, root / "pgod.log")
    try:
        daemon.wait_on_bus()
        probe = StatusProbe(daemon)
        probe.start()
        began = time.monotonic()
        half = len(seeds) // 2
        for index, seed in enumerate(seeds[:half] + [None] + seeds[half:]):
            target = root / "spool" / f"{index:05d}.profraw"
            staged = root / f"{index:05d}.tmp"
            staged.write_bytes(bad if seed is None else seed.read_bytes())
            staged.rename(target)
        while True:
            document = daemon.status()
            package = document["packages"][0]
            if package["files"] + package["quarantined"] >= len(seeds) + 1:
                break
            daemon.check_alive()
            time.sleep(0.05)
        settled = time.monotonic() - began
        probe.stop()
        merges, _last = daemon.db.merges("bench")
        reasons = daemon.db.quarantine_reasons()
        return {
            "scenario": name,
            "bad_bytes": len(bad),
            "good_files": package["files"],
            "quarantined": reasons,
            "settled_s": settled,
            "commits": merges,
            "rss_peak_mb": daemon.hwm_mb(),
            "status_median_ms": 1000 * statistics.median(probe.latencies),
            "status_max_ms": 1000 * max(probe.latencies),
            "status_calls": len(probe.latencies),
            "status_failures": probe.failures,
        }
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--good", type=int, default=200, help="good raw profiles per scenario (default 200)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pgod-hostile-", dir="/tmp"))
    say(f"working in {tmp}; {CLANG.name}, {PROFDATA.name}")
    build = tmp / "build"
    exe = compile_program(PROGRAM, build, "workload")
    seeds = seed_profiles(exe, tmp / "seeds", args.good, lambda i: [str(i * 7 + 1), "word" * (1 + i % 3)])
    sample = seeds[0].read_bytes()
    bus = PrivateBus(tmp, log=tmp / "dbus-daemon.log")
    rows = []
    try:
        for name, craft in SCENARIOS.items():
            say(f"scenario: {name}")
            rows.append(run_scenario(tmp, bus, build, seeds, name, craft(sample)))
    finally:
        bus.close()
    print(f"\npgod hostile-input benchmark: {args.good} good files + 1 crafted file per scenario, one run")
    header = f"{'scenario':26} {'bad file':>9} {'counted':>7} {'quarantined as':22} {'settled':>8} {'commits':>7} {'peak RSS':>9} {'status median / max':>20} {'calls':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['scenario']:26} {row['bad_bytes']:>9} {row['good_files']:>7} {', '.join(row['quarantined']) or '-':22} "
            f"{row['settled_s']:>7.2f}s {row['commits']:>7} {row['rss_peak_mb']:>7.1f}MB "
            f"{row['status_median_ms']:>9.1f} / {row['status_max_ms']:>6.1f} ms {row['status_calls']:>6}"
            + (f"  ({row['status_failures']} status calls failed)" if row["status_failures"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
