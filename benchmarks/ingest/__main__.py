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
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import ingest_config, say
from benchmarks.ingest.files import LARGE_FUNCTIONS, SMALL_C, baseline_cpu, large_c, make_copies
from benchmarks.ingest.report import render
from benchmarks.ingest.scenarios import (
    LARGE_PACKAGE,
    SMALL_PACKAGE,
    TARGETS,
    backlog_scenario,
    idle_scenario,
    ingest_scenario,
)
from testbed.bus import PrivateBus
from testbed.daemon import BIN
from testbed.measured import MeasuredDaemon
from testbed.programs import CLANG, PROFDATA, compile_program, seed_profiles

FULL = {"small": 2000, "large": 300, "backlog": 20000, "idle": 60.0, "trickle": 200}
QUICK = {"small": 200, "large": 30, "backlog": 2000, "idle": 5.0, "trickle": 40}
TRICKLE_RATE = 20.0  # files/s in the trickle scenario: programs exiting one after another


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
        MeasuredDaemon.extra_env = {"PYTHONPATH": str(args.pgod_source.resolve())}
    daemon_pgod = subprocess.run(
        [str(BIN / "python"), "-c", "import pgod; print(pgod.__file__)"],
        env={**os.environ, **MeasuredDaemon.extra_env}, cwd="/", capture_output=True, text=True, check=True,
    ).stdout.strip()

    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pgod-bench-", dir="/tmp"))
    bus: PrivateBus | None = None
    daemon: MeasuredDaemon | None = None
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

        bus = PrivateBus(tmp, log=tmp / "dbus-daemon.log")  # its fd-limit warning is noise here
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
        config_a = ingest_config(root_a / "pgod.toml", root_a, {SMALL_PACKAGE: small_dir / "bin", LARGE_PACKAGE: large_dir / "bin"})
        say("starting pgod (daemon A)")
        daemon = MeasuredDaemon(bus, config_a, root_a, root_a / "pgod.log")
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
