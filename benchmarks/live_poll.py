"""Live runs benchmark: what following live files costs pgod, per file and per poll.

Issue 20's target: "1,000 live files at the default interval cost pgod under 1 % of one core".

Real snapshots: a generated C program of `--functions` (1,000) small functions (a switch calls
each directly; an indirect call site with 8 targets and memcpy calls of a few sizes give it value
profiles), IR-instrumented by clang 14 (`--clang 14,19` for more), writes `--snapshots` (8)
cumulative snapshots of its own profile, each covering more of the program with more counts:
~83 KB each with clang 14 (~99 KB with 19), about the size of the demo's Lua.

A writer process of its own (this module with `--writer`, so pgod's CPU is measured alone) keeps
`--files` (1,000) live runs in the spool by the protocol of docs/design/live-protocol.md
(testbed.live.LiveWriter: OFD-locked, each snapshot renamed over the name). Run i starts at
snapshot i mod S (the runs are at every stage of their life from the start). Then, every
`--interval` seconds, a share of the runs (`--active` percent; a different slice each interval,
so every run moves on) publishes its next snapshot, the runs spread evenly over the interval as
independent processes would; a run at its last snapshot ends instead (its lock goes) and a new run
(a new name) starts at snapshot 0. At 0 % every run stays locked and unchanged: pgod's cheap path.

For each active share, a fresh `pgod --bus session` on a private bus with `live_interval_s =
--interval` (default: pgod's own default), threshold never reached (no builds):

1. set-up: the writer starts its runs; pgod follows them and counts their first snapshots (whole);
   the benchmark waits until all are counted, merged, and pgod's CPU is still for 2 s;
2. warm-up: `--warmup` seconds (default one interval) of publishing, not measured;
3. the measured window, `--duration` seconds: pgod's CPU (own + its waited-for children, i.e.
   llvm-profdata merges of the growth parts; /proc/PID/stat), CPU by thread, VmRSS sampled every
   0.5 s, the slowest GetStatus answer (one call every `--status-every` s), the package's live
   snapshots and bytes counted (read-only from pgod's SQLite), merges;
4. check (unless `--no-verify`): the writer ends every run; once pgod has counted their ends,
   deleted their files and merged everything, the package's profile must equal one
   `llvm-profdata merge` of each run's last snapshot (`show --all-functions --counts --ic-targets
   --memop-sizes`, equal-count value targets in any order): every growth counted exactly once.

Printed per share: files, interval, active %, polls per file in the window (duration / interval),
CPU s, net CPU s (less the benchmark's own GetStatus calls, at their cost measured while pgod is
idle), % of one core and CPU µs per file per poll (both from the net CPU), snapshots published
and growths counted in the window, merges, peak RSS, slowest GetStatus; then per share CPU by
thread, the pgod commit measured, the set-up, and the profile check. Nothing is asserted; no
growth counted while snapshots were published is flagged (a no-op measured is no measurement).
Fewer growths than snapshots is no loss: a run published twice between two reads counts once, and
`live_max_mb_per_poll` bounds what pgod reads of one uid an interval (the profile check is exact).

    .venv/bin/python -m benchmarks.live_poll [--files 1000] [--interval S] [--duration S]
        [--active 0,10,100] [--clang 14] [--quick] [--json] [--keep] [--cprofile DIR]
        [--max-mb-per-poll MB] [--max-runs-per-uid N] [--pgod-source DIR]

`--cprofile DIR`: the engine thread's cycles in the measured window run under cProfile, timed by
the thread's CPU clock (a sitecustomize on the daemon's PYTHONPATH wraps Engine._cycle; nothing in
pgod changes); one `engine-<clang>-<active>.prof` per share in DIR at the daemon's exit. It slows
the engine: its CPU figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import say
from pgod.config import Config
from testbed.bus import PrivateBus
from testbed.clangs import find_clang, missing_packages_message
from testbed.config import folders_under, write_config
from testbed.daemon import wait_for
from testbed.measured import MeasuredDaemon, thread_cpu

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "live"
DEFAULT_INTERVAL = Config.live_interval_s  # pgod's default (pgod/config.py; 60 s, then 300 s)
DEFAULT_BUDGET = Config.live_max_bytes_per_poll  # live bytes read per uid per interval
FULL = {"files": 1000, "interval": DEFAULT_INTERVAL, "duration": 5 * DEFAULT_INTERVAL}
QUICK = {"files": 200, "interval": 5.0, "duration": 30.0}
TARGET_PERCENT = 1.0  # of one core, for 1,000 files at the default interval


# ---- the program and its snapshots ----------------------------------------------------------------
def program_c(functions: int, rounds: int) -> str:
    """A program of ``functions`` small functions that writes a cumulative snapshot of its own
    profile (snap-<r>.profraw in its folder) after each of ``rounds`` rounds; round r reaches
    (r+1)/rounds of the functions, with more calls each round. A switch calls them directly (no
    site with more targets than the runtime keeps); one indirect call site has 8 targets and every
    100th function a memcpy of 3 sizes: value profiles that grow between snapshots."""
    lines = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
             "int __llvm_profile_write_file(void);", "void __llvm_profile_set_filename(const char *);",
             "static char src[64], dst[64];"]
    for i in range(functions):
        if i % 100 == 0:
            body = f"memcpy(dst, src, (size_t)((x ^ {i}u) % 3u + 1u) * 8u); return x + (unsigned)dst[{i % 8}];"
        else:
            body = (f"if ((x ^ {i}u) & {1 << (i % 5)}u) return x * {2 * i + 3}u + {i}u; "
                    f"if (x & 64u) return x ^ {i}u; return (x >> 1) ^ {i}u;")
        lines.append(f"__attribute__((noinline)) static unsigned f{i}(unsigned x) {{ {body} }}")
    lines.append("static unsigned dispatch(unsigned k, unsigned x) { switch (k) {")
    lines += [f"  case {i}u: return f{i}(x);" for i in range(functions)]
    lines.append("  default: return x; } }")
    lines.append("typedef unsigned (*fn)(unsigned);")
    lines.append("static fn hooks[] = {" + ",".join(f"f{i}" for i in range(min(8, functions))) + "};")
    lines.append(textwrap.dedent(f"""\
        int main(int argc, char **argv) {{
          int rounds = argc > 1 ? atoi(argv[1]) : {rounds};
          unsigned acc = 1;
          memset(src, 'x', sizeof src);
          for (int r = 0; r < rounds; r++) {{
            unsigned reach = {functions}u * (unsigned)(r + 1) / (unsigned)rounds;
            if (!reach) reach = 1;
            for (unsigned i = 0; i < 4000u * (unsigned)(r + 1); i++) {{
              acc = dispatch((i * 7u + (unsigned)r * 13u) % reach, acc + i);
              acc = hooks[(i * 31u + (unsigned)r) % {min(8, functions)}u](acc);
            }}
            char name[64];
            snprintf(name, sizeof name, "snap-%d.profraw", r);
            __llvm_profile_set_filename(name);
            if (__llvm_profile_write_file() != 0) return 3;
          }}
          __llvm_profile_set_filename("exit.profraw");
          printf("%u\\n", acc);
          return 0;
        }}"""))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Program:
    version: int
    build: Path  # the package's profile_build folder (its ELF attributes the snapshots)
    snapshots: list[Path]
    profdata: Path


def build_program(version: int, tmp: Path, functions: int, rounds: int) -> Program:
    clang = find_clang(version)
    if clang is None:
        raise SystemExit(missing_packages_message(version))
    build = tmp / f"clang-{version}" / "build"
    (build / "bin").mkdir(parents=True)
    source = build / "prog.c"
    source.write_text(program_c(functions, rounds))
    exe = clang.compile(source, build / "bin" / "prog", ir=True)
    run = tmp / f"clang-{version}" / "run"
    run.mkdir()
    subprocess.run([str(exe), str(rounds)], cwd=run, check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": str(run / "exit.profraw"), "PATH": "/usr/bin:/bin"})
    snapshots = [run / f"snap-{r}.profraw" for r in range(rounds)]
    return Program(version, build, snapshots, clang.profdata)


# ---- the writer process ---------------------------------------------------------------------------
def active_in(index: int, files: int, period: int, active: int) -> bool:
    """Does run ``index`` publish in ``period``? A different ``active`` % slice of the runs each
    period, so over 100/active periods every run moves on once."""
    bucket = index * 100 // files
    return (bucket + period * active) % 100 < active


def writer_main() -> int:
    """The writer process (`--writer`): JSON lines on stdin and stdout, see Writer."""
    from testbed.live import LiveWriter  # here: the parent does not need it

    spec = json.loads(sys.stdin.readline())
    files, interval, active = spec["files"], spec["interval"], spec["active"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < files + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, files + 64), hard))
    snapshots = [Path(p).read_bytes() for p in spec["snapshots"]]
    last = len(snapshots) - 1
    spool = Path(spec["spool"])
    serial = iter(range(100_000, 10**9))
    runs: list[list] = []  # [LiveWriter, snapshot index]
    ended = Counter()  # last snapshot index of every run that ended → how many
    for index in range(files):
        writer = LiveWriter(spool, pid=next(serial))
        writer.publish(snapshots[index % len(snapshots)])
        runs.append([writer, index % len(snapshots)])

    def reply(document: dict) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    reply({"ready": files, "bytes": sum(len(snapshots[k]) for _, k in runs)})
    for line in sys.stdin:
        words = line.split()
        if words[0] == "go":
            t0, t_measure, t_end = map(float, words[1:])
            stats = {"warmup": Counter(), "window": Counter()}
            period = 0
            while t0 + period * interval < t_end:
                for index in range(files):
                    at = t0 + period * interval + interval * index / files
                    if at >= t_end:
                        break
                    if not active_in(index, files, period, active):
                        continue
                    time.sleep(max(0.0, at - time.monotonic()))
                    counts = stats["window" if at >= t_measure else "warmup"]
                    run = runs[index]
                    if run[1] == last:
                        run[0].end()  # the process exits: its lock goes, the last snapshot stands
                        ended[last] += 1
                        counts["ended"] += 1
                        run[0] = LiveWriter(spool, pid=next(serial))
                        run[1] = 0
                        counts["started"] += 1
                    else:
                        run[1] += 1
                    run[0].publish(snapshots[run[1]])
                    counts["published"] += 1
                    counts["bytes"] += len(snapshots[run[1]])
                period += 1
            time.sleep(max(0.0, t_end - time.monotonic()))
            reply({key: dict(value) for key, value in stats.items()})
        elif words[0] == "end":
            for writer, index in runs:
                writer.end()
                ended[index] += 1
            reply({"last": {str(k): v for k, v in sorted(ended.items())}})
            return 0
    return 0


class Writer:
    """The writer process, driven over its stdin/stdout."""

    def __init__(self, spool: Path, program: Program, files: int, interval: float, active: int) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.live_poll", "--writer"], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._send(json.dumps({"spool": str(spool), "snapshots": [str(p) for p in program.snapshots],
                               "files": files, "interval": interval, "active": active}))

    def _send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the writer exited ({self.process.wait()})")
        return json.loads(line)

    def go(self, t0: float, t_measure: float, t_end: float) -> None:
        self._send(f"go {t0!r} {t_measure!r} {t_end!r}")

    def end(self) -> dict:
        self._send("end")
        last = self.answer()["last"]
        self.process.wait(30)
        return {int(k): v for k, v in last.items()}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---- pgod's figures ---------------------------------------------------------------------------------
def live_counted(daemon: MeasuredDaemon) -> tuple[int, int]:
    """(live snapshots, live bytes) the package has counted: read-only from pgod's SQLite."""
    row = daemon.db._query("SELECT live_snapshots, live_bytes FROM packages WHERE name = ?", PACKAGE)
    return (row[0], row[1]) if row else (0, 0)


def pending_parts(daemon: MeasuredDaemon) -> int:
    row = daemon.db._query("SELECT count(*) FROM parts WHERE status = 'pending'")
    return row[0] if row else 0


def alive_and(daemon: MeasuredDaemon, predicate):
    """``predicate`` for wait_for, failing at once (AssertionError) when pgod has exited."""
    def check():
        try:
            daemon.check_alive()
        except RuntimeError as err:
            raise AssertionError(str(err)) from None
        return predicate()
    return check


def live_files(spool: Path) -> int:
    with os.scandir(spool) as scan:
        return sum(1 for entry in scan if entry.name.startswith("live-"))


def canonical_show(profdata: Path, profile: Path) -> list[str]:
    """`llvm-profdata show` of everything, in an order that says nothing about the counts: the
    functions sorted by name (they come in hash-table order) and, within a value site, the
    targets of equal count in any order (sorted)."""
    text = subprocess.run([str(profdata), "show", "--all-functions", "--counts", "--ic-targets", "--memop-sizes",
                           str(profile)], capture_output=True, text=True, check=True).stdout
    head: list[str] = []
    functions: list[list[str]] = []  # each: "  <name>:" and its lines
    tail: list[str] = []  # the summary after the functions
    values: list[str] = []  # the value-target lines met last, not yet placed

    def place_values() -> list[str]:
        target = tail if tail else (functions[-1] if functions else head)
        target += sorted(values)
        values.clear()
        return target

    for line in text.splitlines():
        if line.startswith("\t[") and functions and not tail:
            values.append(line)
            continue
        target = place_values()
        if tail or (functions and not line.startswith((" ", "\t"))):
            tail.append(line)
        elif line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
            functions.append([line])
        else:
            target.append(line)
    place_values()
    return head + [line for block in sorted(functions) for line in block] + tail


def verify(daemon: MeasuredDaemon, program: Program, last: dict[int, int], work: Path) -> str:
    """The package's profile against one merge of every run's last snapshot."""
    document = json.loads(daemon.proxy().GetPackage(PACKAGE))
    profile = document.get("profile")
    if not profile:
        return "FAILED: the package has no profile"
    # Each snapshot listed once per run that ended there: `--weighted-input=N,FILE` is not the
    # same (llvm-profdata-14 scales memop-size values differently from N copies of FILE).
    listing = work / "expected-inputs.txt"
    listing.write_text("".join(f"{program.snapshots[k]}\n" * count for k, count in sorted(last.items())))
    expected = work / "expected.profdata"
    subprocess.run([str(program.profdata), "merge", "-o", str(expected), "-f", str(listing)], check=True, capture_output=True)
    got, want = canonical_show(program.profdata, Path(profile)), canonical_show(program.profdata, expected)
    if got == want:
        return f"identical ({sum(last.values())} runs)"
    differing = sum(1 for a, b in zip(got, want) if a != b) + abs(len(got) - len(want))
    return f"FAILED: {differing} of {len(want)} lines of `llvm-profdata show` differ"


class StatusProbe(threading.Thread):
    """GetStatus every ``every`` seconds: the slowest answer, and the daemon's live figures."""

    def __init__(self, daemon: MeasuredDaemon, every: float) -> None:
        super().__init__(name="status-probe", daemon=True)
        self.daemon_under_test, self.every = daemon, every
        self.latencies: list[float] = []
        self.failures = 0
        self.over_limit = 0
        self.followed: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            began = time.monotonic()
            try:
                live = self.daemon_under_test.status(timeout=60)["daemon"]["live"]
                self.over_limit = max(self.over_limit, live["over_limit"])
                self.followed.append(live["followed"])
            except Exception:
                self.failures += 1
            self.latencies.append(time.monotonic() - began)

    def stop(self) -> None:
        self._done.set()
        self.join(120)


# ---- cProfile of the engine's cycles, without touching pgod -----------------------------------
SITECUSTOMIZE = '''\
import os
_dir = os.environ.get("PGOD_BENCH_CPROFILE")
if _dir:
    import atexit, cProfile, functools, time
    from pgod.daemon import engine as _engine
    _profile = cProfile.Profile(time.thread_time)  # the engine thread's CPU, not its waits
    _flag = os.path.join(_dir, "on")
    _original = _engine.Engine._cycle

    @functools.wraps(_original)
    def _cycle(self, names):
        if not os.path.exists(_flag):
            return _original(self, names)
        _profile.enable()
        try:
            return _original(self, names)
        finally:
            _profile.disable()

    _engine.Engine._cycle = _cycle
    atexit.register(lambda: _profile.dump_stats(os.path.join(_dir, os.environ["PGOD_BENCH_CPROFILE_NAME"])))
'''


def pgod_commit() -> str:
    """The checkout's commit the daemon is started from, "+changes" when pgod/ differs from it
    (other engineers commit meanwhile: each share's daemon imports pgod afresh)."""
    if MeasuredDaemon.extra_env.get("PYTHONPATH"):
        return f"PYTHONPATH={MeasuredDaemon.extra_env['PYTHONPATH']}"
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pgod"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ---- one active share ---------------------------------------------------------------------------
def measure(args, program: Program, active: int, bus: PrivateBus, tmp: Path) -> dict:
    root = tmp / f"clang-{program.version}-active-{active}"
    spool = root / "spool"
    spool.mkdir(parents=True)
    top = {**folders_under(root), "threshold_mb": 1000000, "live_interval_s": args.interval}
    if args.max_runs_per_uid:
        top["live_max_runs_per_uid"] = args.max_runs_per_uid
    if args.max_mb_per_poll:
        top["live_max_mb_per_poll"] = args.max_mb_per_poll
    tables = {PACKAGE: {"profile_build": [str(program.build)], "build": ["true"], "llvm_profdata": str(program.profdata)}}
    config = write_config(root / "pgod.toml", top, tables)
    env = dict(MeasuredDaemon.extra_env)
    flag = None
    if args.cprofile:
        hook = tmp / "cprofile-hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        flag = args.cprofile / "on"
        flag.unlink(missing_ok=True)
        MeasuredDaemon.extra_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])),
                                    "PGOD_BENCH_CPROFILE": str(args.cprofile),
                                    "PGOD_BENCH_CPROFILE_NAME": f"engine-{program.version}-{active}.prof"}
    commit = pgod_commit()
    daemon = MeasuredDaemon(bus, config, root, root / "pgod.log")
    MeasuredDaemon.extra_env = env
    writer: Writer | None = None
    result: dict = {"clang": program.version, "files": args.files, "interval_s": args.interval, "active_percent": active,
                    "duration_s": args.duration, "snapshot_bytes": [p.stat().st_size for p in program.snapshots],
                    "pgod_commit": commit}
    try:
        daemon.wait_on_bus()
        say(f"clang {program.version}, {active} % active: {args.files} live runs starting")
        began = time.monotonic()
        writer = Writer(spool, program, args.files, args.interval, active)
        writer.answer()
        cpu_before_setup = sum(daemon.cpu())
        wait_for(alive_and(daemon, lambda: live_counted(daemon)[0] >= args.files and pending_parts(daemon) == 0),
                 args.setup_timeout, "the first snapshots of every run counted and merged", interval=0.5)
        daemon.wait_idle(quiet=2.0, timeout=120)
        result["setup"] = {"seconds": round(time.monotonic() - began, 1),
                           "cpu_s": round(sum(daemon.cpu()) - cpu_before_setup, 2), "rss_mb": round(daemon.rss_mb(), 1)}
        result["status_call_cpu_s"] = status_call_cpu(daemon)
        say(f"  set up in {result['setup']['seconds']} s (pgod {result['setup']['cpu_s']} s CPU); "
            f"warm-up {args.warmup:g} s, then {args.duration:g} s measured")

        t0 = time.monotonic() + 0.5
        t_measure = t0 + args.warmup
        t_end = t_measure + args.duration
        writer.go(t0, t_measure, t_end)
        time.sleep(max(0.0, t_measure - time.monotonic()))
        daemon.check_alive()
        if flag is not None:
            flag.touch()
        own0, kids0 = daemon.cpu()
        threads0 = thread_cpu(daemon.pid)
        merges0 = daemon.db.merges(PACKAGE)[0]
        counted0 = live_counted(daemon)
        log_at = daemon.log_path.stat().st_size
        probe = StatusProbe(daemon, args.status_every)
        probe.start()
        rss_peak, rss_samples = 0.0, []
        while time.monotonic() < t_end:
            daemon.check_alive()
            rss = daemon.rss_mb()
            rss_peak = max(rss_peak, rss)
            rss_samples.append(rss)
            time.sleep(min(0.5, max(0.0, t_end - time.monotonic())))
        own1, kids1 = daemon.cpu()
        threads1 = thread_cpu(daemon.pid)
        merges1 = daemon.db.merges(PACKAGE)[0]
        counted1 = live_counted(daemon)
        if flag is not None:
            flag.unlink(missing_ok=True)
        probe.stop()
        published = writer.answer()
        cpu = (own1 - own0) + (kids1 - kids0)
        # The benchmark's own GetStatus calls are no cost of the live files: taken out of the
        # per-core and per-file figures (at their cost measured while idle), shown apart.
        probe_cpu = len(probe.latencies) * result["status_call_cpu_s"]
        net = max(0.0, cpu - probe_cpu)
        polls = args.duration / args.interval
        window = published.get("window", {})
        result.update({
            "polls_per_file": polls,
            "cpu_s": round(cpu, 3),
            "own_cpu_s": round(own1 - own0, 3),
            "children_cpu_s": round(kids1 - kids0, 3),
            "net_cpu_s": round(net, 3),
            "percent_of_core": round(100 * net / args.duration, 3),
            "us_per_file_per_poll": round(1e6 * net / (args.files * polls), 1),
            "threads_cpu_s": {name: round(threads1.get(name, 0.0) - threads0.get(name, 0.0), 3)
                              for name in sorted(set(threads0) | set(threads1))
                              if threads1.get(name, 0.0) - threads0.get(name, 0.0) > 0},
            "merges": merges1 - merges0,
            "published": window.get("published", 0),
            "published_bytes": window.get("bytes", 0),
            "runs_ended": window.get("ended", 0),
            "warmup_published": published.get("warmup", {}).get("published", 0),
            "growths_counted": counted1[0] - counted0[0],
            "growth_bytes_counted": counted1[1] - counted0[1],
            "rss_mb_end": round(rss_samples[-1], 1) if rss_samples else None,
            "rss_mb_peak": round(rss_peak, 1),
            "hwm_mb": round(daemon.hwm_mb(), 1),
            "status_max_s": round(max(probe.latencies), 3) if probe.latencies else None,
            "status_calls": len(probe.latencies),
            "status_probe_cpu_s": round(probe_cpu, 3),
            "status_failures": probe.failures,
            "followed": max(probe.followed) if probe.followed else None,
            "over_limit_max": probe.over_limit,
            "log_events": log_counts(daemon.log_path, log_at),
        })
        result["counting"] = counting_verdict(result, active)
        budget = args.max_mb_per_poll << 20 if args.max_mb_per_poll else DEFAULT_BUDGET
        per_interval = budget // max(result["snapshot_bytes"])
        result["budget_reads_per_interval"] = per_interval
        if result["published"] > per_interval * polls:
            result["counting"] += (f"; live_max_mb_per_poll ({budget >> 20} MB a uid an interval) reads at most "
                                   f"~{per_interval} snapshots of this size an interval: runs are read less often")
        say(f"  {result['percent_of_core']:.3f} % of a core, {result['us_per_file_per_poll']} µs/file/poll; "
            f"published {result['published']}, counted {result['growths_counted']} ({result['counting']})")

        if not args.no_verify:
            last = writer.end()
            writer = None
            # An ended run is read once more (its bytes against the baseline), within the bytes
            # per uid per interval: many ends take as many intervals as their first snapshots did.
            say(f"  every run ended; waiting for pgod to take the ends (up to {args.setup_timeout:g} s) and merge")
            try:
                wait_for(alive_and(daemon, lambda: live_files(spool) == 0 and pending_parts(daemon) == 0),
                         args.setup_timeout, "every run's end taken, its file deleted, everything merged", interval=0.5)
            except AssertionError as err:
                daemon.check_alive()
                result["verified"] = (f"NOT CHECKED: {err} ({live_files(spool)} live files left, "
                                      f"{pending_parts(daemon)} parts pending)")
            else:
                daemon.wait_idle(quiet=2.0, timeout=120)
                result["verified"] = verify(daemon, program, last, root)
            say(f"  profile check: {result['verified']}")
        result["log_warnings"] = warnings_in(daemon.log_path)
    finally:
        if writer is not None:
            writer.kill()
        daemon.stop()
        if args.cprofile:
            (args.cprofile / "on").unlink(missing_ok=True)
    return result


def status_call_cpu(daemon: MeasuredDaemon, calls: int = 10) -> float:
    """pgod's CPU for one GetStatus answer built afresh (calls 0.6 s apart: past its 0.5 s cache),
    while it is otherwise idle: what the window's probe adds to the figures."""
    cpu = sum(daemon.cpu())
    for _ in range(calls):
        daemon.status()
        time.sleep(0.6)
    return round((sum(daemon.cpu()) - cpu) / calls, 4)


def counting_verdict(result: dict, active: int) -> str:
    """Were the growths really counted? A snapshot published is read soon after its rename (or at
    its run's next interval); a run published twice between two reads counts once, so fewer
    growths than snapshots is no loss (the profile check after the window is the exact one), but
    none at all would be a no-op measured."""
    published, counted = result["published"], result["growths_counted"]
    if active == 0:
        return "ok: nothing published, nothing counted" if counted == 0 else f"UNEXPECTED: {counted} counted"
    if not published:
        return "UNEXPECTED: nothing published"
    if not counted:
        return "UNEXPECTED: nothing counted"
    return f"{100 * counted / published:.0f} % of the snapshots published as growths"


LOG_EVENTS = ("live.grew", "live.ended", "live.not_a_snapshot", "spool.events_lost", "spool.scan", "merge.done")


def log_counts(path: Path, since: int) -> dict[str, int]:
    with open(path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return {event: text.count(f'"{event}"') for event in LOG_EVENTS}


def warnings_in(path: Path, limit: int = 10) -> list[str]:
    """pgod's warning and error lines (JSON log), the first ``limit``."""
    found = []
    with open(path, errors="replace") as log:
        for line in log:
            if "daemon.spool_unprotected" in line:  # this machine's sysctls, not the benchmark's matter
                continue
            if re.search(r'"level": ?"(warning|error|critical)"', line) or "Traceback" in line:
                found.append(line.strip()[:400])
                if len(found) >= limit:
                    break
    return found


# ---- main -------------------------------------------------------------------------------------------
def render(results: list[dict]) -> str:
    head = (f"{'clang':>5} {'files':>6} {'interval':>8} {'active':>6} {'polls':>5} {'CPU s':>8} {'net CPU s':>9} "
            f"{'% core':>7} {'µs/file/poll':>12} {'published':>9} {'counted':>7} {'merges':>6} {'RSS MB':>7} {'status max':>10}")
    lines = [head]
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    for r in results:
        lines.append(
            f"{r['clang']:>5} {r['files']:>6} {r['interval_s']:>7g}s {r['active_percent']:>5}% {r['polls_per_file']:>5.1f} "
            f"{r['cpu_s']:>8.2f} {r['net_cpu_s']:>9.2f} {r['percent_of_core']:>6.3f}% {r['us_per_file_per_poll']:>12.1f} {r['published']:>9} "
            f"{r['growths_counted']:>7} {r['merges']:>6} {r['rss_mb_peak']:>7.1f} {r['status_max_s'] or float('nan'):>9.3f}s")
    lines.append("")
    for r in results:
        lines.append(f"clang {r['clang']}, {r['active_percent']} % (pgod {r.get('pgod_commit')}): own {r['own_cpu_s']} s + children (llvm-profdata) "
                     f"{r['children_cpu_s']} s; by thread {r['threads_cpu_s']}; counting {r['counting']}; "
                     f"growth bytes {r['growth_bytes_counted']:,} of {r['published_bytes']:,} published; "
                     f"set-up {r['setup']}; RSS end {r['rss_mb_end']} MB, VmHWM {r['hwm_mb']} MB; "
                     f"status calls {r['status_calls']} (failed {r['status_failures']}; ~{r['status_probe_cpu_s']} s of the CPU); followed {r['followed']}, "
                     f"over limit {r['over_limit_max']}; log {r['log_events']}; verified: {r.get('verified', 'not checked')}")
        for warning in r.get("log_warnings", []):
            lines.append(f"    log: {warning}")
    for r in failed:
        lines.append(f"clang {r['clang']}, {r['active_percent']} %: FAILED: {r['error']}")
    target = [r for r in results if r["files"] >= 1000 and r["interval_s"] == DEFAULT_INTERVAL]
    if target:
        worst = max(target, key=lambda r: r["percent_of_core"])
        lines.append(f"target: 1,000 live files at the default interval under {TARGET_PERCENT:g} % of one core: "
                     f"highest measured {worst['percent_of_core']:.3f} % ({worst['active_percent']} % active)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_poll", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a short smoke run {QUICK}")
    parser.add_argument("--files", type=int, help="live runs kept by the writer (default 1000)")
    parser.add_argument("--interval", type=float, help=f"live_interval_s, and the writer's period (default {DEFAULT_INTERVAL:g}: pgod's default)")
    parser.add_argument("--duration", type=float, help="the measured window in seconds (default 5 intervals)")
    parser.add_argument("--warmup", type=float, help="seconds of publishing before the window (default one interval)")
    parser.add_argument("--active", default="0,10,100", help="percent of the runs publishing each interval, comma-separated")
    parser.add_argument("--clang", default="14", help="clang versions, comma-separated (14, 19)")
    parser.add_argument("--functions", type=int, default=1000, help="functions in the program (1000: ~83 KB snapshots)")
    parser.add_argument("--snapshots", type=int, default=8, help="snapshots in a run's life")
    parser.add_argument("--status-every", type=float, default=10.0, help="seconds between GetStatus calls in the window")
    parser.add_argument("--max-runs-per-uid", type=int, help="live_max_runs_per_uid (default: pgod's)")
    parser.add_argument("--max-mb-per-poll", type=int,
                        help="live_max_mb_per_poll (default: pgod's, 32: read per uid per interval)")
    parser.add_argument("--setup-timeout", type=float,
                        help="how long the first snapshots may take to count (default: as many intervals as the "
                             "per-uid bytes per interval need to read them all, plus two, at least 600 s)")
    parser.add_argument("--no-verify", action="store_true", help="skip the exactly-once profile check after the window")
    parser.add_argument("--pgod-source", type=Path, help="run the daemon from this folder's pgod package (PYTHONPATH)")
    parser.add_argument("--cprofile", type=Path, help="profile the engine's cycles in the window into this folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--save", type=Path, help="append each share's figures to this file as a JSON line when it ends")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, state)")
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key in ("files", "interval", "duration"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.warmup is None:
        args.warmup = args.interval
    if args.setup_timeout is None:
        # live_max_mb_per_poll lets pgod read only so many bytes of one uid's live files an
        # interval: the first snapshots of many runs take several intervals.
        budget = args.max_mb_per_poll << 20 if args.max_mb_per_poll else DEFAULT_BUDGET
        intervals = -(-args.files * 100_000 // budget)
        args.setup_timeout = max(600.0, (intervals + 2) * args.interval)
    args.active_shares = [int(a) for a in args.active.split(",")]
    args.clangs = [int(c) for c in args.clang.split(",")]
    if any(not 0 <= a <= 100 for a in args.active_shares):
        parser.error("--active: percents between 0 and 100")
    if args.cprofile:
        args.cprofile = args.cprofile.resolve()
        args.cprofile.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.writer:
        return writer_main()
    if shutil.which("dbus-daemon") is None:
        print("benchmark: dbus-daemon not found (apt-get install dbus)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    if args.pgod_source is not None:
        MeasuredDaemon.extra_env = {"PYTHONPATH": str(args.pgod_source.resolve())}
    tmp = Path(tempfile.mkdtemp(prefix="pgod-live-poll-", dir="/tmp"))
    began = time.monotonic()
    results = []
    bus = None
    try:
        say(f"working in {tmp}")
        programs = []
        for version in args.clangs:
            program = build_program(version, tmp, args.functions, args.snapshots)
            sizes = [p.stat().st_size for p in program.snapshots]
            say(f"clang {version}: {len(sizes)} snapshots of {min(sizes):,}–{max(sizes):,} bytes")
            programs.append(program)
        bus = PrivateBus(tmp, log=tmp / "dbus-daemon.log")
        for program in programs:
            for active in args.active_shares:
                try:
                    result = measure(args, program, active, bus, tmp)
                except Exception as err:  # one share's failure is reported, the others still run
                    say(f"  FAILED: {type(err).__name__}: {err}")
                    result = {"clang": program.version, "active_percent": active, "error": f"{type(err).__name__}: {err}"}
                results.append(result)
                if args.save:
                    with open(args.save, "a") as saved:
                        saved.write(json.dumps(result) + "\n")
    finally:
        if bus is not None:
            bus.close()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"total {time.monotonic() - began:.0f} s")
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
