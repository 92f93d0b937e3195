"""Step d: training, the workload run round after round on whatever build pgod has in use for
lua, watching pgod's status until a condition holds; and the runs of one Lua script.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from demo.common import LIGHT_PAUSE, LIGHT_RUNS, ROOT, TRAIN_TIMEOUT, WORKLOAD_DIR, DemoError, Layout, say
from demo.daemon import Daemon
from demo.service import live_text


def workload_scripts() -> list[Path]:
    scripts = sorted(WORKLOAD_DIR.glob("*.lua"))
    if not scripts:
        raise DemoError(f"no workload scripts in {WORKLOAD_DIR}")
    return scripts


def user_env(**extra: str) -> dict[str, str]:
    """Run programs as a user would: no LLVM_PROFILE_FILE, so the baked-in spool path is used."""
    return {k: v for k, v in os.environ.items() if k != "LLVM_PROFILE_FILE"} | extra


def run_lua(exe: Path | str, script: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """One script: wall seconds, CPU seconds (user+sys of the child), its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begun = time.perf_counter()
    done = subprocess.run([str(exe), script.name], check=False, cwd=script.parent, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - begun
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise DemoError(f"{exe} {script.name} exited {done.returncode}: {done.stderr.strip()[-200:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _mb(n: float) -> str:
    return f"{n / 1048576:.1f} MB"


@dataclass
class Training:
    """What the training runs did: rounds and runs per binary kind, and when each run ended."""

    rounds: dict[str, int]
    runs: dict[str, int]
    before_final: dict[str, int]  # the rounds done when pgod's final build started


def gate_text(figures: dict | None) -> str:
    if not figures:
        return "no measurement"
    if figures.get("verdict") == "failed":
        return f"failed: {figures.get('error')}"
    return (f"{figures['verdict']}, speedup {figures['speedup']:.3f}x (plain {figures['baseline_median_seconds']:.2f} s,"
            f" candidate {figures['candidate_median_seconds']:.2f} s, median of {figures['rounds']},"
            f" spreads {figures['baseline_spread']:.0%}/{figures['candidate_spread']:.0%}; the gate took {figures['seconds']:.1f} s)")


class Trainer:
    """Runs the workload, round after round, on whatever pgod has in use for lua: the profiling
    build in the first stage, then `<profile_link>/bin/lua` (the context-sensitive build) once
    status says it is in use there, until a condition on pgod's status holds. Every change of
    stage, state or gate verdict is printed as it is seen (one `pgoctl status` per round: it
    costs about a second of CPU)."""

    def __init__(self, daemon: Daemon, profiling: str, scripts: list[Path]) -> None:
        self.daemon = daemon
        self.profiling = Path(profiling) / "bin" / "lua"
        self.scripts = scripts
        self.env = user_env()
        self.begun = time.monotonic()
        self.done = Training({}, {}, {})
        self.last: dict = {}
        self.next_script = 0
        self.package: dict = daemon.package()
        self.service = None  # a demo.service.LuaService fed a few items each round, if one runs

    def builds_started(self) -> int:
        return sum(1 for e in self.daemon.events() if e.get("event") == "build.started")

    def in_use(self, package: dict) -> tuple[str, Path]:
        """Which build the users' `lua` is now: ("profiling", path), ("cs-stage", path) or, once
        the final build is active, ("optimized", path)."""
        if package.get("active") and package.get("optimized"):
            return "optimized", self.daemon.layout.active_lua()
        if package.get("in_use") and package.get("stage") == "context-sensitive":
            link = self.daemon.layout.active_lua()
            if os.path.realpath(link).startswith(package["in_use"] + "/"):
                return "cs-stage", link
        return "profiling", self.profiling

    def note(self, package: dict, kind: str) -> None:
        """Print what changed since the last round."""
        last = self.last
        if package.get("stage") != last.get("stage") and last:
            say(f"    -> stage {package.get('stage')} ({package.get('stages')} stages): in use {package.get('in_use')}")
        if kind != last.get("kind") and last:
            shown = self.daemon.layout.active_lua().relative_to(ROOT) if kind != "profiling" else self.profiling
            say(f"    -> {'the training now runs' if kind != 'optimized' else 'now in use'} {kind}: {shown}")
        if package.get("benchmark_running") and not last.get("benchmark_running"):
            run = package["benchmark_running"]
            say(f"    -> gate: benchmarking candidate {run['candidate']} against plain -O2, {run['rounds']} rounds")
        if package["state"] != last.get("state") and package["state"] in ("active", "rejected") and package.get("benchmark"):
            say(f"    -> gate: {gate_text(package.get('benchmark'))}")
        self.last = {"stage": package.get("stage"), "kind": kind, "state": package["state"],
                     "benchmark_running": bool(package.get("benchmark_running"))}

    def until(self, done, what: str, timeout: float = TRAIN_TIMEOUT) -> dict:
        """Train until done(package) is true (checked before each round); returns that status."""
        begun = time.monotonic()
        while True:
            package = self.package = self.daemon.package()
            kind, lua = self.in_use(package)
            self.note(package, kind)
            if package["state"] == "failed":
                raise DemoError(f"pgod's build of lua failed: {package['last_error']}")
            if package["state"] == "rejected":
                raise DemoError(f"the gate refused the optimized build: {package['last_error']}")
            if final_started(package) and not self.done.before_final:
                self.done.before_final = dict(self.done.rounds)
            if done(package):
                return package
            self.daemon.check_alive()
            if time.monotonic() - begun > timeout:
                raise DemoError(f"{what}: not reached after {timeout:.0f} s")
            # While pgod builds or benchmarks, the users' programs go on, lightly: one script
            # every few seconds, so neither the build nor the gate's timing is crowded out.
            light = package["state"] == "building" or bool(package.get("benchmark_running"))
            batch = self.scripts[self.next_script:self.next_script + LIGHT_RUNS] if light else self.scripts
            builds = self.builds_started()
            if self.service is not None:
                self.service.feed()
            for script in batch:
                run_lua(lua, script, self.env)
                self.daemon.training_exits.append(time.time())
                if light:
                    time.sleep(LIGHT_PAUSE)
                elif self.builds_started() != builds:  # pgod's log: free to read, unlike pgoctl
                    batch = batch[:batch.index(script) + 1]
                    break
            self.next_script = (self.next_script + len(batch)) % len(self.scripts) if light else 0
            self.done.runs[kind] = self.done.runs.get(kind, 0) + len(batch)
            self.done.rounds[kind] = self.done.runs[kind] // len(self.scripts)
            share = package["raw_bytes"] / max(package["threshold_bytes"], 1)
            build = package.get("build") or {}
            doing = package["state"]
            if package.get("benchmark_running"):
                doing = f"gate round {package['benchmark_running']['rounds_done']}/{package['benchmark_running']['rounds']}"
            elif build.get("derivation"):
                doing += f" [{build.get('done') or 0}/{build.get('total') or '?'}] {build['derivation']}: {build.get('phase') or '…'}"
            say(f"    {sum(self.done.runs.values()):3d} runs, on {kind:9s} stage {package.get('stage', 'first'):17s}"
                f" raw {_mb(package['raw_bytes'])} / {_mb(package['threshold_bytes'])} ({share:4.0%})"
                f"  {doing}{maturity_text(package)}{live_text(package)}  [{time.monotonic() - self.begun:5.1f} s]")


def maturity_text(package: dict) -> str:
    """The profile's step change at pgod's last checkpoint, and why a build past the threshold
    waits (pgod builds once two steps in a row changed the profile at most 1 %)."""
    step = (package.get("maturity") or {}).get("step_changed_percent")
    text = f", step {step:.2f} %" if step is not None else ""
    if package.get("waiting") and not package["waiting"].startswith("settling"):
        text += f" ({package['waiting']})"
    return text


def in_cs_stage(trainer: Trainer):
    return lambda p: p.get("stage") == "context-sensitive" and trainer.in_use(p)[0] == "cs-stage"


def final_started(p: dict) -> bool:
    return p.get("stage") == "context-sensitive" and p["state"] in ("building", "ready", "active")


def final_active(p: dict) -> bool:
    # `active`, not the state: data that came during the build and gate may start the next build at once.
    return bool(p.get("active") and p.get("optimized"))


def check_active(layout: Layout, package: dict) -> Path:
    lua = layout.active_lua()
    if not lua.exists():
        raise DemoError(f"{lua} does not exist although pgod says lua is active")
    if not os.path.realpath(lua).startswith(package["optimized"] + "/"):
        raise DemoError(f"{lua} is not the optimized build {package['optimized']}")
    return lua
