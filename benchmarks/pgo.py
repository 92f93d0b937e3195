"""PGO benchmark: pgod's two-stage closed loop on the Lua 5.4 interpreter against PGO by hand.

Run from the repository root:  python -m benchmarks.pgo [--rounds N] [--threshold-mb MB] [--json]

One run of the demo's loop (demo/loop.py: IR-instrumented Lua from the lupa sdist → runs of
demo/workload/*.lua → pgod merges → the context-sensitive stage (csProfiling, put in use, trained
on the same scripts) → the final nix-build → the benchmark gate against plain -O2 → activation),
then, in the same run, PGO by hand outside Nix from the same training runs (demo/manual.py: the
same number of workload rounds on each instrumented build, llvm-profdata-14, clang-14 with the
compile command of demo/lua.nix):

  manual FE     -fprofile-instr-generate → -fprofile-instr-use
  manual IR     -fprofile-generate → -fprofile-use
  manual IR+CS  -fprofile-use=ir.profdata -fcs-profile-generate → merge ir + cs → -fprofile-use

All binaries, optimized and instrumented, run the workload in ONE set of interleaved rounds (the
order rotates, all must print the same; instrumented runs write their profile to a scratch folder):

(a) pgod's activated build, the manual ones: speedup over plain -O2 (demo/lua.nix -A plain);
(b) pgod speedup / manual IR+CS speedup (target >= 98 %); pgod against manual FE (target: faster);
(c) the instrumented phase: FE-, IR- and CS-instrumented (by hand, plain counters) and IR with
    atomic counters (lock prefixes, what the adapters' atomicCounters gives), slowdown against
    plain; pgod's own profiling and CS-stage builds (Nix, plain counters, the adapters' default);
(d) the gate's own cost (status benchmark.seconds) and its verdict; the latency of each stage's
    build from pgod's log.

Progress goes to stderr; the table (or JSON with --json) to stdout. Nothing is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import sys
from datetime import datetime
from pathlib import Path

from demo.common import (
    OUTPUT,
    DemoError,
    Layout,
    Steps,
    check_tools,
    exclusive,
    interrupt_on_signal,
    parse_args,
    reset,
    say,
)
from demo.loop import closed_loop
from demo.manual import FIRST_MANUAL, MANUAL_LABELS, MANUAL_OPTIMIZED, manual_pgo
from demo.measure import Measurement, measure

TARGET_RATIO = 0.98  # pgod speedup / manual IR+CS speedup
TARGET_OVERHEAD_S = 5.0  # threshold → active, minus the compile itself


def text_digest(path: Path | str) -> str | None:
    """SHA-256 of an ELF64 file's .text section (None if there is none): equal digests mean the
    same machine code, whatever else (build-id, paths) differs."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    order = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(order + "IIQQQQ", data, shoff + index * shentsize)
        return name, offset, size

    _, names, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if data[names + name : data.index(b"\0", names + name)] == b".text":
            return hashlib.sha256(data[offset : offset + size]).hexdigest()
    return None


def _time(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def latency(events: list[dict], exits: list[float], build_log: str, package: str = "lua") -> dict:
    """Seconds between pgod's log events for each stage's build of `package`, and the compile's
    own time inside the final build (demo/lua.nix logs it)."""
    mine = [e for e in events if e.get("package") == package and "timestamp" in e]

    def first(name: str, after: float, **match) -> float:
        for event in mine:
            if event.get("event") == name and _time(event) >= after and all(event.get(k) == v for k, v in match.items()):
                return _time(event)
        raise DemoError(f"pgod's log has no {name} event for {package}")

    threshold1 = first("package.threshold_reached", 0.0)
    cs_started = first("build.started", threshold1, stage="cs-profile")
    cs_in_use = first("stage.context_sensitive", cs_started)
    threshold = first("package.threshold_reached", cs_in_use)
    started = first("build.started", threshold, stage="optimize")
    gate_started = first("gate.started", started)
    succeeded = first("build.succeeded", gate_started)
    activated = first("activation.changed", succeeded, active=True)
    # The run whose raw profile crossed the threshold: the last one that ended before pgod said so.
    crossing = max((t for t in exits if t <= threshold), default=threshold)
    compiles = [line for line in build_log.splitlines() if line.startswith("lua.nix: compile took ")]
    if not compiles:
        raise DemoError("the final build's log has no 'lua.nix: compile took' line")
    compile_s = float(compiles[-1].split()[3])
    return {
        "cs_stage": {
            "threshold_to_build_started_s": round(cs_started - threshold1, 3),
            "build_s": round(cs_in_use - cs_started, 3),
            "threshold_to_in_use_s": round(cs_in_use - threshold1, 3),
        },
        "exit_to_threshold_reached_s": round(threshold - crossing, 3),
        "threshold_to_build_started_s": round(started - threshold, 3),
        "build_s": round(gate_started - started, 3),
        "gate_s": round(succeeded - gate_started, 3),
        "build_to_active_s": round(activated - succeeded, 3),
        "threshold_to_active_s": round(activated - threshold, 3),
        "exit_to_active_s": round(activated - crossing, 3),
        "compile_in_build_s": compile_s,
    }


OPTIMIZED = ("plain", "pgod", *MANUAL_OPTIMIZED)
INSTRUMENTED = ("pgod-profiling", "pgod-cs-stage", "fe-instr", "ir-instr", "ir-instr-atomic", "cs-instr")
LABELS = {
    "plain": "plain -O2 (nix, clangStdenv)",
    "pgod": "pgod, activated (IR + CS, nix)",
    "pgod-profiling": "pgod's profiling build (IR, nix)",
    "pgod-cs-stage": "pgod's CS-stage build (CS, nix)",
    **MANUAL_LABELS,
}


def report(result: Measurement, paths: dict[str, str], lat: dict, gate: dict | None, manual, extra: dict) -> dict:
    binaries = {
        name: {
            "path": paths[name],
            "instrumented": name in INSTRUMENTED,
            "median_wall_s": round(result.median_wall(name), 4),
            "median_cpu_s": round(result.median_cpu(name), 4),
            "speedup": round(result.speedup(name), 4),
            "slowdown": round(1 / result.speedup(name), 4),
            "round_wall_s": [round(result.round_wall(name, i), 4) for i in range(result.rounds)],
            "script_wall_s": {script: [round(w, 4) for w in runs] for script, runs in result.wall[name].items()},
        }
        for name in result.names
    }
    ratio = result.speedup("pgod") / result.speedup("manual-cs")
    vs_fe = result.median_wall("manual-fe") / result.median_wall("pgod")
    atomic = result.median_wall("ir-instr-atomic") / result.median_wall("ir-instr")
    cs_vs_ir = result.speedup("manual-cs") / result.speedup("manual-ir")
    overhead = lat["exit_to_active_s"] - lat["compile_in_build_s"] - lat["gate_s"]
    return {
        **extra,
        "rounds": result.rounds,
        "binaries": binaries,
        "pgod_vs_manual_cs": {"ratio": round(ratio, 4), "target_min": TARGET_RATIO, "met": ratio >= TARGET_RATIO},
        "pgod_vs_manual_fe": {"ratio": round(vs_fe, 4), "met": vs_fe > 1.0},
        "cs_vs_ir_manual": round(cs_vs_ir, 4),
        "atomic_counters_cost": round(atomic, 4),
        "gate": gate,
        "manual": {
            "profiles": {k: str(v) for k, v in manual.profiles.items()},
            "compile_s": {k: round(v, 2) for k, v in manual.compile_seconds.items()},
            "training_rounds": manual.training_rounds,
        },
        "latency": {**lat, "overhead_s": round(overhead, 3), "target_max_s": TARGET_OVERHEAD_S,
                    "met": overhead < TARGET_OVERHEAD_S},
    }


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


def table(doc: dict) -> str:
    b, lat = doc["binaries"], doc["latency"]
    gate = doc["gate"] or {}
    lines = [
        (
            f"PGO benchmark: Lua {doc['lua_version']} (lupa-{doc['lupa_version']} sdist), {doc['scripts']} workload scripts "
            f"(also the training set), {doc['rounds']} interleaved rounds of {len(b)} binaries"
        ),
        f"  training: pgod {doc['training']['rounds']} (rounds per build kind); by hand {doc['manual']['training_rounds']}",
        "  workload time = each script's median over the rounds, summed",
        "",
        f"  {'optimized binary':50} {'wall s':>7} {'CPU s':>7} {'speedup':>8}",
    ]
    for name in OPTIMIZED:
        lines.append(f"  {LABELS[name]:50} {b[name]['median_wall_s']:7.3f} {b[name]['median_cpu_s']:7.3f} {b[name]['speedup']:7.3f}x")
    lines += ["", f"  {'instrumented binary':50} {'wall s':>7} {'CPU s':>7} {'slowdown':>8}"]
    for name in INSTRUMENTED:
        lines.append(f"  {LABELS[name]:50} {b[name]['median_wall_s']:7.3f} {b[name]['median_cpu_s']:7.3f} {b[name]['slowdown']:7.3f}x")

    def row(label: str, value: str, target: str = "") -> str:
        return f"  {label:58} {value:>9}   {target}".rstrip()

    cs, fe = doc["pgod_vs_manual_cs"], doc["pgod_vs_manual_fe"]
    lines += [
        "",
        row("figure", "value", "target"),
        row("(a) pgod speedup over plain -O2", f"{b['pgod']['speedup']:.3f}x"),
        row("(b) pgod speedup / manual IR+CS speedup", f"{cs['ratio']:.1%}", f">= {cs['target_min']:.0%}  {_ok(cs['met'])}"),
        row("    pgod against manual FE PGO (FE time / pgod time)", f"{fe['ratio']:.3f}x", f"> 1  {_ok(fe['met'])}"),
        row("    manual IR+CS speedup / manual IR speedup", f"{doc['cs_vs_ir_manual']:.3f}x"),
        row("(c) atomic counters: IR-instr atomic / IR-instr", f"{doc['atomic_counters_cost']:.3f}x"),
        row("(d) the gate: verdict, speedup on its benchmark", f"{gate.get('verdict')}", f"{gate.get('speedup', 0):.3f}x"
            f" (plain {gate.get('baseline_median_seconds') or 0:.2f} s, candidate {gate.get('candidate_median_seconds') or 0:.2f} s,"
            f" {gate.get('rounds')} rounds)"),
        row("    the gate's own cost (status benchmark.seconds)", f"{gate.get('seconds', 0):.1f} s"),
        row("    CS stage: threshold -> CS build in use", f"{lat['cs_stage']['threshold_to_in_use_s']:.1f} s"),
        row("    final: run that crossed the threshold exits -> active", f"{lat['exit_to_active_s']:.1f} s"),
        row("      threshold_reached -> build.started", f"{lat['threshold_to_build_started_s']:.1f} s"),
        row("      build.started -> gate.started (nix-build)", f"{lat['build_s']:.1f} s"),
        row("        of which the compile (lua.nix's own timing)", f"{lat['compile_in_build_s']:.1f} s"),
        row("      gate.started -> build.succeeded (the gate)", f"{lat['gate_s']:.1f} s"),
        row("      build.succeeded -> activation.changed", f"{lat['build_to_active_s']:.1f} s"),
        row("    pgod + Nix overhead (exit -> active, minus compile and gate)", f"{lat['overhead_s']:.1f} s",
            f"< {lat['target_max_s']:g} s  {_ok(lat['met'])}"),
        row("    manual compiles (wall, 2 cores shared)", ", ".join(f"{k} {v:.0f}" for k, v in doc["manual"]["compile_s"].items()) + " s"),
        "",
        f"  pgod's final profile {doc['profile']}",
        f"  total runtime {doc['total_runtime_s']:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = parse_args(argv, description=__doc__.split("\n\n")[0])
    parser.prog = "python -m benchmarks.pgo"
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    OUTPUT.stream = sys.stderr
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    layout, steps = Layout(), Steps()
    try:
        check_tools()
        with exclusive(layout):
            reset(layout)
            with closed_loop(layout, steps, args.threshold_mb, manual=FIRST_MANUAL) as loop:
                detail = loop.daemon.show()
                # The active build (data that came during the build and the gate may already have
                # started the next one, which is then builds[0]).
                build = next((b for b in detail["builds"] if b.get("out_path") == loop.package["optimized"]
                              and b.get("stage") == "optimize"), None)
                if build is None or build["status"] != "succeeded" or not build["profile"]:
                    raise DemoError(f"pgoctl show lua has no succeeded final build {loop.package['optimized']}: {detail['builds'][:2]}")
                if detail["builds"][0] is not build:
                    say(f"    note: pgod has started another build meanwhile ({detail['builds'][0]['status']}): the measurement shares the machine with it")
                profile, events = build["profile"], loop.daemon.events()
                with steps("manual PGO by hand (clang-14, llvm-profdata-14, outside Nix), the same training runs: FE, IR, IR + CS"):
                    manual = manual_pgo(loop)
                stage_build = loop.package.get("stage_build")
                if not stage_build:
                    raise DemoError("pgod's status names no stage_build (the context-sensitive build)")
                binaries = {
                    "plain": loop.plain_lua, "pgod": loop.optimized_lua,
                    **{name: manual.binaries[name] for name in MANUAL_OPTIMIZED},
                    "pgod-profiling": Path(loop.profiling) / "bin" / "lua", "pgod-cs-stage": Path(stage_build) / "bin" / "lua",
                    **{name: manual.binaries[name] for name in INSTRUMENTED if name in manual.binaries},
                }
                with steps(f"measure: {len(binaries)} binaries, {args.rounds} interleaved rounds"):
                    result = measure(binaries, loop.scripts, args.rounds, layout, instrumented=INSTRUMENTED)
                warnings_file = Path(loop.package["optimized"]) / "nix-support" / "pgo-warnings.json"
                warnings = json.loads(warnings_file.read_text()) if warnings_file.exists() else None
                extra = {
                    "lua_version": loop.source.version,
                    "lupa_version": loop.source.sdist.name.removeprefix("lupa-").removesuffix(".tar.gz"),
                    "scripts": len(loop.scripts),
                    "profile": profile,
                    "optimized": loop.package["optimized"],
                    "stage_build": stage_build,
                    "profile_match": warnings,
                    "training": {"rounds": loop.training.rounds, "runs": loop.training.runs,
                                 "before_final": loop.training.before_final},
                }
                paths = {name: os.path.realpath(path) for name, path in binaries.items()}
                timing = latency(events, loop.daemon.training_exits, loop.daemon.pgoctl("logs", "lua").stdout)
                doc = report(result, paths, timing, loop.package.get("benchmark"), manual, extra)
    except DemoError as err:
        print(f"benchmarks.pgo: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("benchmarks.pgo: interrupted", file=sys.stderr, flush=True)
        return 130
    doc["total_runtime_s"] = round(steps.elapsed(), 1)
    print(json.dumps(doc, indent=2) if args.json else table(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
