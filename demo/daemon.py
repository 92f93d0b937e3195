"""Step c: pgod's config for lua, a private dbus-daemon and the installed pgod on it, run with
the shared pieces of `testbed` (config writer, bus, process start and stop).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from demo.common import BIN, GATE_ROUNDS, MIN_SPEEDUP, PACKAGE, DemoError, Layout
from demo.nixbuild import benchmark_argv, cs_build_argv, optimized_build_argv, workload_in_store
from demo.sources import Source
from testbed.bus import PrivateBus
from testbed.config import write_config as write_toml
from testbed.daemon import pgod_argv, spawn_logged, stop_process


def write_config(layout: Layout, source: Source, profiling: str, plain: str, threshold_mb: float,
                 cs_threshold_mb: float | None = None) -> Path:
    top = {
        "spool_dir": layout.spool,
        "state_dir": layout.state,
        "profile_link": layout.profile,
        "threshold_mb": threshold_mb,
        "activation": "auto",
        # The Lua service (demo/service.py) dumps every 5 s; pgod reads live runs as often.
        "live_interval_s": 5,
        # The training never pauses, so the machine is never idle: a build here must not wait
        # for an idle CPU (pgod's default, build_idle_cpu_percent 25, would hold it until the
        # training stops). The profile's maturity keeps pgod's defaults: status and the report
        # show it settling.
        "build_idle_cpu_percent": 100,
    }
    package = {
        "profile_build": [profiling],
        "build": optimized_build_argv(layout, source),
        # The context-sensitive stage: at the threshold pgod builds csProfiling from the first
        # stage's IR profile and puts it in use (profile_link/bin/lua) for the second stage.
        "cs_build": cs_build_argv(layout, source),
        "cs_threshold_mb": cs_threshold_mb if cs_threshold_mb is not None else threshold_mb,
        # The gate: the final candidate must run the workload at least as fast as plain -O2.
        "benchmark": benchmark_argv(workload_in_store()),
        "baseline_build": plain,
        "min_speedup": MIN_SPEEDUP,
        "benchmark_rounds": GATE_ROUNDS,
        "benchmark_timeout_s": 120,
    }
    return write_toml(layout.config, top, {PACKAGE: package})


class Bus(PrivateBus):
    """A private dbus-daemon of the session type, its socket under demo-state/run."""

    def __init__(self, layout: Layout) -> None:
        try:
            super().__init__(layout.run, log=layout.run / "dbus-daemon.log",  # e.g. "Failed to set fd limit"
                             pidfile=layout.run / "dbus-daemon.pid", new_session=True)
        except RuntimeError:
            raise DemoError("dbus-daemon did not start") from None


class Daemon:
    """The installed pgod, on the private bus, logging JSON lines to demo-state/pgod.log."""

    def __init__(self, layout: Layout, bus: Bus) -> None:
        self.layout = layout
        self.bus = bus
        self.process: subprocess.Popen | None = None
        self.training_exits: list[float] = []  # when each instrumented run ended (its profile written)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.bus.address}

    def start(self, timeout: float = 30.0) -> Daemon:
        argv = pgod_argv(self.layout.config, "session", "info", bin_dir=BIN)
        self.process = spawn_logged(argv, self.layout.log, self.env(), start_new_session=True)
        (self.layout.run / "pgod.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while self.pgoctl("status", "--json", check=False).returncode != 0:
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"pgod did not answer on the bus within {timeout:.0f} s")
            time.sleep(0.2)
        return self

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"pgod exited with status {self.process.returncode}")

    def pgoctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "pgoctl"), "--bus", "session", *args], check=False,
                              capture_output=True, text=True, env=self.env(), timeout=120)
        if check and done.returncode != 0:
            raise DemoError(f"pgoctl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def status(self) -> dict:
        return json.loads(self.pgoctl("status", "--json").stdout)

    def package(self) -> dict:
        return next(p for p in self.status()["packages"] if p["name"] == PACKAGE)

    def show(self) -> dict:
        return json.loads(self.pgoctl("show", PACKAGE, "--json").stdout)

    def events(self) -> list[dict]:
        """pgod's log, the JSON lines of it (other lines, e.g. from libraries, are skipped)."""
        events = []
        for line in self.layout.log.read_text(errors="replace").splitlines() if self.layout.log.exists() else ():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def log_tail(self, lines: int = 25) -> str:
        text = self.layout.log.read_text(errors="replace") if self.layout.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a minute; its exit status (-9 when killed, None if never started)."""
        return stop_process(self.process, timeout=60)
