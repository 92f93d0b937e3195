"""PGO by hand, outside Nix, from the same training runs as pgod's: FE, IR and IR + CS builds
with clang-14 and llvm-profdata-14 (the compile command of demo/lua.nix), and how pgod's build
compares with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from demo.common import CLANG, LUA_COMPILE, ROOT, DemoError, Layout, indent, say
from demo.measure import Measurement
from demo.sources import Source
from demo.training import run_lua, user_env

if TYPE_CHECKING:
    from demo.loop import Loop

LLVM_PROFDATA = "/usr/bin/llvm-profdata-14"
# Instrumented builds by hand: the flags added to LUA_COMPILE ({ir}: the manual IR profile).
MANUAL_INSTRUMENTED = {
    "fe-instr": ["-fprofile-instr-generate"],
    "ir-instr": ["-fprofile-generate"],
    # Measured, not trained. clang 14 ignores -fprofile-update=atomic with IR instrumentation (its
    # binary is the plain one, byte for byte): the pass's option makes the counters really atomic,
    # as the adapters' atomicCounters does.
    "ir-instr-atomic": ["-fprofile-generate", "-fprofile-update=atomic",
                        "-Xclang", "-mllvm", "-Xclang", "-instrprof-atomic-counter-update-all"],
    "cs-instr": ["-fprofile-use={ir}", "-fcs-profile-generate"],
}
# Optimized builds by hand, from the profiles those made.
MANUAL_OPTIMIZED = {
    "manual-fe": ["-fprofile-instr-use={fe}"],
    "manual-ir": ["-fprofile-use={ir}"],
    "manual-cs": ["-fprofile-use={cs}"],
}
MANUAL_LABELS = {
    "manual-fe": "manual FE PGO (-fprofile-instr-generate/-use)",
    "manual-ir": "manual IR PGO (-fprofile-generate/-use)",
    "manual-cs": "manual IR + CS PGO (-fcs-profile-generate)",
    "fe-instr": "FE-instrumented (manual)",
    "ir-instr": "IR-instrumented (manual)",
    "ir-instr-atomic": "IR-instrumented, atomic counters (manual)",
    "cs-instr": "CS-instrumented (manual)",
}


@dataclass
class Manual:
    """The manual builds: name → binary, the profiles they came from, each compile's wall seconds."""

    binaries: dict[str, Path]
    profiles: dict[str, Path]
    compile_seconds: dict[str, float]
    training_rounds: dict[str, int]


def _start_compiles(source: Source, builds: dict[str, list[str]], folder: Path, profiles: dict[str, Path]) -> dict:
    """clang-14 with LUA_COMPILE plus each build's flags, in the source folder, all at once (a
    compile is one process)."""
    running = {}
    for name, flags in builds.items():
        out = folder / name / "lua"
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = [f.format(**{k: str(v) for k, v in profiles.items()}) for f in flags]
        argv = [CLANG, *extra, *(a.replace("{out}", str(out)) for a in LUA_COMPILE)]
        say(f"    (cd {source.dir.relative_to(ROOT)} && {' '.join(argv)})")
        running[name] = (out, time.perf_counter(), subprocess.Popen(argv, cwd=source.dir, stdout=subprocess.PIPE,
                                                                     stderr=subprocess.STDOUT, text=True))
    return running


def _finish_compiles(running: dict) -> dict[str, tuple[Path, float]]:
    done = {}
    for name, (out, begun, process) in running.items():
        text, _ = process.communicate()
        if process.returncode != 0:
            say(indent(text[-2000:]))
            raise DemoError(f"manual compile {name} failed (exit {process.returncode})")
        done[name] = (out, time.perf_counter() - begun)
    return done


def _compile_all(source: Source, builds: dict[str, list[str]], folder: Path, profiles: dict[str, Path]) -> dict[str, tuple[Path, float]]:
    return _finish_compiles(_start_compiles(source, builds, folder, profiles))


FIRST_MANUAL = ("fe-instr", "ir-instr", "ir-instr-atomic")  # need no profile: compiled while pgod trains


def start_manual_instrumented(layout: Layout, source: Source, names: tuple[str, ...] = FIRST_MANUAL) -> dict:
    folder = layout.bench / "manual"
    shutil.rmtree(folder, ignore_errors=True)
    say("    the manual instrumented builds compile meanwhile (nice 19, below the gate's 10), for the comparison after the loop:")
    running = _start_compiles(source, {k: MANUAL_INSTRUMENTED[k] for k in names}, folder, {})
    for _out, _begun, process in running.values():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    return running


def _train_by_hand(lua: Path, scripts: list[Path], rounds: int, raw: Path) -> list[Path]:
    raw.mkdir(parents=True, exist_ok=True)
    env = user_env(LLVM_PROFILE_FILE=f"{raw}/%p.profraw")
    for _ in range(rounds):
        for script in scripts:
            run_lua(lua, script, env)
    files = sorted(raw.glob("*.profraw"))
    if len(files) != rounds * len(scripts):
        raise DemoError(f"{lua} wrote {len(files)} raw profiles for {rounds * len(scripts)} runs")
    return files


def _merge(out: Path, inputs: list[Path]) -> Path:
    done = subprocess.run([LLVM_PROFDATA, "merge", "-o", str(out), *map(str, inputs)], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoError(f"llvm-profdata merge -o {out.name} failed: {done.stderr.strip()[-300:]}")
    return out


def manual_pgo(loop: Loop) -> Manual:
    """FE, IR and IR + CS PGO by hand (clang-14, llvm-profdata-14, the compile of demo/lua.nix),
    trained on the same runs as pgod: as many rounds of the workload as pgod's first stage had on
    its profiling build (FE and IR), and as many as its context-sensitive stage had before the
    final build (CS)."""
    folder = loop.layout.bench / "manual"
    first = loop.training.rounds.get("profiling", 0)
    second = loop.training.before_final.get("cs-stage", 0)
    say(f"    training as pgod's: {first} rounds on each first-stage build, {second} on the CS-instrumented one")
    made, seconds, profiles = {}, {}, {}

    def compile_step(builds: dict[str, list[str]]) -> None:
        for name, (out, wall) in _compile_all(loop.source, builds, folder, profiles).items():
            made[name], seconds[name] = out, wall
        say("    compiled: " + ", ".join(f"{name} {seconds[name]:.1f} s" for name in builds))

    if loop.manual_running is None:
        shutil.rmtree(folder, ignore_errors=True)
        compile_step({k: MANUAL_INSTRUMENTED[k] for k in FIRST_MANUAL})
    else:
        for name, (out, wall) in _finish_compiles(loop.manual_running).items():
            made[name], seconds[name] = out, wall
        say("    compiled during the loop: " + ", ".join(f"{name} {seconds[name]:.1f} s" for name in loop.manual_running))
    for kind in ("fe", "ir"):
        raws = _train_by_hand(made[f"{kind}-instr"], loop.scripts, first, folder / f"{kind}-raw")
        profiles[kind] = _merge(folder / f"{kind}.profdata", raws)
    say(f"    merged {first * len(loop.scripts)} raw profiles each into fe.profdata and ir.profdata")
    compile_step({"cs-instr": MANUAL_INSTRUMENTED["cs-instr"], **{k: MANUAL_OPTIMIZED[k] for k in ("manual-fe", "manual-ir")}})
    raws = _train_by_hand(made["cs-instr"], loop.scripts, second, folder / "cs-raw")
    profiles["cs"] = _merge(folder / "cs.profdata", [profiles["ir"], *raws])
    say(f"    merged ir.profdata and {len(raws)} CS raw profiles into cs.profdata")
    compile_step({"manual-cs": MANUAL_OPTIMIZED["manual-cs"]})
    return Manual(made, profiles, seconds, {"first": first, "cs": second})


def comparison_lines(result: Measurement, pgod: str = "optimized") -> list[str]:
    """pgod's build against the manual ones measured in the same rounds."""
    lines = []
    for name in ("manual-fe", "manual-ir", "manual-cs"):
        if name in result.names:
            lines.append(f"  {MANUAL_LABELS[name]:48} {result.median_wall(name):6.2f} s  {result.speedup(name):.3f}x")
    if "manual-cs" in result.names:
        lines.append(f"pgod speedup / manual IR+CS speedup: {result.speedup(pgod) / result.speedup('manual-cs'):.1%} (target >= 98 %)")
    if "manual-fe" in result.names:
        lines.append(f"pgod vs manual FE PGO: {result.median_wall('manual-fe') / result.median_wall(pgod):.3f}x "
                     f"({'pgod is faster' if result.median_wall(pgod) < result.median_wall('manual-fe') else 'pgod is NOT faster'})")
    return lines
