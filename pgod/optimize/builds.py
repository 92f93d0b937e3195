"""Run one optimized rebuild: the package's `build` argv, its log kept, its output path read.

The build runs in a thread of its own so merging goes on meanwhile; the thread touches no
state, it only reports its result back through a callback (which enqueues to the engine).
When the command is Nix's (`nix-build …`, `nix … build …`) and that Nix has a machine-readable
log, it is asked for one (`--log-format internal-json -v`): its stderr is read into a progress
model (build_progress.py) and written to the log as the plain text Nix would have printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgod.optimize.build_progress import BuildProgress, bounded_lines
from pgod.optimize.priority import BuildPriority
from pgod.osthread import name_os_thread

PROFILE_PLACEHOLDER = "{profile}"
NIX_LOG_FLAGS = ("--log-format", "internal-json", "-v")
PROGRESS_INTERVAL_SECONDS = 0.25  # progress is reported at most this often (4 a second)
STDOUT_KEPT_BYTES = 64 * 1024  # of the build's stdout, only the end is kept: its last line is the result
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class BuildProgressed:
    """A running build said something new (posted at most every PROGRESS_INTERVAL_SECONDS)."""

    package: str
    build_id: int


@dataclass(frozen=True)
class BuildResult:
    package: str
    build_id: int
    ok: bool
    out_path: str | None
    error: str | None
    seconds: float


def expand_argv(argv: tuple[str, ...], profile_store_path: str) -> list[str]:
    """The build command with `{profile}` replaced, wherever it appears in an argument."""
    return [arg.replace(PROFILE_PLACEHOLDER, profile_store_path) for arg in argv]


def last_store_path(output: str) -> str | None:
    """The last line of a build's stdout that is an absolute path, as nix-build prints its result."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("/"):
            return line
    return None


def is_nix_build(argv: list[str]) -> bool:
    """Is this command a Nix build whose log format pgod may choose? `nix-build …`, or
    `nix … build …`; not when the command already picks a `--log-format` itself."""
    if not argv or "--log-format" in argv:
        return False
    program = os.path.basename(argv[0])
    return program == "nix-build" or program == "nix" and "build" in argv[1:]


_nix_log_support: dict[str, bool] = {}
_support_lock = threading.Lock()


def supports_internal_json(program: str) -> bool:
    """Does this Nix take `--log-format internal-json`? Asked once per program (Nix refuses a
    log format it does not know before it looks at `--version`)."""
    key = shutil.which(program) or program
    with _support_lock:
        if key not in _nix_log_support:
            try:
                probe = subprocess.run(
                    [program, "--log-format", "internal-json", "--version"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                )
                _nix_log_support[key] = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _nix_log_support[key] = False
        return _nix_log_support[key]


def with_nix_log(argv: list[str]) -> list[str]:
    """The build command, asking Nix for its machine-readable log where it can give one."""
    if is_nix_build(argv) and supports_internal_json(argv[0]):
        return [argv[0], *NIX_LOG_FLAGS, *argv[1:]]
    return list(argv)


class Throttle:
    """Calls ``fire`` at most once per ``interval`` seconds. A poke within the interval is not
    lost: it fires once at the interval's end, so the last state is always reported."""

    def __init__(self, interval: float, fire: Callable[[], None]) -> None:
        self._interval = interval
        self._fire = fire
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    def poke(self) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._deferred)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self._fire()

    def _deferred(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            self._last = time.monotonic()
        self._fire()

    def close(self) -> None:
        """No more calls after this one returns (a deferred one is dropped)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class BuildRun:
    """One running build; `progress()`, `last_line` and `started` feed the status while it runs."""

    def __init__(
        self,
        package: str,
        build_id: int,
        argv: list[str],
        log_path: Path,
        on_done: Callable[[BuildResult], None],
        on_progress: Callable[[BuildProgressed], None] = lambda _event: None,
    ) -> None:
        self.package = package
        self.build_id = build_id
        self.argv = argv
        self.log_path = log_path
        self.started = time.time()
        self._on_done = on_done
        self._process: subprocess.Popen | None = None
        self._progress = BuildProgress()
        self._progress_lock = threading.Lock()  # the build thread feeds it, status readers copy it
        self._throttle = Throttle(PROGRESS_INTERVAL_SECONDS, lambda: on_progress(BuildProgressed(package, build_id)))
        self._thread = threading.Thread(target=self._run, name=f"pgod-build-{package}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    @property
    def last_line(self) -> str:
        """The last non-empty line of the build log, for progress in status."""
        with self._progress_lock:
            return self._progress.last_line

    def progress(self) -> dict:
        """What the build reports of itself now (build_progress.BuildProgress.snapshot)."""
        with self._progress_lock:
            return self._progress.snapshot()

    def _run(self) -> None:
        name_os_thread()
        started = time.monotonic()
        stdout = ""
        error = None
        returncode = None
        argv = with_nix_log(self.argv)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            priority = BuildPriority(self.package, self.build_id)  # nice 19, SCHED_IDLE, I/O idle
            try:
                # stderr (the build's chatter, or Nix's JSON events) is read line by line into
                # the progress and the log; stdout is kept apart because its last line is the
                # output path, as nix-build prints it.
                self._process = priority.popen(
                    subprocess.Popen,
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "LLVM_PROFILE_FILE": "/dev/null"},
                )
            except OSError as err:
                error = f"cannot run {self.argv[0]}: {err.strerror}"
            else:
                kept = bytearray()
                reader = threading.Thread(
                    target=_keep_end, args=(self._process.stdout, kept), name=f"pgod-build-out-{self.package}", daemon=True
                )
                reader.start()
                self._read_stderr(self._process.stderr, log)
                reader.join()
                returncode = self._process.wait()
                priority.close()
                self._process.stdout.close()
                self._process.stderr.close()
                stdout = kept.decode("utf-8", "replace")
                log.write(stdout)
        self._throttle.close()
        out_path = last_store_path(stdout) if returncode == 0 else None
        if error is None and returncode != 0:
            error = f"build exited {returncode}: {self.last_line}"
        elif error is None and out_path is None:
            error = "build succeeded but printed no output path"
        elif error is None and not os.path.exists(out_path):
            error = f"build printed {out_path}, which does not exist"
        self._on_done(
            BuildResult(
                self.package, self.build_id, error is None, out_path if error is None else None, error, time.monotonic() - started
            )
        )

    def _read_stderr(self, stream, log) -> None:
        for line in bounded_lines(iter(lambda: os.read(stream.fileno(), READ_CHUNK), b"")):
            with self._progress_lock:
                text = self._progress.feed(line)
            if text is not None:
                log.write(text + "\n")
                log.flush()
            self._throttle.poke()


def _keep_end(stream, kept: bytearray) -> None:
    """Read a stream to its end, keeping only its last STDOUT_KEPT_BYTES."""
    for chunk in iter(lambda: os.read(stream.fileno(), READ_CHUNK), b""):
        kept += chunk
        del kept[:-STDOUT_KEPT_BYTES]
