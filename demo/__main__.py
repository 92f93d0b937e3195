"""pgod's demo: the whole closed loop on a real third-party C program, the Lua 5.4 interpreter.

Run from the repository root:  python -m demo [--rounds N] [--threshold-mb MB]   (`make demo`)

a. fetch the Lua sources shipped inside the lupa sdist on PyPI (cached under demo-state/);
b. nix-build the instrumented Lua (demo/lua.nix, the fixture stdenv + pgod's stdenv adapters);
c. start a private dbus-daemon and pgod (config under demo-state/, activation "auto");
d. run the instrumented Lua over demo/workload/*.lua until pgod's threshold is crossed, then
   wait while pgod merges, rebuilds Lua with the merged profile and activates it;
e. show `pgoctl status` and `pgoctl show lua`;
f. nix-build plain -O2 Lua and time it against the activated build (interleaved rounds);
g. stop pgod and the bus (also on failure, then with the tail of pgod's log);
h. `pgoctl report lua` from the state pgod left (it reads the state folder, no daemon needed)
   into demo-state/report, and print where it is.

Each step lives in a module of its own here (demo.common, demo.sources, demo.nixbuild,
demo.daemon, demo.training, demo.loop, demo.measure, demo.manual), so benchmarks/pgo.py runs the
very same loop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from demo.common import (
    BIN,
    PACKAGE,
    DemoError,
    Layout,
    Steps,
    check_tools,
    exclusive,
    indent,
    interrupt_on_signal,
    parse_args,
    reset,
    say,
)
from demo.loop import closed_loop
from demo.manual import MANUAL_OPTIMIZED, comparison_lines, manual_pgo
from demo.measure import measure
from demo.training import gate_text


# ---- h. report ----------------------------------------------------------------------------------
def write_report(layout: Layout) -> Path:
    """`pgoctl report lua` into demo-state/report, from the state folder pgod left."""
    argv = [str(BIN / "pgoctl"), "report", PACKAGE, "--config", str(layout.config), "--output", str(layout.report)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise DemoError(f"pgoctl report exited {done.returncode}: {done.stderr.strip()}")
    say(indent(done.stdout))
    return layout.report


# ---- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = parse_args(argv)
    parser.add_argument("--no-manual", action="store_true",
                        help="skip the manual FE, IR and IR+CS builds (by hand, outside Nix) and their measurement")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    layout, steps = Layout(), Steps()
    say("pgod demo: profile-guided optimization of the Lua 5.4 interpreter, closed loop through pgod")
    try:
        check_tools()
        with exclusive(layout):
            reset(layout)
            # The demo measures no instrumented build: the atomic IR one is benchmarks.pgo's.
            manual = () if args.no_manual else ("fe-instr", "ir-instr")
            with closed_loop(layout, steps, args.threshold_mb, manual=manual) as loop:
                binaries: dict[str, Path] = {"plain": loop.plain_lua, "optimized": loop.optimized_lua}
                if not args.no_manual:
                    with steps("manual PGO by hand (clang-14, llvm-profdata-14, outside Nix), the same training runs: FE, IR, IR + CS"):
                        manual = manual_pgo(loop)
                    binaries |= {name: manual.binaries[name] for name in MANUAL_OPTIMIZED}
                with steps(f"measure: {', '.join(binaries)}, {args.rounds} interleaved rounds of the workload"):
                    say("    (the same scripts trained the profile: the usual PGO set-up, so this is the best case)")
                    result = measure(binaries, loop.scripts, args.rounds, layout)
            with steps(f"pgoctl report {PACKAGE}: hot functions, coverage, growth, change since the build"):
                report = write_report(layout)
    except DemoError as err:
        say("")
        print(f"demo: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr, flush=True)
        return 130
    package = loop.package
    say("")
    say(f"stages: first (IR-instrumented, {loop.training.rounds.get('profiling', 0)} rounds) -> context-sensitive"
        f" ({loop.training.rounds.get('cs-stage', 0)} rounds on the CS build) -> final build {package['optimized']}")
    say(f"gate: {gate_text(package.get('benchmark'))}")
    if len(result.names) > 2:
        say("manual builds, same rounds (workload time, speedup over plain -O2):")
        for line in comparison_lines(result):
            say(line)
    say(f"CPU (user+sys), median: plain {result.median_cpu('plain'):.2f} s, optimized {result.median_cpu('optimized'):.2f} s")
    say(f"total demo time {steps.elapsed():.0f} s")
    say(f"report: {report / 'ANALYSIS.md'} (with report.json and charts)")
    say("(workload time: the median of each script over the rounds, summed)")
    say(f"speedup: {result.speedup('optimized'):.2f}x (plain {result.median_wall('plain'):.2f} s, "
        f"optimized {result.median_wall('optimized'):.2f} s, median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
