"""The benchmark gate: is the optimized candidate faster than the baseline on the user's benchmark?

A profile from an unrepresentative workload, or a compiler regression, gives a build that is
slower than the package as nixpkgs builds it; without a measurement pgod would put it in use all
the same. The gate runs the package's `benchmark` argv (`{bin}` is the store path of the build
under test) on the baseline and on the candidate, interleaved round by round with the order
alternating (so drift on a busy machine falls on both alike), at low CPU priority, each run with
a timeout, and compares medians. The first round's standard outputs must be equal: a candidate
that computes something else is not faster, it is wrong.

The gate runs in a thread of its own, as a build does, and reports back through a callback.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pgod.confine import Identity, as_identity
from pgod.osthread import name_os_thread

BIN_PLACEHOLDER = "{bin}"
OUTPUT_DIGEST_BYTES = 64 << 20  # the stdout hashed per run; the rest is drained unread
STDERR_TAIL = 2000
NICENESS = 10  # as merges: the user's own work comes first
POLL_SECONDS = 0.25  # how often the reader looks at the clock while the pipes are quiet
PIPES_GRACE_SECONDS = 1.0  # output still read after the benchmark exited


@dataclass(frozen=True)
class GateResult:
    """What the benchmark measured, recorded with the build. `speedup` is baseline median /
    candidate median (1.18: the candidate takes 1/1.18 of the time); None when it failed."""

    package: str
    build_id: int
    speedup: float | None
    baseline_seconds: list[float]
    candidate_seconds: list[float]
    min_speedup: float
    seconds: float  # what the gate itself took
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None and self.speedup is not None and self.speedup >= self.min_speedup

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "failed"
        return "accepted" if self.accepted else "rejected"

    def figures(self) -> dict:
        """The record kept with the build and shown in status: medians, spread, rounds."""
        document = asdict(self)
        del document["package"], document["build_id"]
        for side in ("baseline", "candidate"):
            runs = getattr(self, f"{side}_seconds")
            document[f"{side}_median_seconds"] = round(statistics.median(runs), 6) if runs else None
            # The spread, relative to the median: how far apart the slowest and fastest run were.
            document[f"{side}_spread"] = (
                round((max(runs) - min(runs)) / statistics.median(runs), 4) if runs and statistics.median(runs) > 0 else None
            )
        document["rounds"] = min(len(self.baseline_seconds), len(self.candidate_seconds))
        document["verdict"] = self.verdict
        document["seconds"] = round(self.seconds, 2)
        if self.speedup is not None:
            document["speedup"] = round(self.speedup, 4)
        return document


class BenchmarkFailed(Exception):
    """One run did not finish well; the message says which and why."""


def expand_benchmark(argv: Sequence[str], store_path: str) -> list[str]:
    return [arg.replace(BIN_PLACEHOLDER, store_path) for arg in argv]


def run_once(argv: Sequence[str], timeout: float, identity: Identity | None,
             started: Callable[[int | None], None] = lambda _pid: None) -> tuple[float, str]:
    """Run the benchmark once: its wall-clock seconds (start to the process's exit) and the
    SHA-256 of its stdout. ``started`` gets the process (group) id while it runs, then None.

    Nothing it does can hold the gate: reading stops at the timeout, and soon after the process
    exits even if a child it left keeps the pipes open; its process group is killed after every
    run, before the process is reaped (so the group's id cannot have been reused)."""
    command = list(argv)
    digest = hashlib.sha256()
    begun = time.perf_counter()
    try:
        process = subprocess.Popen(
            command, **as_identity(identity), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0, close_fds=True,
            # Nothing the candidate runs may write profiles into the spool, or be counted.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LLVM_PROFILE_FILE": "/dev/null"},
        )
    except OSError as err:
        raise BenchmarkFailed(f"cannot run {argv[0]}: {err.strerror}") from None
    started(process.pid)
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, NICENESS)
    except OSError:
        pass  # it may already have ended
    exit_time: list[float] = []
    exited = threading.Event()

    def wait_for_exit() -> None:  # WNOWAIT: seen, not reaped, so its group id stays its own
        try:
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        finally:
            exit_time.append(time.perf_counter())
            exited.set()

    waiter = threading.Thread(target=wait_for_exit, daemon=True)
    waiter.start()
    stderr_tail = bytearray()
    read = 0
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            selector.register(process.stderr, selectors.EVENT_READ)
            while True:
                now = time.perf_counter()
                if now - begun >= timeout:
                    timed_out = True
                    break
                if exited.is_set() and (not selector.get_map() or now - exit_time[0] >= PIPES_GRACE_SECONDS):
                    break  # exited; what may still hold its pipes is a child it left behind
                if not selector.get_map():
                    exited.wait(min(POLL_SECONDS, timeout - (now - begun)))
                    continue
                for key, _ in selector.select(POLL_SECONDS):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is process.stdout:
                        if read < OUTPUT_DIGEST_BYTES:
                            digest.update(chunk[: OUTPUT_DIGEST_BYTES - read])
                        read += len(chunk)
                    else:
                        stderr_tail.extend(chunk)
                        del stderr_tail[:-STDERR_TAIL]
    finally:
        _kill_group(process.pid)  # before the reaping: the group's id is still this process's
        exited.wait()
        process.stdout.close()
        process.stderr.close()
        returncode = process.wait()
        started(None)
    if timed_out:
        raise BenchmarkFailed(f"{' '.join(argv)} did not finish within {timeout:g} s")
    if returncode != 0:
        tail = stderr_tail.decode("utf-8", "replace").strip().splitlines()
        raise BenchmarkFailed(f"{' '.join(argv)} exited {returncode}" + (f": {tail[-1][:300]}" if tail else ""))
    return exit_time[0] - begun, digest.hexdigest()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def measure(
    argv: Sequence[str], baseline: str, candidate: str, rounds: int, timeout: float, identity: Identity | None,
    on_round: Callable[[int], None] = lambda _round: None, started: Callable[[int], None] = lambda _pid: None,
) -> tuple[list[float], list[float]]:
    """Interleaved rounds: baseline then candidate, then candidate then baseline, and so on.
    Raises BenchmarkFailed for a failed run or outputs that differ."""
    times: dict[str, list[float]] = {"baseline": [], "candidate": []}
    paths = {"baseline": baseline, "candidate": candidate}
    outputs: dict[str, str] = {}
    for round_index in range(rounds):
        order = ("baseline", "candidate") if round_index % 2 == 0 else ("candidate", "baseline")
        for side in order:
            seconds, digest = run_once(expand_benchmark(argv, paths[side]), timeout, identity, started)
            times[side].append(seconds)
            outputs.setdefault(side, digest)
        if round_index == 0 and outputs["baseline"] != outputs["candidate"]:
            raise BenchmarkFailed(
                "the candidate's output differs from the baseline's on the benchmark: it computes something else"
            )
        on_round(round_index + 1)
    return times["baseline"], times["candidate"]


class GateRun:
    """One benchmark gate in its own thread; `rounds_done` feeds the status while it runs."""

    def __init__(self, package, build_id: int, candidate: str, identity: Identity | None,
                 on_done: Callable[[GateResult], None]) -> None:
        self.package = package  # PackageConfig
        self.build_id = build_id
        self.candidate = candidate
        self.identity = identity
        self.started = time.time()
        self.rounds_done = 0
        self._on_done = on_done
        self._pid: int | None = None  # the run going on now
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"pgod-gate-{package.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """The daemon stops: end the run going on (the build is redone after a restart)."""
        self._cancelled = True
        if self._pid is not None:
            _kill_group(self._pid)

    def _started(self, pid: int | None) -> None:
        self._pid = pid
        if self._cancelled and pid is not None:
            _kill_group(pid)

    def _run(self) -> None:
        name_os_thread()
        package = self.package
        begun = time.monotonic()
        baseline: list[float] = []
        candidate: list[float] = []
        error = None
        try:
            if not Path(package.baseline_build).exists():
                raise BenchmarkFailed(f"baseline_build {package.baseline_build} does not exist")
            baseline, candidate = measure(
                package.benchmark, str(package.baseline_build), self.candidate, package.benchmark_rounds,
                package.benchmark_timeout_seconds, self.identity, on_round=self._round_done, started=self._started,
            )
        except BenchmarkFailed as err:
            error = str(err)
        except Exception as err:  # noqa: BLE001 - the engine must hear back, or no build starts again
            error = f"{type(err).__name__}: {err}"
        speedup = None
        if error is None and min(candidate) > 0:
            speedup = statistics.median(baseline) / statistics.median(candidate)
        self._on_done(GateResult(package.name, self.build_id, speedup, baseline, candidate, package.min_speedup,
                                 time.monotonic() - begun, error))

    def _round_done(self, rounds: int) -> None:
        self.rounds_done = rounds
