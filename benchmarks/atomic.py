"""What atomic profile counters cost: the demo's Lua, instrumented with plain and atomic counters,
with each clang that is installed (14 and 19), against plain -O2 of the same clang.

Why it exists: clang before 19 ignores `-fprofile-update=atomic` with IR instrumentation (the
binary is the plain one, byte for byte), so a benchmark of "atomic" counters on clang 14 measured
plain ones. Each build here is checked first: its counter updates (instructions that write
__llvm_prf_cnts) are counted with objdump, with and without a lock prefix, and an "atomic" build
whose updates are not all locked is an error. Atomic IR counters on clang 14 come from the
lowering pass's option (`-mllvm -instrprof-atomic-counter-update-all`, through -Xclang), which is
what the stdenv adapters' `atomicCounters = true` adds.

    .venv/bin/python -m benchmarks.atomic [--rounds 7] [--src DIR]

`--src`: a folder with the Lua 5.4 sources (onelua.c); default demo-state/lua-src, fetched from the
lupa sdist on PyPI as the demo does when missing. Each variant is compiled as demo/lua.nix does
(`-O2 -DMAKE_LUA onelua.c -lm`) into a scratch folder; the rounds run every variant over
demo/workload/*.lua (all must print the same), the order rotating; instrumented runs write their
profile to a scratch folder. Printed: each variant's median round (wall and user+sys CPU), its
spread, and its time against plain -O2 of its clang. Then what plain counters lose: a function
called by two threads at once, 200 M times each, counted with plain and atomic IR counters (the
newest clang). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "demo" / "workload"
COMPILE = ["-O2", "-DMAKE_LUA", "onelua.c", "-lm"]
ATOMIC_IR = ["-fprofile-update=atomic", "-Xclang", "-mllvm", "-Xclang", "-instrprof-atomic-counter-update-all"]
# name → (flags, whether its counters must all be atomic; None: not instrumented)
VARIANTS = {
    "plain": ([], None),
    "ir": (["-fprofile-generate"], False),
    "ir-update-atomic": (["-fprofile-generate", "-fprofile-update=atomic"], None),  # checked, not timed twice
    "ir-atomic": (["-fprofile-generate", *ATOMIC_IR], True),
    "fe": (["-fprofile-instr-generate"], False),
    "fe-atomic": (["-fprofile-instr-generate", "-fprofile-update=atomic"], True),
}


def counter_updates(binary: Path) -> tuple[int, int]:
    """Instructions of ``binary`` that update a profile counter in memory (their target in
    __llvm_prf_cnts), and how many of them carry a lock prefix."""
    sections = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"__llvm_prf_cnts\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", sections)
    if found is None:
        return 0, 0
    start, size = int(found.group(1), 16), int(found.group(2), 16)
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True, check=True).stdout
    updates = locked = 0
    for line in code.splitlines():
        target = re.search(r"#\s*([0-9a-f]+)\s*<", line)
        instruction = line.split("\t", 1)[-1].strip()
        if target and start <= int(target.group(1), 16) < start + size and re.match(r"(lock\s+)?(inc|add)", instruction):
            updates += 1
            locked += instruction.startswith("lock")
    return updates, locked


def lua_sources(given: Path | None) -> Path:
    if given is not None:
        return given
    from demo.common import Layout
    from demo.sources import fetch_sources

    return fetch_sources(Layout()).dir


def build(src: Path, out: Path, clangs: list[int]) -> dict[str, Path]:
    """Every variant with every clang, compiled two at a time; each instrumented one checked."""
    binaries, running = {}, []
    for version in clangs:
        for name, (flags, _atomic) in VARIANTS.items():
            binary = out / f"{name}-{version}"
            running.append((binary, subprocess.Popen([f"/usr/bin/clang-{version}", *flags, *COMPILE, "-o", str(binary)],
                                                     cwd=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            if len(running) == 2:
                _wait(running)
    _wait(running)
    for version in clangs:
        for name, (_flags, atomic) in VARIANTS.items():
            binary = out / f"{name}-{version}"
            updates, locked = counter_updates(binary)
            same = "" if name != "ir-update-atomic" else (
                ", byte for byte the plain-counter build" if binary.read_bytes() == (out / f"ir-{version}").read_bytes() else "")
            print(f"  clang {version} {name:17} {updates:6} counter updates, {locked:6} with a lock prefix{same}")
            if atomic is True and (updates == 0 or locked != updates):
                raise SystemExit(f"{binary.name}: its counters are not all atomic")
            if atomic is False and locked:
                raise SystemExit(f"{binary.name}: plain counters with a lock prefix")
            if name != "ir-update-atomic":
                binaries[f"{name}-{version}"] = binary
    return binaries


def _wait(running: list) -> None:
    for binary, process in running:
        _out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"compiling {binary.name} failed: {err.decode(errors='replace')[-1000:]}")
    running.clear()


def measure(binaries: dict[str, Path], rounds: int, scratch: Path) -> dict[str, tuple[list[float], list[float]]]:
    scripts = sorted(WORKLOAD.glob("*.lua"))
    raw = scratch / "raw"
    env = {"PATH": "/usr/bin:/bin", "LLVM_PROFILE_FILE": f"{raw}/%p.profraw"}
    names = list(binaries)
    times = {name: ([], []) for name in names}
    reference: dict[str, bytes] = {}
    for index in range(rounds):
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            raw.mkdir(exist_ok=True)
            wall = cpu = 0.0
            for script in scripts:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                began = time.perf_counter()
                out = subprocess.run([str(binaries[name]), script.name], cwd=WORKLOAD, env=env, capture_output=True,
                                     check=True).stdout
                wall += time.perf_counter() - began
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu += after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                if reference.setdefault(script.name, out) != out:
                    raise SystemExit(f"{name} printed something else for {script.name}")
            times[name][0].append(wall)
            times[name][1].append(cpu)
            shutil.rmtree(raw)
        print(f"  round {index + 1}/{rounds}: " + ", ".join(f"{n} {times[n][0][-1]:.2f}" for n in names), file=sys.stderr)
    return times


THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static volatile long sink;
__attribute__((noinline)) static void work(long i) { if (i % 3 == 0) sink += i; else sink -= 1; }
static void *run(void *arg) { for (long i = 0; i < (long)arg; i++) work(i); return NULL; }
int main(int argc, char **argv) {
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, run, (void *)atol(argv[1]));
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  printf("%ld\n", sink);
  return 0;
}
"""


def lost_counts(version: int, scratch: Path, calls: int = 200_000_000, runs: int = 3) -> None:
    """Two threads call work() ``calls`` times each, ``runs`` times: its counters' total with plain
    and atomic ones. What plain ones lose depends on how much the threads really overlap (on a
    shared 2-core machine, from nothing to a few tenths of a percent)."""
    (scratch / "threads.c").write_text(THREADS_C)
    for name, flags in (("plain", []), ("atomic", ATOMIC_IR)):
        binary, raw, merged = scratch / f"threads-{name}", scratch / f"threads-{name}.profraw", scratch / f"threads-{name}.profdata"
        subprocess.run([f"/usr/bin/clang-{version}", "-O2", "-pthread", "-fprofile-generate", *flags, "threads.c", "-o", str(binary)],
                       cwd=scratch, check=True)
        lost, seconds = [], []
        for _ in range(runs):
            began = time.perf_counter()
            subprocess.run([str(binary), str(calls)], env={"LLVM_PROFILE_FILE": str(raw)}, check=True, capture_output=True)
            seconds.append(time.perf_counter() - began)
            subprocess.run([f"/usr/bin/llvm-profdata-{version}", "merge", "-o", str(merged), str(raw)], check=True)
            shown = subprocess.run([f"/usr/bin/llvm-profdata-{version}", "show", "--all-functions", "--counts", str(merged)],
                                   capture_output=True, text=True, check=True).stdout
            counts = re.search(r"\bwork:\n(?:.*\n)*?\s*Block counts: \[([0-9, ]+)\]", shown).group(1)
            lost.append(1 - sum(int(n) for n in counts.split(",")) / (2 * calls))
            raw.unlink()
        print(f"  clang {version} {name:7} counters: lost " + ", ".join(f"{share:.3%}" for share in lost)
              + " of the calls; " + ", ".join(f"{s:.2f}" for s in seconds) + " s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.atomic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--src", type=Path, help="Lua 5.4 sources with onelua.c (default: demo-state/lua-src)")
    args = parser.parse_args(argv)
    clangs = [v for v in (14, 19) if Path(f"/usr/bin/clang-{v}").exists()]
    if not clangs:
        raise SystemExit("needs /usr/bin/clang-14 or /usr/bin/clang-19")
    src = lua_sources(args.src)
    with tempfile.TemporaryDirectory(prefix="pgod-atomic-") as scratch:
        print(f"atomic counters: Lua from {src}, clang {', '.join(map(str, clangs))}; counter updates in each build:")
        binaries = build(src, Path(scratch), clangs)
        times = measure(binaries, args.rounds, Path(scratch))
        print("\n  two threads on one function, 200 M calls each:")
        lost_counts(clangs[-1], Path(scratch))
    print(f"\n  {args.rounds} interleaved rounds of demo/workload/*.lua; median round")
    print(f"  {'variant':16} {'wall s':>7} {'CPU s':>7} {'spread':>7} {'wall/plain':>11} {'CPU/plain':>10}")
    for name, (wall, cpu) in times.items():
        plain_wall, plain_cpu = times[f"plain-{name.rsplit('-', 1)[1]}"]
        spread = (max(wall) - min(wall)) / statistics.median(wall)
        print(f"  {name:16} {statistics.median(wall):7.3f} {statistics.median(cpu):7.3f} {spread:7.0%} "
              f"{statistics.median(wall) / statistics.median(plain_wall):10.3f}x {statistics.median(cpu) / statistics.median(plain_cpu):9.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
