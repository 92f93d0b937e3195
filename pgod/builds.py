"""Run one optimized rebuild: the package's `build` argv, its log kept, its output path read.

The build runs in a thread of its own so merging goes on meanwhile; the thread touches no
state, it only reports its result back through a callback (which enqueues to the engine).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .osthread import name_os_thread

PROFILE_PLACEHOLDER = "{profile}"


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


class BuildRun:
    """One running build; `last_line` and `started` feed the status while it runs."""

    def __init__(
        self,
        package: str,
        build_id: int,
        argv: list[str],
        log_path: Path,
        on_done: Callable[[BuildResult], None],
    ) -> None:
        self.package = package
        self.build_id = build_id
        self.argv = argv
        self.log_path = log_path
        self.started = time.time()
        self._on_done = on_done
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name=f"pgod-build-{package}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    @property
    def last_line(self) -> str:
        """The last non-empty line of the build log, for progress in status."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
                tail = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def _run(self) -> None:
        name_os_thread()
        started = time.monotonic()
        stdout = ""
        error = None
        returncode = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as log:
            log.write(f"$ {' '.join(self.argv)}\n")
            log.flush()
            try:
                # stderr (the build's chatter) goes straight to the log; stdout is kept apart
                # because its last line is the output path, as nix-build prints it.
                self._process = subprocess.Popen(
                    self.argv,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    errors="replace",
                    env={**os.environ, "LLVM_PROFILE_FILE": "/dev/null"},
                )
            except OSError as err:
                error = f"cannot run {self.argv[0]}: {err.strerror}"
            else:
                stdout = self._process.stdout.read()
                returncode = self._process.wait()
                log.write(stdout)
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
