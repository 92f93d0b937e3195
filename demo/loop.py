"""Steps a-e as one context manager: sources, Nix builds, bus and pgod, training through both
stages until pgod's final build is active, then status; pgod and the bus stopped whatever happens.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.common import (
    BUILD_TIMEOUT,
    DEFAULT_THRESHOLD_MB,
    MIN_SPEEDUP,
    PACKAGE,
    ROOT,
    DemoError,
    Layout,
    Steps,
    indent,
    say,
)
from demo.daemon import Bus, Daemon, write_config
from demo.manual import start_manual_instrumented
from demo.nixbuild import nix_build
from demo.service import ITEMS_PER_ROUND, LuaService
from demo.sources import Source, fetch_sources
from demo.training import (
    Trainer,
    Training,
    check_active,
    final_active,
    final_started,
    gate_text,
    in_cs_stage,
    workload_scripts,
)


@dataclass
class Loop:
    layout: Layout
    source: Source
    profiling: str
    daemon: Daemon
    package: dict  # status of lua once active
    scripts: list[Path]
    plain: str  # the plain -O2 build (the gate's baseline)
    training: Training
    manual_running: dict | None = None  # manual instrumented compiles started with the loop

    @property
    def plain_lua(self) -> Path:
        return Path(self.plain) / "bin" / "lua"

    @property
    def optimized_lua(self) -> Path:
        return self.layout.active_lua()


@contextlib.contextmanager
def closed_loop(layout: Layout, steps: Steps, threshold_mb: float = DEFAULT_THRESHOLD_MB,
                manual: tuple[str, ...] = ()) -> Iterator[Loop]:
    """Steps a–e; yields with pgod still running, then stops pgod and the bus whatever happened."""
    scripts = workload_scripts()
    with steps("Lua sources: the interpreter shipped inside the lupa sdist on PyPI"):
        source = fetch_sources(layout)
    with steps("nix-build the instrumented (profiling, IR) Lua and plain -O2 Lua (the gate's baseline)"):
        profiling = nix_build("profiling", layout, source)
        plain_out = nix_build("plain", layout, source)
    bus = daemon = service = None
    failed = False
    manual_running = None
    try:
        with steps("start a private dbus-daemon and pgod"):
            bus = Bus(layout)
            say(f"    dbus-daemon --session at {bus.address}")
            write_config(layout, source, profiling, plain_out, threshold_mb)
            say(f"    config {layout.config.relative_to(ROOT)}: activation auto, threshold {threshold_mb:g} MB"
                f" per stage, two stages (IR, then context-sensitive), gate: the workload on plain -O2 vs the candidate,"
                f" min_speedup {MIN_SPEEDUP:g}, profile link {layout.profile.relative_to(ROOT)}")
            daemon = Daemon(layout, bus).start()
            say(f"    pgod (pid {daemon.process.pid}) answers on the bus; log {layout.log.relative_to(ROOT)}")
            if manual:
                manual_running = start_manual_instrumented(layout, source, manual)
        trainer = Trainer(daemon, profiling, scripts)
        with steps("start a Lua service beside them: demo/service.lua on the profiling Lua, serving work items"
                   " fed on its stdin, never exiting; it reports its counts while it runs (the live object)"):
            service = trainer.service = LuaService(trainer.profiling, trainer.env)
            say(f"    pid {service.process.pid}: {ITEMS_PER_ROUND} items each round; 'live:' below is what pgod has"
                " counted of the running programs so far")
        with steps(f"train, first stage: the IR-instrumented Lua over demo/workload/*.lua ({len(scripts)} scripts);"
                   " at the threshold pgod builds the context-sensitive stage and puts it in use"):
            trainer.until(in_cs_stage(trainer), "the context-sensitive stage in use")
            trainer.service = None
            code = service.stop()
            say(f"    the Lua service ({service.served} items served) stopped with SIGTERM (exit {code}), as"
                " `systemctl stop` would: no exit write; what it reported while it ran was counted, once")
            say(f"    in use: {layout.active_lua().relative_to(ROOT)} -> {os.path.realpath(layout.active_lua())}"
                " (IR-optimized, CS-instrumented)")
        with steps("train, context-sensitive stage: the same scripts on the build in use, until pgod's final build"):
            trainer.until(final_started, "the final build started")
        with steps("pgod builds the final Lua (IR + CS profile), gates it on the workload against plain -O2, activates it;"
                   " the training goes on meanwhile"):
            package = trainer.until(final_active, "the final build active", BUILD_TIMEOUT)
            check_active(layout, package)
            say(f"    active: {layout.active_lua().relative_to(ROOT)} -> {os.path.realpath(layout.active_lua())}")
            say(f"    gate (status benchmark): {gate_text(package.get('benchmark'))}")
        with steps("pgoctl --bus session status; pgoctl --bus session show lua"):
            say(indent(daemon.pgoctl("status").stdout))
            say("")
            say(indent(daemon.pgoctl("show", PACKAGE).stdout))
        yield Loop(layout, source, profiling, daemon, package, scripts, plain_out, trainer.done, manual_running)
    except BaseException:
        failed = True
        if daemon is not None:
            say("\n--- tail of pgod's log " + "-" * 40)
            say(indent(daemon.log_tail()))
        raise
    finally:
        if service is not None:
            service.stop()
        for _out, _begun, process in (manual_running or {}).values():
            if process.poll() is None and failed:
                process.kill()
                process.wait()
        code = daemon.stop() if daemon is not None else None
        if bus is not None:
            bus.close()
        if daemon is not None:
            say(f"\n    pgod stopped (SIGTERM, exit {code}); dbus-daemon stopped")
        if code not in (0, None) and not failed:
            raise DemoError(f"pgod exited {code} on SIGTERM, not 0")
