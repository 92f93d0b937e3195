"""What live profile reporting costs the program (issue 20, docs/design/live-profiles.md §6): the
demo's Lua, built as benchmarks/atomic.py builds it, running a long server loop
(benchmarks/live/server.lua over demo/workload/*.lua), with each clang:

    plain     -O2
    exit      -fprofile-generate, the runtime's exit write only
    live-D    the same instrumented object linked with stdenv-adapters/live/pgod-live.c (a dumper
              thread writing a cumulative snapshot every D s when a counter moved)
    cont      continuous mode (%c; -runtime-counter-relocation, -disable-vp=true, and
              -do-counter-promotion=false on clang 14)

    /work/main/.venv/bin/python -m benchmarks.live_runtime [--clangs 14,16,19] [--rounds 5]
        [--dump-intervals 1,10] [--items 360] [--quick] [--src DIR]
    /work/main/.venv/bin/python -m benchmarks.live_runtime --fork-loop N [--clangs …] [--rounds …]

--fork-loop N measures what a fork costs instead (no Lua): a small C program forks N children one
after the other, each calls an instrumented function once and then ends by `_exit` (no exit
handlers: the atfork handlers and the child's dumper thread are the whole cost), `exit` (the
child's profile written: the runtime's <pid>.profraw, or the object's live file) or `exec` of
/bin/true; plain -O2, exit-only and live (D = 60 s) builds of the same source; wall µs per fork,
the parent's clock around fork + waitpid, median of the rounds. Checked: the files the children
leave (live, exit: one live file per child; _exit and exec: none from the object; exit-only: one
file, the parent's %p name, which every child appends its whole profile to, the parent's counts
before the fork included).

Every run is under `setarch -R` and Lua is compiled with a fixed string-hash seed
(-Dluai_makeseed(L)=0u), so a run's counts are deterministic. Rounds are interleaved (all variants
of all clangs per round, order rotating). Each mode is checked, not assumed (round 1): the dumper
wrote snapshots (its own count, PGOD_LIVE_STATS) and every snapshot copied while the program ran
merges with that clang's llvm-profdata, with counts that never go down; the final snapshot equals
the exit-only profile function by function (`llvm-profdata show --all-functions --counts`);
the continuous file is non-empty while the program runs and a copy of it merges; the relocation
is in the code (instructions referring to __llvm_profile_counter_bias, none in the exit-only build).
A failed check is printed as FAILED (nothing raises after the builds). Nothing is asserted about speed.
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
import threading
import time
from pathlib import Path

from benchmarks.atomic import COMPILE, ROOT, WORKLOAD, lua_sources

SERVER = ROOT / "benchmarks" / "live" / "server.lua"
LIVE_C = ROOT / "stdenv-adapters" / "live" / "pgod-live.c"
SEED = ["-Dluai_makeseed(L)=0u"]
IR = ["-fprofile-generate"]
# Lua hashes pointers: its heap must not move with the mmaps of the dumper thread (its stack, its
# malloc arena), so every run takes its memory from the main arena's brk heap, never from mmap.
TUNABLES = "glibc.malloc.mmap_threshold=33554432"
BUILD_FAILURES: dict[int, str] = {}
# Lua functions whose counts depend on where objects and C strings lie (pointer hashes, the string cache)
HASHED = {"getgeneric", "luaH_get", "luaH_getint", "luaH_getstr", "luaH_newkey", "luaS_new", "luaS_newlstr", "mainpositionTV"}  # clang → why a variant is missing


def continuous_flags(version: int) -> list[str]:
    flags = ["-mllvm", "-runtime-counter-relocation", "-mllvm", "-disable-vp=true"]
    if version <= 14:
        flags += ["-mllvm", "-do-counter-promotion=false"]  # LICM segfaults in clang 14 without it
    return ["-fprofile-generate", *flags]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr[-1500:]}")
    return done


def build(src: Path, out: Path, clangs: list[int]) -> dict[int, dict[str, Path]]:
    """Per clang: plain, exit (IR), live (the same IR object + pgod-live.o), cont."""
    compile_ = [c for c in COMPILE if c != "-lm"]  # -O2 -DMAKE_LUA onelua.c
    binaries: dict[int, dict[str, Path]] = {}
    for version in clangs:
        cc = f"/usr/bin/clang-{version}"
        d = out / f"clang-{version}"
        d.mkdir()
        run([cc, "-O2", "-Wall", "-c", str(LIVE_C), "-o", str(d / "pgod-live.o")])
        objects = {}
        running = []
        for name, flags in (("plain", []), ("ir", IR), ("cont", continuous_flags(version))):
            objects[name] = d / f"lua-{name}.o"
            running.append(subprocess.Popen([cc, *flags, *SEED, *compile_, "-c", "-o", str(objects[name])], cwd=src,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for (name, _flags), process in zip((("plain", 0), ("ir", 0), ("cont", 0)), running):
            _out, err = process.communicate()
            if process.returncode != 0:
                text = err.decode(errors="replace")
                if name != "cont":
                    raise SystemExit(f"clang {version}: compiling failed: {text[-1500:]}")
                # clang 14: "Cannot select: ... zero_extend" in luaO_chunkid with -do-counter-promotion=false
                # (and a segfault in LICM without it): continuous mode cannot build Lua there.
                error = next((line for line in text.splitlines() if "error" in line), text.strip()[:200])
                BUILD_FAILURES[version] = f"cont does not compile: {error.strip()[:160]}"
                print(f"  clang {version}: {BUILD_FAILURES[version]}", file=sys.stderr)
                del objects["cont"]
        for leftover in Path("/tmp").glob("onelua-*"):  # clang's crash reproducers
            leftover.unlink(missing_ok=True)
        links = {"plain": ([objects["plain"]], []), "exit": ([objects["ir"]], IR), "live": ([objects["ir"], d / "pgod-live.o"], IR)}
        if "cont" in objects:
            links["cont"] = ([objects["cont"]], IR)
        binaries[version] = {}
        for name, (objs, flags) in links.items():
            binaries[version][name] = d / f"lua-{name}"
            run([cc, *flags, "-O2", *map(str, objs), "-lm", "-pthread", "-o", str(d / f"lua-{name}")])
    return binaries


def bias_relocations(obj: Path) -> int:
    """Relocations against __llvm_profile_counter_bias in Lua's object (the relocated counter
    updates load the bias; the runtime's own uses are not in this object)."""
    table = run(["readelf", "-rW", str(obj)]).stdout
    return sum(1 for line in table.splitlines() if "__llvm_profile_counter_bias" in line)


def counts(version: int, raw: Path) -> dict[str, list[int]]:
    """Function → its counters, from that clang's llvm-profdata (merge, then show)."""
    merged = raw.with_suffix(".profdata")
    run([f"/usr/bin/llvm-profdata-{version}", "merge", "-o", str(merged), str(raw)])
    shown = run([f"/usr/bin/llvm-profdata-{version}", "show", "--all-functions", "--counts", str(merged)]).stdout
    found: dict[str, list[int]] = {}
    name = None
    for line in shown.splitlines():
        if line.startswith("  ") and not line.startswith("    ") and line.rstrip().endswith(":"):
            name = line.strip()[:-1]
        elif "Block counts: [" in line and name is not None:
            inside = line.split("[", 1)[1].rstrip("]").strip()
            found[name] = [int(n) for n in inside.split(",")] if inside else []
    merged.unlink()
    return found


def pattern(out: Path, mode) -> str:
    """LLVM_PROFILE_FILE per mode, all of one length: Lua's string cache is indexed by the address of
    the C string, and argv sits above the environment on the stack."""
    if mode == "plain":
        return "/dev/null" + "/" * (len(str(out)) + 4)  # not a folder: nothing written, object off
    if mode == "exit":
        return f"{out}/./%p.profraw"
    if mode == "cont":
        return f"{out}/%c%p.profraw"
    return f"{out}" + "/." * 6 + "/"  # the folder: the object on


def one_run(argv: list[str], env: dict, watch: Path | None, copies: Path | None) -> tuple[float, float, str, list[Path], list[int]]:
    """Runs the program; with ``copies``, a watcher thread polls ``watch`` every 0.2 s while it runs,
    copies each new inode of a *.profraw there and notes the sizes it sees (the wall time is the
    main thread's, exact)."""
    copied, sizes, done = [], [], threading.Event()

    def watcher() -> None:
        seen = set()
        while not done.wait(0.2):
            for path in sorted(watch.glob("*.profraw")):
                try:
                    stat = path.stat()
                    if stat.st_size:
                        sizes.append(stat.st_size)
                    if stat.st_ino in seen or not stat.st_size:
                        continue
                    target = copies / f"{len(copied):04d}-{path.name}"
                    shutil.copyfile(path, target)
                except FileNotFoundError:
                    continue
                if not done.is_set():  # taken while it ran
                    seen.add(stat.st_ino)
                    copied.append(target)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    process = subprocess.Popen(argv, cwd=WORKLOAD, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    thread = threading.Thread(target=watcher, daemon=True) if watch is not None and copies is not None else None
    if thread:
        thread.start()
    out, err = process.communicate()
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.set()
    if thread:
        thread.join()
    if process.returncode != 0:
        raise SystemExit(f"{argv[3]} failed ({process.returncode}): {err.decode(errors='replace')[-1500:]}")
    if err.strip():
        print(f"  note: {Path(argv[3]).name}: stderr {err.decode(errors='replace').strip()[:300]}", file=sys.stderr)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, out.decode(), copied, sizes


def measure(binaries: dict[int, dict[str, Path]], intervals: list[int], rounds: int, items: int, scratch: Path):
    variants = []  # (clang, variant name, binary, mode)
    for version, built in binaries.items():
        variants += [(version, "plain", built["plain"], "plain"), (version, "exit", built["exit"], "exit")]
        variants += [(version, f"live-{d}", built["live"], d) for d in intervals]
        if "cont" in built:
            variants.append((version, "cont", built["cont"], "cont"))
    times = {(v, n): ([], []) for v, n, _b, _m in variants}
    stats = {(v, n): [] for v, n, _b, m in variants if isinstance(m, int)}
    checks: dict[int, list[str]] = {v: [] for v in binaries}
    finals: dict[tuple[int, str], Path] = {}
    reference = None
    for index in range(rounds):
        turn = index % len(variants)
        for version, name, binary, mode in variants[turn:] + variants[:turn]:
            out = scratch / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            stats_file = scratch / "stats"
            stats_file.unlink(missing_ok=True)
            env = {"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": TUNABLES, "PGOD_LIVE_STATS": str(stats_file), "PGOD_LIVE_INTERVAL_S": "000060"}
            env["LLVM_PROFILE_FILE"] = pattern(out, mode)
            if isinstance(mode, int):
                env["PGOD_LIVE_INTERVAL_S"] = f"{mode:06d}"
            copies = None
            if index == 0:
                copies = scratch / f"copies-{version}-{name}"
                copies.mkdir()
            argv = ["setarch", "-R", "--", str(binary), str(SERVER), str(items), str(WORKLOAD)]
            wall, cpu, printed, copied, sizes = one_run(argv, env, out, copies)
            times[(version, name)][0].append(wall)
            times[(version, name)][1].append(cpu)
            if reference is None:
                reference = printed
            elif printed != reference:
                checks[version].append(f"FAILED: {name} printed {printed.strip()!r}, not {reference.strip()!r}")
            if isinstance(mode, int):
                line = stats_file.read_text().strip() if stats_file.exists() else ""
                fields = dict(re.findall(r"(\w+)=(\S+)", line))
                if not fields:
                    checks[version].append(f"FAILED: {name} round {index + 1}: the dumper left no statistics (not on?)")
                else:
                    stats[(version, name)].append((int(fields["dumps"]), int(fields["skipped"]), int(fields["dump_cpu_ns"]),
                                                   int(fields["bytes"]), wall))
            files = sorted(out.glob("*.profraw"))
            if index == 0 and mode != "plain":
                kept = scratch / f"final-{version}-{name}.profraw"
                if len(files) != 1:
                    checks[version].append(f"FAILED: {name}: {len(files)} profile files at the end: {[f.name for f in files]}")
                else:
                    shutil.copyfile(files[0], kept)
                    finals[(version, name)] = kept
                check_live_copies(version, name, mode, copied, sizes, checks[version])
            shutil.rmtree(out)
        print(f"  round {index + 1}/{rounds}: " + ", ".join(f"{v}/{n} {times[(v, n)][0][-1]:.2f}" for v, n, _b, _m in variants),
              file=sys.stderr, flush=True)
    # The references: the live and cont binaries themselves with an ordinary exit write (the object
    # stays off with PGOD_LIVE_INTERVAL_S=0; relocated counters work with a zero bias). Lua hashes pointers and
    # another binary's layout moves the heap, so only the same binary's profile can be equal.
    for version, built in binaries.items():
        for name, key, mode, interval in (("live", "live@exit", "exit", "000000"), ("live", "live@nodump", 0, "100000"),
                                          ("cont", "cont@exit", "exit", "000060")):
            if name not in built:
                continue
            out = scratch / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            env = {"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": TUNABLES, "PGOD_LIVE_STATS": str(scratch / "stats"),
                   "PGOD_LIVE_INTERVAL_S": interval, "LLVM_PROFILE_FILE": pattern(out, mode)}
            one_run(["setarch", "-R", "--", str(built[name]), str(SERVER), str(items), str(WORKLOAD)], env, None, None)
            files = sorted(out.glob("*.profraw"))
            if len(files) == 1:
                finals[(version, key)] = shutil.copyfile(files[0], scratch / f"final-{version}-{key}.profraw")
            else:
                checks[version].append(f"FAILED: {key} left {len(files)} files")
    for version in binaries:
        check_finals(version, intervals, finals, checks[version])
    return times, stats, checks


def check_live_copies(version: int, name: str, mode, copied: list[Path], sizes: list[int], notes: list[str]) -> None:
    if mode == "exit":
        if copied:
            notes.append(f"FAILED: exit-only wrote a profile while running ({len(copied)} copies)")
        return
    if mode == "cont":
        if not sizes:
            notes.append("FAILED: cont: no non-empty profile file seen while the program ran")
            return
        notes.append(f"cont: the %c file was non-empty while running ({min(sizes)}..{max(sizes)} B over {len(sizes)} polls)")
    if not copied:
        notes.append(f"{'' if isinstance(mode, int) and mode >= 10 else 'FAILED: '}{name}: no profile copied while the program ran")
        return
    totals = []
    for copy in copied:
        try:
            totals.append(sum(map(sum, counts(version, copy).values())))
        except SystemExit as failure:
            notes.append(f"FAILED: {name}: a copy taken while running does not merge: {str(failure)[-300:]}")
            return
    rising = all(a <= b for a, b in zip(totals, totals[1:]))
    notes.append(f"{name}: {len(copied)} snapshots copied while running all merge with llvm-profdata-{version}; "
                 f"counter sums {'never go down' if rising else 'GO DOWN (FAILED)'} ({totals[0]:,} .. {totals[-1]:,})")


def check_finals(version: int, intervals: list[int], finals: dict, notes: list[str]) -> None:
    """Each live mode's final file against the exit-only profile of the same binary, function by
    function and counter by counter; and, for scale, the exit-only builds against each other."""
    cache: dict[Path, dict] = {}

    def shown(key):
        if key not in finals:
            return None
        if finals[key] not in cache:
            try:
                cache[finals[key]] = counts(version, finals[key])
            except SystemExit as failure:
                notes.append(f"FAILED: {key[1]}: its final file does not merge: {str(failure)[-300:]}")
                cache[finals[key]] = None
        return cache[finals[key]]

    # must be equal: the same binary, the same process (the dumper thread started, the same heap)
    pairs = [(f"live-{d}", "live@nodump", "final snapshot after periodic ones") for d in intervals]
    pairs += [("cont", "cont@exit", "final %c file")]
    # for information: Lua hashes pointers, so the same run in another heap layout counts differently
    # in its hash-table functions (the thread's start-up allocations move the heap; another binary too)
    pairs += [("live@nodump", "live@exit", "(heap layout) the object's final snapshot vs the runtime's exit write, object off"),
              ("live@exit", "exit", "(binary layout) live binary's exit write vs the exit-only build")]
    for name, against, what in pairs:
        got, expected = shown((version, name)), shown((version, against))
        if got is None or expected is None:
            continue
        differ = [f for f in set(expected) | set(got) if expected.get(f) != got.get(f)]
        short = {f.split(":")[-1].split(";")[-1] for f in differ}
        failed = differ and "layout" not in what and not short <= HASHED
        if differ and not failed and "layout" not in what:
            what += " (only in Lua's address-hashed functions: another heap layout, e.g. the runtime's own mallocs in continuous mode)"
        if differ:
            notes.append(f"{'FAILED: ' if failed else ''}{name}: {what} differs from {against} in {len(differ)} of "
                         f"{len(expected)} functions: {', '.join(sorted(f.split(':')[-1].split(';')[-1] for f in differ))}; "
                         f"counter sum {sum(map(sum, got.values())):,} vs {sum(map(sum, expected.values())):,}")
        else:
            notes.append(f"{name}: {what} == {against} profile, all {len(expected)} functions, every counter")


FORK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_us(void) {
  struct rusage self, children;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);
  return (self.ru_utime.tv_sec + self.ru_stime.tv_sec + children.ru_utime.tv_sec + children.ru_stime.tv_sec) * 1e6 +
         self.ru_utime.tv_usec + self.ru_stime.tv_usec + children.ru_utime.tv_usec + children.ru_stime.tv_usec;
}

__attribute__((noinline)) long step(long i) { return i % 5 == 0 ? i / 5 : i * 3 + 1; }

int main(int argc, char **argv) {
  long n = atol(argv[1]), sum = 0;
  const char *how = argv[2];
  for (long i = 0; i < 100000; i++) sum += step(i); /* the parent's own counts before the forks */
  struct timespec a, b;
  double cpu = cpu_us();
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long k = 0; k < n; k++) {
    pid_t child = fork();
    if (child == 0) {
      sum += step(k);
      if (strcmp(how, "exit") == 0) exit(sum == 42);
      if (strcmp(how, "exec") == 0) execl("/bin/true", "true", (char *)NULL);
      _exit(0);
    }
    int status;
    if (child < 0 || waitpid(child, &status, 0) != child || status != 0) return 2;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.3f %.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n, (cpu_us() - cpu) / n);
  return sum == 42;
}
"""


def fork_loop(clangs: list[int], forks: int, rounds: int, scratch: Path) -> None:
    source = scratch / "forkloop.c"
    source.write_text(FORK_C)
    binaries = {}
    for version in clangs:
        cc = f"/usr/bin/clang-{version}"
        live_o = scratch / f"pgod-live-{version}.o"
        run([cc, "-O2", "-fPIC", "-fvisibility=hidden", "-c", str(LIVE_C), "-o", str(live_o)])
        run([cc, "-O2", *IR, "-c", str(source), "-o", str(scratch / f"fork-ir-{version}.o")])
        binaries[(version, "plain")] = run([cc, "-O2", str(source), "-o", str(scratch / f"fork-plain-{version}")]) and scratch / f"fork-plain-{version}"
        binaries[(version, "exit")] = scratch / f"fork-exit-{version}"
        run([cc, *IR, str(scratch / f"fork-ir-{version}.o"), "-o", str(binaries[(version, "exit")])])
        binaries[(version, "live")] = scratch / f"fork-live-{version}"
        run([cc, *IR, str(scratch / f"fork-ir-{version}.o"), str(live_o), "-o", str(binaries[(version, "live")])])
    hows = ("_exit", "exit", "exec")
    cases = [(v, variant, how) for (v, variant) in binaries for how in hows]
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    notes: list[str] = []
    out = scratch / "fork-out"
    for index in range(rounds):
        turn = index % len(cases)
        for version, variant, how in cases[turn:] + cases[:turn]:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            env = {"PATH": "/usr/bin:/bin", "LLVM_PROFILE_FILE": f"{out}/%p.profraw", "PGOD_LIVE_INTERVAL_S": "60"}
            done = run([str(binaries[(version, variant)]), str(forks), how], env=env)
            times[(version, variant, how)].append(tuple(map(float, done.stdout.split())))
            if index == 0:
                names = [p.name for p in out.iterdir()]
                live = [n for n in names if n.startswith("live-")]
                exits = [n for n in names if re.fullmatch(r"\d+\.profraw", n)]
                expected = {("plain", "_exit"): (0, 0), ("plain", "exit"): (0, 0), ("plain", "exec"): (0, 0),
                            ("exit", "_exit"): (0, 1), ("exit", "exit"): (0, 1), ("exit", "exec"): (0, 1),
                            ("live", "_exit"): (1, 0), ("live", "exit"): (forks + 1, 0), ("live", "exec"): (1, 0)}[(variant, how)]
                ok = (len(live), len(exits)) == expected
                notes.append(f"{'' if ok else 'FAILED: '}clang {version} {variant} {how}: {len(live)} live files, {len(exits)} exit files"
                             f" (expected {expected[0]} and {expected[1]})")
        print(f"  fork round {index + 1}/{rounds}", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"\n  µs per fork (fork + child + waitpid), {forks} forks, median of {rounds} rounds: wall (the parent's clock)"
          " / CPU (parent and children, user + system)")
    print(f"  {'clang':5} {'child ends by':14} {'plain':>13} {'exit-only':>13} {'live':>13} {'live - exit-only':>17}")
    for version in clangs:
        for how in hows:
            med = {variant: [statistics.median(t[i] for t in times[(version, variant, how)]) for i in (0, 1)]
                   for variant in ("plain", "exit", "live")}
            cells = " ".join(f"{med[v][0]:6.0f}/{med[v][1]:<6.0f}" for v in ("plain", "exit", "live"))
            print(f"  {version:5} {how:14} {cells} {med['live'][0] - med['exit'][0]:+8.0f}/{med['live'][1] - med['exit'][1]:<+8.0f}")
    print("\n  checks:")
    for note in notes:
        print(f"  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clangs", default="14,16,19")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dump-intervals", default="1,10")
    parser.add_argument("--items", type=int, default=360, help="work items per run (360: ~9 s plain -O2, ~11 s instrumented, on the 2-core box)")
    parser.add_argument("--quick", action="store_true", help="a short check: 2 rounds of 100 items")
    parser.add_argument("--src", type=Path, help="Lua 5.4 sources with onelua.c (default: demo-state/lua-src)")
    parser.add_argument("--fork-loop", type=int, metavar="N", help="measure the cost of N forks per run instead (no Lua)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.items = 2, 100
    clangs = [int(v) for v in args.clangs.split(",")]
    intervals = [int(d) for d in args.dump_intervals.split(",")]
    missing = [v for v in clangs if not Path(f"/usr/bin/clang-{v}").exists() or not Path(f"/usr/bin/llvm-profdata-{v}").exists()]
    if missing:
        raise SystemExit(f"needs /usr/bin/clang-N and llvm-profdata-N for {missing}")
    if args.fork_loop:
        with tempfile.TemporaryDirectory(prefix="pgod-live-fork-") as scratch_name:
            print(f"live_runtime --fork-loop {args.fork_loop}: clang {', '.join(map(str, clangs))}, {args.rounds} rounds")
            fork_loop(clangs, args.fork_loop, args.rounds, Path(scratch_name))
        return 0
    src = lua_sources(args.src)
    with tempfile.TemporaryDirectory(prefix="pgod-live-runtime-") as scratch_name:
        scratch = Path(scratch_name)
        print(f"live_runtime: Lua from {src}, clang {', '.join(map(str, clangs))}, {args.items} items per run, "
              f"{args.rounds} rounds, D = {', '.join(map(str, intervals))} s")
        binaries = build(src, scratch, clangs)
        relocation = {}
        for version, built in binaries.items():
            if "cont" in built:
                relocation[version] = (bias_relocations(built["cont"].with_suffix(".o")), bias_relocations(built["exit"].parent / "lua-ir.o"))
        times, stats, checks = measure(binaries, intervals, args.rounds, args.items, scratch)
    print(f"\n  median of {args.rounds} interleaved rounds; ratio against exit-only of the same clang")
    print(f"  {'clang':5} {'variant':8} {'wall s':>7} {'CPU s':>7} {'spread':>7} {'wall/exit':>10} {'CPU/exit':>9} "
          f"{'dumps':>6} {'CPU/dump µs':>12} {'bytes/snap':>11}")
    for (version, name), (wall, cpu) in times.items():
        exit_wall, exit_cpu = times[(version, "exit")]
        spread = (max(wall) - min(wall)) / statistics.median(wall)
        dumps = per_dump = size = ""
        if (version, name) in stats and stats[(version, name)]:
            rows = stats[(version, name)]
            dumps = f"{statistics.median(r[0] for r in rows):.0f}"
            periodic = [r[2] / (r[0] - 1) for r in rows if r[0] > 1]  # the final dump's CPU is not in dump_cpu_ns
            per_dump = f"{statistics.median(periodic) / 1000:.0f}" if periodic else "-"
            size = f"{rows[-1][3]:,}"
        print(f"  {version:5} {name:8} {statistics.median(wall):7.3f} {statistics.median(cpu):7.3f} {spread:7.1%} "
              f"{statistics.median(wall) / statistics.median(exit_wall):9.3f}x {statistics.median(cpu) / statistics.median(exit_cpu):8.3f}x "
              f"{dumps:>6} {per_dump:>12} {size:>11}")
    print("\n  checks:")
    for version in binaries:
        if version in BUILD_FAILURES:
            print(f"  clang {version}: {BUILD_FAILURES[version]}")
        if version in relocation:
            cont_refs, exit_refs = relocation[version]
            ok = cont_refs > 0 and exit_refs == 0
            print(f"  clang {version}: {'' if ok else 'FAILED: '}relocation: "
                  f"__llvm_profile_counter_bias: {cont_refs} relocations in cont's lua-cont.o, {exit_refs} in exit-only's lua-ir.o")
        for (v, name), rows in stats.items():
            if v == version and rows:
                print(f"  clang {version}: {name}: dumps per run " + ", ".join(f"{r[0]} ({r[1]} skipped, {r[4]:.1f} s)" for r in rows))
        for note in checks[version]:
            print(f"  clang {version}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
