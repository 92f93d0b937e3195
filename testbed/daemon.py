"""The real pgod as a process on a private bus: the tests' `Daemon`, and the pieces the demo and
the benchmarks start and stop their own pgod with.

Nothing here fakes a part of pgod: the daemon is the installed `pgod` entry point started as a
process, and status is read through the real `pgoctl` over the real bus. The bus is one of
`testbed.bus`; the config is written by `testbed.config`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed.bus import PrivateBus, SystemLikeBus

#: The folder of the running Python's programs: the venv's `pgod`, `pgoctl` and `python`.
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], object], timeout: float, message: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # a definite failure (e.g. the daemon exited): no point waiting
        except Exception as err:  # the thing polled may not exist yet
            last_error = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}" + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def pgod_argv(config: Path, bus_kind: str, log_level: str | None = None, bin_dir: Path = BIN) -> list[str]:
    """The command line of the installed pgod on ``bus_kind`` ("session" or "system")."""
    argv = [str(bin_dir / "pgod"), "--config", str(config), "--bus", bus_kind]
    return argv + ["--log-level", log_level] if log_level else argv


def spawn_logged(argv: list[str], log_path: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    """Start ``argv`` with its stdout and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, **popen)


def stop_process(process: subprocess.Popen | None, timeout: float = 30) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status (-9 when killed)."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            return -9
    return process.returncode


@dataclass
class Daemon:
    """One pgod process at a time for a test, restartable."""

    config: Path
    bus: PrivateBus | SystemLikeBus
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    #: A command the daemon runs under, e.g. setpriv with the unit's capability set.
    prefix: list[str] = field(default_factory=list)

    @property
    def bus_kind(self) -> str:
        return "system" if isinstance(self.bus, SystemLikeBus) else "session"

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.bus.env(), **self.extra_env}

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> "Daemon":
        argv = [*self.prefix, *pgod_argv(self.config, self.bus_kind, "debug")]
        self.process = spawn_logged(argv, self.log_path, {**self.env(), **(env or {})})
        if wait:
            wait_for(self._answers, 30, "pgod did not come up on the bus")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgod exited with {self.process.returncode}:\n{self.log()}")
        answer = self.pgoctl("status", "--json", check=False)
        # Answering, and its start-up (recovery, upgrades, the first scan) over.
        return answer.returncode == 0 and not json.loads(answer.stdout)["daemon"]["starting"]

    def pgoctl_argv(self) -> list[str]:
        return [str(BIN / "pgoctl"), "--bus", self.bus_kind]

    def pgoctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.pgoctl_argv(), *args], capture_output=True, text=True, env=self.env(), timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"pgoctl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.pgoctl("status", "--json").stdout)

    def package(self, name: str) -> dict:
        return next(p for p in self.status()["packages"] if p["name"] == name)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        return self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
