"""Maturity benchmark: how a PGO profile merged from many short runs' raw profiles settles, to set
pgod's maturity defaults from measured numbers instead of a byte count.

Run from the repository root:  .venv/bin/python -m benchmarks.maturity [--quick] [--json] [--chart PNG]

The figure is pgod's own (pgod.profiles): the per-level overlap of two profiles by LLVM's
definition (overlap.level_overlap → changed_percent), from `llvm-profdata-14 show --all-functions
--counts` (`--showcs` for the context-sensitive level) parsed by tool.parse_show. The rules it
informs: a checkpoint every threshold/4 raw bytes; the "step change" is the changed_percent of the
profile at a checkpoint against the one at the previous checkpoint; the first build waits until
the step change is ≤ settled_percent; a later build needs the profile to have changed by ≥
rebuild_change_percent since the profile the build in use was made from.

Two real C programs, instrumented with clang-14 -O2 -fprofile-generate (IR instrumentation):

  lua     Lua 5.4 (onelua.c, from the lupa sdist the demo downloads, cached in demo-state/download)
  brotli  the `brotli` CLI (c/tools/brotli.c + c/common c/enc c/dec of the `brotli` sdist on PyPI,
          `pip download brotli --no-binary :all:`, cached there too)

Each program runs a workload as many small runs, one process and one .profraw each (short
program runs, as pgod sees them), the choice of each run random with a fixed seed:

  lua     mix "demo": one of demo/workload/*.lua per run, its size argument random (a fraction
          of the demo's default), so a run takes ~0.1 s instrumented;
  brotli  mix "text": compress a random slice (2-64 KB) of one of the four English texts of the
          sdist's tests/testdata at a random quality 0-11.

Every `--chunk` runs (a checkpoint) the chunk's raw files are merged into one profile and that
onto the cumulative one (as pgod merges), which is shown and parsed. From the checkpoints:

(a) the step change at the spacing the rule uses, threshold/4 raw bytes, for thresholds of
    `--thresholds-mb` (2,8,16,64: 64 MB is pgod's default), and where it first drops to ≤ 0.5 / 1
    / 2 / 5 % (and from where it stays there); also the change of the later profiles against the
    one at the threshold itself;
(b) the build point: the profile at the end of that first mix. From it, three branches of
    `--branch-runs` runs each, cumulative on top of it: the SAME mix again (new random draws:
    the noise a rebuild rule must ignore) and two CHANGED mixes (lua: only strings.lua + json.lua;
    the demo mix with json.lua three times as likely; brotli: decompression only; binary inputs
    (mapsdatazrh, bb.binast, random_org_10k.bin, compressed_file) at the same qualities), each
    with its change against the build profile as the added raw bytes grow;
(c) the cost of one figure: wall and CPU seconds of `llvm-profdata show` per profile, parse and
    overlap seconds, the profile's size, functions and counters.

`--cs` adds pgod's second stage for lua: built with -fprofile-use=<the build profile>
-fcs-profile-generate, the demo mix run again, the same curves on the context-sensitive level.

Every process the benchmark starts runs at nice 10 (it renices itself). Work happens in a fresh
/tmp/pgod-maturity-* folder (removed at the end unless `--keep`); the instrumented builds are
cached in demo-state/maturity/. Progress goes to stderr; the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import say
from pgod.profiles.overlap import level_overlap
from pgod.profiles.tool import parse_show, run_tool

ROOT = Path(__file__).resolve().parent.parent
CLANG = "/usr/bin/clang-14"
PROFDATA = "/usr/bin/llvm-profdata-14"
DOWNLOAD = ROOT / "demo-state" / "download"  # the demo's download cache (demo/sources.py)
BUILD_CACHE = ROOT / "demo-state" / "maturity"
WORKLOAD_DIR = ROOT / "demo" / "workload"
LUPA_VERSION = "2.8"  # demo/common.py's
BROTLI_VERSION = "1.2.1"
MARKS = (0.5, 1.0, 2.0, 5.0)  # step change marks, percent
FRACTIONS = (0.05, 0.1, 0.2, 0.33)  # added raw bytes, as a share of the build profile's, for (b)
INSTRUMENT = ["-O2", "-fprofile-generate"]


class BenchError(Exception):
    pass


# ---- sources and builds -------------------------------------------------------------------------
def _pip_download(spec: str, name: str, env_extra: dict[str, str] | None = None) -> Path:
    """`pip download SPEC --no-binary :all: --no-deps` into the download cache, once."""
    target = DOWNLOAD / name
    if target.exists():
        return target
    DOWNLOAD.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="maturity-dl-", dir=DOWNLOAD))
    try:
        say(f"pip download {spec} (source distribution) into {DOWNLOAD.relative_to(ROOT)}, once")
        argv = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                "--disable-pip-version-check", "-d", str(scratch), spec]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, **(env_extra or {})})
        got = scratch / name
        if done.returncode != 0 or not got.exists():
            raise BenchError(f"pip download {spec} failed (exit {done.returncode}): {(done.stdout + done.stderr)[-800:]}")
        got.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _extract(sdist: Path, prefix: str, target: Path) -> None:
    """The regular files under ``prefix`` of the sdist, to ``target`` (atomically)."""
    scratch = target.with_name(target.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if not name.startswith(prefix) or not member.isfile() or ".." in name.split("/"):
                continue
            out = scratch / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.extractfile(member).read())
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)


def _compile(argv: list[str], cwd: Path, out: Path) -> Path:
    """``argv`` (its output ``out``), cached by the command and the sources' digest."""
    if out.exists():
        return out
    say(f"compile: (cd {cwd} && {' '.join(argv)})")
    begun = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"compile failed (exit {done.returncode}): {done.stderr[-1500:]}")
    say(f"  took {time.perf_counter() - begun:.1f} s")
    return out


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def lua_sources() -> tuple[Path, str]:
    sdist = _pip_download(f"lupa=={LUPA_VERSION}", f"lupa-{LUPA_VERSION}.tar.gz", {"LUPA_NO_LUAJIT": "true"})
    src = BUILD_CACHE / f"lua-src-{LUPA_VERSION}"
    if not (src / "onelua.c").exists():
        _extract(sdist, f"lupa-{LUPA_VERSION}/third-party/lua54/", src)
    fields = {}
    for line in (src / "lua.h").read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("LUA_VERSION_"):
            fields[parts[1]] = parts[2].strip('"')
    return src, ".".join(fields.get(f"LUA_VERSION_{k}", "?") for k in ("MAJOR", "MINOR", "RELEASE"))


def build_lua(src: Path, flags: list[str], out: Path | None = None) -> Path:
    """The demo's compile (demo/lua.nix: cc -O2 -DMAKE_LUA onelua.c -lm) with ``flags``."""
    out = out or BUILD_CACHE / f"lua-{_key(CLANG, *flags, LUPA_VERSION)}" / "lua"
    out.parent.mkdir(parents=True, exist_ok=True)
    return _compile([CLANG, *flags, "-DMAKE_LUA", "-o", str(out), "onelua.c", "-lm"], src, out)


def brotli_sources() -> Path:
    sdist = _pip_download(f"brotli=={BROTLI_VERSION}", f"brotli-{BROTLI_VERSION}.tar.gz")
    src = BUILD_CACHE / f"brotli-src-{BROTLI_VERSION}"
    if not (src / "c" / "tools" / "brotli.c").exists():
        _extract(sdist, f"brotli-{BROTLI_VERSION}/", src)
    return src


def build_brotli(src: Path, flags: list[str]) -> Path:
    out = BUILD_CACHE / f"brotli-{_key(CLANG, *flags, BROTLI_VERSION)}" / "brotli"
    out.parent.mkdir(parents=True, exist_ok=True)
    files = ["c/tools/brotli.c", *(str(p.relative_to(src)) for d in ("common", "dec", "enc")
                                    for p in sorted((src / "c" / d).glob("*.c")))]
    return _compile([CLANG, *flags, "-Ic/include", "-o", str(out), *files, "-lm"], src, out)


# ---- workloads ----------------------------------------------------------------------------------
@dataclass
class Mix:
    """One workload mix: a random run's argv (and stdin file, if any)."""

    name: str
    describe: str
    draw: Callable[[random.Random], tuple[list[str], Path | None]]


def lua_mixes(exe: Path) -> dict[str, Mix]:
    # Each script's size argument: a fraction of the demo's default, so a run takes ~0.05-0.2 s.
    sizes = {
        "closures.lua": lambda r: [str(r.randint(30000, 120000))],
        "fib.lua": lambda r: [str(r.randint(22, 28))],
        "json.lua": lambda r: [str(r.randint(80, 320))],
        "life.lua": lambda r: [str(r.randint(48, 128)), str(r.randint(10, 40))],
        "sort.lua": lambda r: [str(r.randint(5000, 20000))],
        "strings.lua": lambda r: [str(r.randint(5000, 20000))],
    }
    scripts = sorted(p.name for p in WORKLOAD_DIR.glob("*.lua"))
    if sorted(sizes) != scripts:
        raise BenchError(f"demo/workload has {scripts}, this benchmark knows {sorted(sizes)}")

    def of(choices: list[str]):
        def draw(r: random.Random):
            script = r.choice(choices)
            return [str(exe), str(WORKLOAD_DIR / script), *sizes[script](r)], None
        return draw

    return {
        "demo": Mix("demo", "one of the 6 demo/workload scripts a run, random size", of(scripts)),
        "strings+json": Mix("strings+json", "only strings.lua and json.lua", of(["strings.lua", "json.lua"])),
        "json x3": Mix("json x3", "the demo mix, json.lua 3x as likely", of(scripts + ["json.lua", "json.lua"])),
    }


TEXTS = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")
BINARIES = ("mapsdatazrh", "bb.binast", "random_org_10k.bin", "compressed_file")


def brotli_mixes(exe: Path, src: Path, work: Path) -> dict[str, Mix]:
    """Inputs: random slices of the sdist's test data, made once (deterministic)."""
    data = src / "tests" / "testdata"
    inputs = work / "brotli-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    r = random.Random(1234)

    def slices(names, count, prefix):
        made = []
        for i in range(count):
            blob = (data / names[i % len(names)]).read_bytes()
            size = min(len(blob), r.randint(2048, 65536))
            start = r.randint(0, len(blob) - size)
            path = inputs / f"{prefix}-{i:02d}"
            path.write_bytes(blob[start:start + size])
            made.append(path)
        return made

    text, binary = slices(TEXTS, 32, "text"), slices(BINARIES, 32, "bin")
    compressed = []
    scratch = work / "brotli-scratch"
    scratch.mkdir(exist_ok=True)
    for i, path in enumerate(text):  # the decompression inputs: the text slices at qualities 0-11
        out = inputs / f"{path.name}.br"
        env = {**os.environ, "LLVM_PROFILE_FILE": str(scratch / "setup-%p.profraw")}
        subprocess.run([str(exe), "-f", "-q", str(i % 12), "-o", str(out), str(path)], check=True, env=env)
        compressed.append(out)
    shutil.rmtree(scratch)

    def compress(pool):
        def draw(rr: random.Random):
            return [str(exe), "-c", "-q", str(rr.randint(0, 11)), str(rr.choice(pool))], None
        return draw

    def decompress(rr: random.Random):
        return [str(exe), "-d", "-c", str(rr.choice(compressed))], None

    return {
        "text": Mix("text", "compress a 2-64 KB text slice at quality 0-11", compress(text)),
        "decompress": Mix("decompress", "decompress only (the text slices' .br)", decompress),
        "binary": Mix("binary", "compress binary slices (maps, binast, random, .br) at 0-11", compress(binary)),
    }


# ---- runs, checkpoints, figures -----------------------------------------------------------------
@dataclass
class Shown:
    functions: list
    show_wall_s: float
    show_cpu_s: float
    parse_s: float
    profdata_bytes: int


def show(profile: Path, cs: bool) -> Shown:
    argv = [PROFDATA, "show", "--all-functions", "--counts", *(["--showcs"] if cs else []), str(profile)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begun = time.perf_counter()
    text = run_tool(argv)
    wall = time.perf_counter() - begun
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parsed = parse_show(text)
    parse_s = time.perf_counter() - begun - wall
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Shown(parsed.functions, wall, cpu, parse_s, profile.stat().st_size)


def merge(out: Path, inputs: list[Path]) -> None:
    done = subprocess.run([PROFDATA, "merge", "-o", str(out), *map(str, inputs)], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"llvm-profdata merge failed: {done.stderr[-500:]}")


@dataclass
class Checkpoint:
    runs: int
    raw_bytes: int
    shown: Shown
    profile: Path
    step_fine: float | None = None  # changed_percent against the previous checkpoint
    vs_base: float | None = None  # against the series' base profile (a branch's build profile)
    overlap_s: float = 0.0


@dataclass
class Series:
    program: str
    mix: str
    level: str  # "IR" or "CS"
    base: Checkpoint | None  # a branch: the build profile it starts from
    checkpoints: list[Checkpoint] = field(default_factory=list)
    alone: Shown | None = None  # a branch: its own runs alone, merged from scratch
    run_wall_s: float = 0.0
    merge_s: float = 0.0


def run_series(program: str, mix: Mix, runs: int, chunk: int, seed: int, work: Path, cs: bool = False,
               base: Checkpoint | None = None) -> Series:
    """``runs`` runs of ``mix``, a checkpoint every ``chunk``: cumulative profiles (on top of
    ``base``'s, if given) with their show/parse figures and change against the previous one and
    against ``base``."""
    series = Series(program, mix.name, "CS" if cs else "IR", base)
    folder = work / f"{program}-{mix.name.replace(' ', '_').replace('+', '_')}-{series.level}-{seed}"
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    previous = base
    raw_total = base.raw_bytes if base else 0
    done_runs = base.runs if base else 0
    began = time.monotonic()
    for index in range((runs + chunk - 1) // chunk):
        n = min(chunk, runs - index * chunk)
        raws = []
        t0 = time.perf_counter()
        for i in range(n):
            argv, stdin = mix.draw(rng)
            raw = folder / f"{index:05d}-{i:03d}.profraw"
            done = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ, "LLVM_PROFILE_FILE": str(raw)}, cwd=WORKLOAD_DIR)
            if done.returncode != 0 or not raw.exists():
                raise BenchError(f"{' '.join(argv)} exited {done.returncode} (raw written: {raw.exists()}): "
                                 f"{done.stderr.decode(errors='replace')[-300:]}")
            raws.append(raw)
        t1 = time.perf_counter()
        series.run_wall_s += t1 - t0
        raw_total += sum(p.stat().st_size for p in raws)
        done_runs += n
        chunk_profile = folder / f"chunk-{index:05d}.profdata"
        merge(chunk_profile, raws)
        for p in raws:
            p.unlink()
        if base is not None:  # the branch's own runs, merged apart too
            alone = folder / "alone.profdata"
            if alone.exists():
                merge(folder / "alone.tmp", [alone, chunk_profile])
                (folder / "alone.tmp").rename(alone)
            else:
                shutil.copyfile(chunk_profile, alone)
        cumulative = folder / f"cum-{index:05d}.profdata"
        if previous is None:
            chunk_profile.rename(cumulative)
        else:
            merge(cumulative, [previous.profile, chunk_profile])
            chunk_profile.unlink()
        series.merge_s += time.perf_counter() - t1
        point = Checkpoint(done_runs, raw_total, show(cumulative, cs), cumulative)
        t2 = time.perf_counter()
        if previous is not None:
            point.step_fine = level_overlap(previous.shown.functions, point.shown.functions)["changed_percent"]
        if base is not None:
            point.vs_base = level_overlap(base.shown.functions, point.shown.functions)["changed_percent"]
        point.overlap_s = (time.perf_counter() - t2) / max(1, (previous is not None) + (base is not None))
        # Keep only the profiles a later figure needs: the previous one (deleted next round) and the last.
        if previous is not None and previous is not base and index > 0:
            previous.profile.unlink(missing_ok=True)
            previous.profile = None
        series.checkpoints.append(point)
        previous = point
        if index % 10 == 0 or done_runs == (base.runs if base else 0) + runs:
            say(f"  {program} {mix.name} {series.level}: {done_runs - (base.runs if base else 0)}/{runs} runs, "
                f"raw {raw_total / 1e6:.1f} MB, step {point.step_fine}, vs build {point.vs_base}  "
                f"[{time.monotonic() - began:.0f} s]")
    if base is not None:
        series.alone = show(folder / "alone.profdata", cs)
    return series


def spaced(points: list[Checkpoint], spacing: float, start_bytes: int = 0) -> list[Checkpoint]:
    """The checkpoints the rule would have: the first at or past each multiple of ``spacing`` raw bytes."""
    chosen, mark = [], spacing
    for p in points:
        if p.raw_bytes - start_bytes >= mark:
            chosen.append(p)
            while p.raw_bytes - start_bytes >= mark:
                mark += spacing
    return chosen


def steps_at(points: list[Checkpoint], spacing: float) -> list[dict]:
    """Step change at each rule checkpoint (threshold/4 = ``spacing`` bytes apart), and how far
    that checkpoint's profile still is from the series' last (the best estimate of where it goes)."""
    chosen = spaced(points, spacing)
    final = points[-1].shown.functions
    out = []
    for before, after in zip(chosen, chosen[1:]):
        change = level_overlap(before.shown.functions, after.shown.functions)["changed_percent"]
        out.append({"runs": after.runs, "raw_bytes": after.raw_bytes, "step_percent": change,
                    "to_end_percent": level_overlap(after.shown.functions, final)["changed_percent"]})
    return out


def first_below(steps: list[dict], mark: float) -> dict:
    """The first rule checkpoint with step ≤ mark, the first of two in a row, the first from which
    every later one is; each with its profile's change to the series' last profile."""
    first = next((s for s in steps if s["step_percent"] <= mark), None)
    twice = next((b for a, b in zip(steps, steps[1:]) if a["step_percent"] <= mark and b["step_percent"] <= mark), None)
    stays = None
    for i, s in enumerate(steps):
        if all(t["step_percent"] <= mark for t in steps[i:]):
            stays = s
            break
    pick = (lambda s: {"runs": s["runs"], "raw_mb": round(s["raw_bytes"] / 1e6, 2), "to_end_percent": s["to_end_percent"]}
            if s else None)
    return {"first": pick(first), "twice": pick(twice), "stays": pick(stays)}


def maturity_figures(series: Series, thresholds_mb: list[float]) -> dict:
    points = series.checkpoints
    per_run = points[-1].raw_bytes / points[-1].runs
    out = {"runs": points[-1].runs, "raw_bytes": points[-1].raw_bytes, "raw_bytes_per_run": round(per_run),
           "fine": [{"runs": p.runs, "raw_bytes": p.raw_bytes, "step_percent": p.step_fine} for p in points],
           "thresholds": {}}
    for t in thresholds_mb:
        threshold = t * 1e6
        steps = steps_at(points, threshold / 4)
        at = next((p for p in points if p.raw_bytes >= threshold), None)
        since = None
        if at is not None:
            later = [level_overlap(at.shown.functions, p.shown.functions)["changed_percent"]
                     for p in spaced(points, threshold / 4) if p.raw_bytes > at.raw_bytes]
            since = {"threshold_runs": at.runs, "max_percent": max(later, default=None),
                     "last_percent": later[-1] if later else None, "checkpoints": len(later)}
        out["thresholds"][f"{t:g}"] = {
            "spacing_bytes": round(threshold / 4), "spacing_runs": round(threshold / 4 / per_run, 1),
            "steps": steps, "marks": {f"{m:g}": first_below(steps, m) for m in MARKS},
            "step_at_threshold": next((s["step_percent"] for s in steps if s["raw_bytes"] >= threshold), None),
            "change_since_threshold": since,
        }
    return out


def branch_figures(series: Series) -> dict:
    base = series.base
    added = [(p.raw_bytes - base.raw_bytes, p.vs_base) for p in series.checkpoints]
    at = {}
    for share in FRACTIONS:
        want = share * base.raw_bytes
        hit = next((v for b, v in added if b >= want), None)
        at[f"{share:g}"] = hit
    return {"mix": series.mix, "runs": series.checkpoints[-1].runs - base.runs,
            "added_bytes": added[-1][0], "at_share": at, "max_percent": max(v for _, v in added),
            "curve": [{"added_bytes": b, "change_percent": v} for b, v in added]}


def cost_figures(series_list: list[Series]) -> dict:
    shown = [p.shown for s in series_list for p in s.checkpoints]
    overlap = [p.overlap_s for s in series_list for p in s.checkpoints if p.overlap_s]
    last = series_list[0].checkpoints[-1].shown
    return {
        "profiles": len(shown),
        "show_wall_s": {"median": round(statistics.median(s.show_wall_s for s in shown), 4),
                        "max": round(max(s.show_wall_s for s in shown), 4)},
        "show_cpu_s": {"median": round(statistics.median(s.show_cpu_s for s in shown), 4),
                       "max": round(max(s.show_cpu_s for s in shown), 4)},
        "parse_s": round(statistics.median(s.parse_s for s in shown), 4),
        "overlap_s": round(statistics.median(overlap), 4) if overlap else None,
        "profdata_bytes": last.profdata_bytes,
        "functions": len(last.functions),
        "counters": sum(len(f.counters) for f in last.functions),
        "nonzero_functions": sum(1 for f in last.functions if f.total),
    }


# ---- the programs -------------------------------------------------------------------------------
@dataclass
class Plan:
    runs: int
    branch_runs: int
    chunk: int
    cs_runs: int


def measure_program(name: str, mixes: dict[str, Mix], first: str, changed: list[str], plan: Plan, work: Path,
                    thresholds: list[float], seed: int) -> tuple[dict, list[Series]]:
    say(f"{name}: mix {first!r}, {plan.runs} runs, a checkpoint every {plan.chunk}")
    main = run_series(name, mixes[first], plan.runs, plan.chunk, seed, work)
    build = main.checkpoints[-1]
    doc = {"mix": first, "mix_describe": mixes[first].describe, "maturity": maturity_figures(main, thresholds),
           "run_wall_s": round(main.run_wall_s, 1), "merge_s": round(main.merge_s, 1), "branches": []}
    all_series = [main]
    for k, mix in enumerate([first, *changed]):
        say(f"{name}: branch {mix!r}, {plan.branch_runs} runs on top of the build profile ({build.runs} runs)")
        branch = run_series(name, mixes[mix], plan.branch_runs, plan.chunk, seed + 1000 + k, work, base=build)
        all_series.append(branch)
        figures = branch_figures(branch)
        figures["describe"] = mixes[mix].describe
        figures["same"] = mix == first
        # The branch's runs alone, merged from scratch: how far that mix is from the build profile.
        figures["alone_vs_build_percent"] = level_overlap(build.shown.functions, branch.alone.functions)["changed_percent"]
        doc["branches"].append(figures)
    return doc, all_series


# ---- output -------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _where(hit) -> str:
    if hit is None:
        return "-"
    return f"{hit['runs']}r {hit['raw_mb']:.0f}MB" + (f" [{hit['to_end_percent']:.1f}]" if "to_end_percent" in hit else "")


def table(doc: dict) -> str:
    lines = [f"Maturity benchmark: clang-14 -O2 -fprofile-generate, llvm-profdata-14; seed {doc['seed']}"
             f"{' (--quick)' if doc['quick'] else ''}; step change = changed_percent (pgod.profiles.overlap)"]
    for name, prog in doc["programs"].items():
        for label, m in [("IR", prog["maturity"]), *([("CS", prog["cs"]["maturity"])] if prog.get("cs") else [])]:
            lines += ["", f"== {name} {prog.get('version', '')}, {label} level, mix {prog['mix']!r} "
                          f"({prog['mix_describe']}): {m['runs']} runs, {m['raw_bytes'] / 1e6:.1f} MB raw, "
                          f"{m['raw_bytes_per_run'] / 1e3:.1f} KB a run"]
            lines.append("  (a) where the step change first is ≤ X: first checkpoint / first of two in a row / from where it"
                         " stays ≤ X; r = runs, [the change % from that profile to the last one]")
            for t, f in m["thresholds"].items():
                lines.append(f"    threshold {t} MB, a checkpoint every {f['spacing_runs']:.1f} runs:")
                for mk, v in f["marks"].items():
                    lines.append(f"      ≤ {mk:>3} %: {_where(v['first']):>20} / {_where(v.get('twice')):>20} / {_where(v['stays']):>20}")
            lines.append("  step change % at each rule checkpoint (raw MB: %), per threshold:")
            for t, f in m["thresholds"].items():
                steps = f["steps"]
                if len(steps) > 14:  # every step early, then thinned
                    keep = sorted(set(range(6)) | set(range(6, len(steps), max(1, (len(steps) - 6) // 8))) | {len(steps) - 1})
                    steps = [steps[i] for i in keep if i < len(steps)]
                lines.append(f"    {t:>3} MB: " + ", ".join(f"{s['raw_bytes'] / 1e6:.1f}:{s['step_percent']:.2f}" for s in steps))
            for t, f in m["thresholds"].items():
                since = f["change_since_threshold"]
                if since and since["checkpoints"]:
                    lines.append(f"    change since the profile at the {t} MB threshold ({since['threshold_runs']} runs):"
                                 f" max {_pct(since['max_percent'])} %, at the end {_pct(since['last_percent'])} %"
                                 f" ({since['checkpoints']} later checkpoints)")
        lines.append(f"  (b) change % against the build profile ({prog['maturity']['runs']} runs) as runs are added,"
                     " at added raw bytes = share of the build profile's:")
        lines.append(f"    {'branch':14} {'runs':>5} " + " ".join(f"{'+' + format(s, '.0%'):>7}" for s in FRACTIONS)
                     + f" {'max':>7} {'mix alone':>9}")
        for b in prog["branches"]:
            label = f"{b['mix']}{' (same)' if b['same'] else ''}"
            lines.append(f"    {label:14} {b['runs']:5d} " + " ".join(f"{_pct(b['at_share'][f'{s:g}']):>7}" for s in FRACTIONS)
                         + f" {_pct(b['max_percent']):>7} {_pct(b['alone_vs_build_percent']):>9}")
        c = prog["cost"]
        lines.append(f"  (c) one figure: llvm-profdata show {c['show_wall_s']['median'] * 1e3:.0f} ms wall "
                     f"(max {c['show_wall_s']['max'] * 1e3:.0f}), {c['show_cpu_s']['median'] * 1e3:.0f} ms CPU; "
                     f"parse {c['parse_s'] * 1e3:.1f} ms; overlap {(c['overlap_s'] or 0) * 1e3:.1f} ms; profile "
                     f"{c['profdata_bytes'] / 1e3:.0f} KB, {c['functions']} functions ({c['nonzero_functions']} run), "
                     f"{c['counters']} counters; {c['profiles']} profiles shown")
        lines.append(f"      runs {prog['run_wall_s']:.0f} s, merges {prog['merge_s']:.0f} s (first mix)")
    lines += ["", f"total runtime {doc['total_runtime_s']:.0f} s"]
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, "IR", p["maturity"]) for n, p in doc["programs"].items()]
    panels += [(n, "CS", p["cs"]["maturity"]) for n, p in doc["programs"].items() if p.get("cs")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (name, level, m) in zip(axes[0], panels):
        for t, f in m["thresholds"].items():
            xs = [s["raw_bytes"] / 1e6 for s in f["steps"]]
            ys = [max(s["step_percent"], 1e-3) for s in f["steps"]]
            ax.plot(xs, ys, marker=".", label=f"threshold {t} MB (ckpt {float(t) / 4:g} MB)")
        for mark in (1, 5):
            ax.axhline(mark, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("raw profile bytes merged (MB)")
        ax.set_ylabel("step change % (vs previous checkpoint)")
        ax.set_title(f"{name}, {level} level, mix {doc['programs'][name]['mix'] if level == 'IR' else 'demo'}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- main ---------------------------------------------------------------------------------------
def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.maturity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs (~3 min)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--programs", default="lua,brotli", help="which programs (default %(default)s)")
    parser.add_argument("--runs", type=int, help="runs of the first mix (default 1200, --quick 150)")
    parser.add_argument("--branch-runs", type=int, help="runs of each branch (default 400, --quick 40)")
    parser.add_argument("--chunk", type=int, help="runs between checkpoints (default 5)")
    parser.add_argument("--thresholds-mb", default="2,8,16,64",
                        help="thresholds whose threshold/4 spacing is measured (default %(default)s; pgod's default is 64)")
    parser.add_argument("--cs", action="store_true", help="also lua's context-sensitive stage")
    parser.add_argument("--cs-runs", type=int, help="runs of the CS stage (default 400, --quick 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chart", type=Path, help="write a PNG of step change against raw bytes")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--from-json", type=Path, help="print the table (and --chart) of a saved --json output; run nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if args.chart:
            chart(saved, args.chart)
        print(table(saved))
        return 0
    plan = Plan(runs=args.runs or (150 if args.quick else 1200), branch_runs=args.branch_runs or (40 if args.quick else 400),
                chunk=args.chunk or 5, cs_runs=args.cs_runs or (60 if args.quick else 400))
    thresholds = [float(t) for t in args.thresholds_mb.split(",") if t]
    if args.quick and args.thresholds_mb == parser.get_default("thresholds_mb"):
        thresholds = [1.0, 2.0, 4.0]
    for tool in (CLANG, PROFDATA):
        if not Path(tool).exists():
            raise SystemExit(f"missing {tool}: `make test` installs clang-14 and llvm-profdata-14")
    os.nice(10)
    signal.signal(signal.SIGTERM, _interrupt)  # so the work folder is removed on SIGTERM too
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pgod-maturity-"))
    doc = {"seed": args.seed, "quick": args.quick, "plan": plan.__dict__, "thresholds_mb": thresholds, "programs": {}}
    try:
        BUILD_CACHE.mkdir(parents=True, exist_ok=True)
        for name in args.programs.split(","):
            if name == "lua":
                src, version = lua_sources()
                exe = build_lua(src, INSTRUMENT)
                mixes = lua_mixes(exe)
                prog, series = measure_program("lua", mixes, "demo", ["strings+json", "json x3"], plan, work,
                                               thresholds, args.seed)
                prog["version"] = version
                if args.cs:
                    build_profile = series[0].checkpoints[-1].profile
                    kept = work / "lua-build.profdata"
                    shutil.copyfile(build_profile, kept)
                    cs_exe = build_lua(src, ["-O2", f"-fprofile-use={kept}", "-fcs-profile-generate"], work / "lua-cs" / "lua")
                    say(f"lua: CS stage, mix 'demo', {plan.cs_runs} runs")
                    cs_series = run_series("lua", lua_mixes(cs_exe)["demo"], plan.cs_runs, plan.chunk, args.seed + 7, work, cs=True)
                    prog["cs"] = {"maturity": maturity_figures(cs_series, thresholds), "cost": cost_figures([cs_series])}
                    series.append(cs_series)
            elif name == "brotli":
                src = brotli_sources()
                exe = build_brotli(src, INSTRUMENT)
                mixes = brotli_mixes(exe, src, work)
                prog, series = measure_program("brotli", mixes, "text", ["decompress", "binary"], plan, work,
                                               thresholds, args.seed)
                prog["version"] = BROTLI_VERSION
            else:
                raise SystemExit(f"unknown program {name!r} (lua, brotli)")
            prog["cost"] = cost_figures(series)
            doc["programs"][name] = prog
        doc["total_runtime_s"] = round(time.monotonic() - began, 1)
        if args.chart:
            chart(doc, args.chart)
            say(f"chart: {args.chart}")
    except BenchError as err:
        say(f"error: {err}")
        return 1
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(doc, indent=1) if args.json else table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
