"""Fairness benchmark: another user's latency and the daemon's memory during one user's flood.

One run, the real daemon on a private bus, as the issue measured it: uid nobody floods the spool
with valid small raw profiles at 3,000 files/s (`--rate`; 0: as fast as it can) and, in a
second phase, churns names (creates and deletes them) while another user (uid 4321) runs an instrumented program every 2 s. Printed:
the time from each of that user's program exits until its profile is counted (the package's
contributions for its uid grow), GetStatus latency from a third connection, the daemon's peak
RSS, and how many files the flood wrote and pgod took in. Targets (from issue 11): counted within
3 s, status within 1 s, RSS under 150 MB with a million names churned.

    python -m benchmarks.fairness [--seconds 30] [--churn 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.hostile import PROGRAM, StatusProbe
from benchmarks.ingest import Daemon, PrivateBus, compile_program, say, seed_profiles, write_config
from floods import CHURN, FLOOD  # noqa: E402  (tests/floods.py, on the path benchmarks.hostile set)

OTHER_UID = 4321
TRAVERSE = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TRAVERSE]
AS_OTHER = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *TRAVERSE]




def contributions(daemon: Daemon) -> dict[int, int]:
    document = json.loads(daemon._proxy.GetPackage("bench"))
    return {share["uid"]: share["files"] for share in document["contributions"]}


def other_user_latencies(daemon: Daemon, exe: Path, spool: Path, stop: threading.Event, out: list[float]) -> None:
    runs = 0
    while not stop.is_set():
        subprocess.run([*AS_OTHER, str(exe), str(runs), "other"], check=True, stdout=subprocess.DEVNULL,
                       env={"LLVM_PROFILE_FILE": f"{spool}/%p.profraw", "PATH": "/usr/bin:/bin"})
        exited = time.monotonic()
        runs += 1
        while contributions(daemon).get(OTHER_UID, 0) < runs:
            if time.monotonic() - exited > 120:
                out.append(float("inf"))
                return
            time.sleep(0.05)
        out.append(time.monotonic() - exited)
        stop.wait(2.0)


def phase(daemon: Daemon, exe: Path, spool: Path, writer: list[str], stdin: bytes | None) -> dict:
    probe = StatusProbe(daemon)
    stop = threading.Event()
    latencies: list[float] = []
    other = threading.Thread(target=other_user_latencies, args=(daemon, exe, spool, stop, latencies), daemon=True)
    peak = 0.0
    probe.start()
    other.start()
    began = time.monotonic()
    flood = subprocess.Popen(writer, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
    flood.stdin.write(stdin or b"")
    flood.stdin.close()
    while flood.poll() is None:
        peak = max(peak, daemon.rss_mb())
        time.sleep(0.2)
    written = flood.stdout.read().decode().strip()
    seconds = time.monotonic() - began
    stop.set()
    other.join(180)
    probe.stop()
    return {
        "seconds": round(seconds, 1),
        "written": written,
        "other_counted_s": latencies,
        "status_median_s": statistics.median(probe.latencies) if probe.latencies else None,
        "status_max_s": max(probe.latencies) if probe.latencies else None,
        "peak_rss_mb": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the flood lasts")
    parser.add_argument("--rate", type=float, default=3000.0, help="flood files a second (0: as fast as it can)")
    parser.add_argument("--churn", type=int, default=1_000_000, help="names created and deleted in the second phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgod-fairness-") as scratch:
        tmp = Path(scratch)
        os.chmod(tmp, 0o755)
        build = tmp / "build"
        exe = compile_program(PROGRAM, build, "bench")
        os.chmod(exe, 0o755)
        sample = seed_profiles(exe, tmp / "seeds", 1, lambda i: ["7", "abc"])[0].read_bytes()
        root = tmp / "root"
        (root / "spool").mkdir(parents=True)
        os.chmod(root, 0o755)
        os.chmod(root / "spool", 0o1777)
        (tmp / "bus").mkdir()
        bus = PrivateBus(tmp / "bus")
        daemon = Daemon(bus, write_config(root / "pgod.toml", root, {"bench": build}), root, root / "pgod.log")
        try:
            daemon.wait_on_bus()
            rate = f"{args.rate:g} files/s" if args.rate else "as fast as it can"
            say(f"phase 1: uid nobody floods the spool for {args.seconds:g} s at {rate}; uid {OTHER_UID} runs its program every 2 s")
            flood = phase(daemon, exe, root / "spool",
                          [*AS_NOBODY, sys.executable, "-c", FLOOD, str(root / "spool"), str(args.seconds), str(args.rate)], sample)
            say(f"phase 2: uid nobody creates and deletes {args.churn:,} names")
            churn = phase(daemon, exe, root / "spool",
                          [*AS_NOBODY, sys.executable, "-c", CHURN, str(root / "spool"), str(args.churn)], None)
        finally:
            daemon.stop()
            bus.close()
    for name, result in (("flood", flood), ("churn", churn)):
        counted = [s for s in result["other_counted_s"] if s != float("inf")]
        print(
            f"{name:5}: {result['seconds']} s, written {result['written'] or '-'}; other user's profile counted after "
            f"median {statistics.median(counted) if counted else float('nan'):.2f} s, max {max(result['other_counted_s'], default=float('nan')):.2f} s "
            f"(target ≤ 3 s, {len(result['other_counted_s'])} runs); status median {result['status_median_s']:.3f} s, "
            f"max {result['status_max_s']:.3f} s (target ≤ 1 s); peak RSS {result['peak_rss_mb']} MB (target < 150 MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
