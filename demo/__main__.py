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

Every step is a function here, so benchmarks/pgo.py runs the very same loop.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.nixlocal import describe as describe_local_nix
from demo.nixlocal import use_local_nix

ROOT = Path(__file__).resolve().parent.parent
LUA_NIX = ROOT / "demo" / "lua.nix"
WORKLOAD_DIR = ROOT / "demo" / "workload"
STATE_DIR = ROOT / "demo-state"

PACKAGE = "lua"
LUPA_VERSION = "2.8"
LUA_IN_SDIST = f"lupa-{LUPA_VERSION}/third-party/lua54/"
# The compile command of demo/lua.nix (run in the source folder), for builds by hand.
LUA_COMPILE = ["-O2", "-DMAKE_LUA", "-o", "{out}", "onelua.c", "-lm"]
CLANG = "/usr/bin/clang-14"

DEFAULT_THRESHOLD_MB = 2.0  # per stage; one instrumented run writes ~100 KB: ~20 runs
DEFAULT_ROUNDS = 7
MIN_SPEEDUP = 1.0  # the gate: the final build must not be slower than plain -O2 on the workload
GATE_ROUNDS = 5  # the least pgod takes
LIGHT_RUNS, LIGHT_PAUSE = 2, 4.0  # training while pgod builds or gates: scripts per status check, pause after each
TRAIN_TIMEOUT = 300.0
BUILD_TIMEOUT = 900.0


def _venv_bin() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "pgod").exists() else ROOT / ".venv" / "bin"


BIN = _venv_bin()


class DemoError(Exception):
    """A step failed; the message is the one-line reason shown to the user."""


# ---- output -------------------------------------------------------------------------------------
class _Output:
    stream = sys.stdout


OUTPUT = _Output()  # benchmarks/pgo.py sends the progress to stderr


def say(text: str = "") -> None:
    print(text, file=OUTPUT.stream, flush=True)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


class Steps:
    """Numbered steps, each announced with a progress line and timed."""

    def __init__(self) -> None:
        self.number = 0
        self.started = time.monotonic()

    @contextlib.contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        self.number += 1
        say(f"\n==> [{self.number}] {title}")
        begun = time.monotonic()
        yield
        say(f"    done in {time.monotonic() - begun:.1f} s")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


# ---- the demo-state folder -----------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """demo-state/: the download and Nix GC roots are kept between runs, everything else is fresh."""

    root: Path = STATE_DIR

    download = property(lambda self: self.root / "download")
    src = property(lambda self: self.root / "lua-src")
    gcroots = property(lambda self: self.root / "gcroots")
    spool = property(lambda self: self.root / "spool")
    state = property(lambda self: self.root / "state")
    profile = property(lambda self: self.root / "profile")
    run = property(lambda self: self.root / "run")
    config = property(lambda self: self.root / "pgod.toml")
    log = property(lambda self: self.root / "pgod.log")
    bench = property(lambda self: self.root / "bench")
    probe = property(lambda self: self.root / "probe")

    report = property(lambda self: self.root / "report")

    def active_lua(self) -> Path:
        return self.profile / "bin" / "lua"


@contextlib.contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """One demo (or benchmark) at a time on a demo-state folder."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another demo or benchmark is using {layout.root}") from None
        yield


def _ours(pid: int, layout: Layout) -> bool:
    try:
        return str(layout.root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def reset(layout: Layout) -> None:
    """Fresh spool, state and Nix profile; stop a pgod or bus a killed earlier run left behind."""
    for pidfile in layout.run.glob("*.pid") if layout.run.exists() else ():
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text())
            if _ours(pid, layout):
                say(f"    stopping {pidfile.stem} (pid {pid}) left over from an earlier run")
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not _ours(pid, layout):
                        break
                    time.sleep(0.1)
    for path in (layout.spool, layout.state, layout.run, layout.bench, layout.probe, layout.report):
        shutil.rmtree(path, ignore_errors=True)
    for path in [layout.config, layout.log, layout.profile, *layout.root.glob("profile-*-link")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for path in (layout.spool, layout.state, layout.run):
        path.mkdir(parents=True)


def check_tools() -> None:
    """Stop with what to run when a tool is missing; give the fixture builds their Nix settings."""
    missing = [tool for tool in ("nix-build", "nix-env", "dbus-daemon") if shutil.which(tool) is None]
    missing += [path for path in (CLANG, "/usr/bin/llvm-profdata-14") if not Path(path).exists()]
    missing += [str(BIN / name) for name in ("pgod", "pgoctl") if not (BIN / name).exists()]
    if missing:
        raise DemoError(f"missing {', '.join(missing)}: run `make demo`, which installs them")
    if use_local_nix():
        say(f"    {describe_local_nix()}")


# ---- a. sources ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    dir: Path
    version: str  # e.g. "5.4.8"
    sdist: Path


def fetch_sources(layout: Layout) -> Source:
    """The Lua sources from the lupa sdist on PyPI: downloaded once, extracted to demo-state/lua-src."""
    sdist = layout.download / f"lupa-{LUPA_VERSION}.tar.gz"
    if sdist.exists():
        say(f"    using the cached {sdist.relative_to(ROOT)}")
    else:
        say(f"    pip download lupa=={LUPA_VERSION} (source distribution) from PyPI; pip prepares its metadata, ~30 s, once")
        scratch = layout.download / "tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        python = BIN / "python" if (BIN / "python").exists() else Path(sys.executable)
        argv = [str(python), "-m", "pip", "download", "--no-binary", "lupa", "--no-deps", "--disable-pip-version-check",
                "-d", str(scratch), f"lupa=={LUPA_VERSION}"]
        # lupa's setup.py builds LuaJIT while pip only asks for its metadata: 2 minutes for nothing.
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "LUPA_NO_LUAJIT": "true"})
        got = scratch / sdist.name
        if done.returncode != 0 or not got.exists():
            say(indent("\n".join((done.stdout + done.stderr).splitlines()[-15:])))
            raise DemoError(f"pip download lupa=={LUPA_VERSION} failed (exit {done.returncode})")
        got.rename(sdist)
        shutil.rmtree(scratch, ignore_errors=True)
        say(f"    saved {sdist.relative_to(ROOT)} ({sdist.stat().st_size / 1e6:.1f} MB)")
    if not (layout.src / "onelua.c").exists():
        extract_lua(sdist, layout.src)
    version = lua_version(layout.src / "lua.h")
    count = len(list(layout.src.iterdir()))
    say(f"    Lua {version}: {count} files (.c/.h) of {LUA_IN_SDIST} in {layout.src.relative_to(ROOT)}")
    return Source(layout.src, version, sdist)


def extract_lua(sdist: Path, target: Path) -> None:
    """Only the regular .c/.h files of third-party/lua54 (no links, no sub-folders), atomically."""
    scratch = target.with_name(target.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    scratch.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if not name.startswith(LUA_IN_SDIST):
                continue
            leaf = name[len(LUA_IN_SDIST):]
            if "/" in leaf or not leaf.endswith((".c", ".h")) or not member.isfile():
                continue
            data = archive.extractfile(member).read()
            (scratch / leaf).write_bytes(data)
            (scratch / leaf).chmod(0o644)
    if not (scratch / "onelua.c").exists():
        raise DemoError(f"{sdist.name} has no {LUA_IN_SDIST}onelua.c")
    scratch.rename(target)


def lua_version(header: Path) -> str:
    fields = {}
    for line in header.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("LUA_VERSION_"):
            fields[parts[1]] = parts[2].strip('"')
    return ".".join(fields.get(f"LUA_VERSION_{k}", "?") for k in ("MAJOR", "MINOR", "RELEASE"))


# ---- b. Nix builds ------------------------------------------------------------------------------
def nix_build_argv(attr: str, layout: Layout, source: Source, profile: str | None = None) -> list[str]:
    argv = ["nix-build", str(LUA_NIX), "-A", attr, "--argstr", "src", str(source.dir), "--argstr", "spoolDir", str(layout.spool)]
    if profile is not None:
        argv += ["--argstr", "profile", profile]
    return argv


def nix_build(attr: str, layout: Layout, source: Source) -> str:
    """Build a variant of demo/lua.nix; a GC root in demo-state/gcroots keeps it for the next run."""
    layout.gcroots.mkdir(parents=True, exist_ok=True)
    argv = nix_build_argv(attr, layout, source) + ["--out-link", str(layout.gcroots / attr)]
    say(f"    $ nix-build demo/lua.nix -A {attr} --argstr src {source.dir.relative_to(ROOT)} "
        f"--argstr spoolDir {layout.spool.relative_to(ROOT)} …")
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        say(indent("\n".join(done.stderr.splitlines()[-20:])))
        raise DemoError(f"nix-build -A {attr} failed (exit {done.returncode})")
    out = done.stdout.split()[-1]
    built = "building '" in done.stderr
    say(f"    {out} ({'built' if built else 'already in the store'})")
    return out


def optimized_build_argv(layout: Layout, source: Source) -> list[str]:
    """pgod's `build` command for lua: `{profile}` becomes the merged profile's store path."""
    return nix_build_argv("optimized", layout, source, "{profile}") + ["--no-out-link"]


def cs_build_argv(layout: Layout, source: Source) -> list[str]:
    """pgod's `cs_build` command: the IR-optimized, CS-instrumented Lua from the first stage's profile."""
    return nix_build_argv("csProfiling", layout, source, "{profile}") + ["--no-out-link"]


def workload_in_store() -> Path:
    """The workload scripts as a store path: pgod's gate runs the benchmark as its merge user,
    who cannot enter a checkout under a private home (/root/pgod on a new machine)."""
    added = subprocess.run(["nix-store", "--add", str(WORKLOAD_DIR)], check=True, capture_output=True, text=True)
    return Path(added.stdout.strip())


def benchmark_argv(workload: Path) -> list[str]:
    """The gate's benchmark: the demo's workload, every script once, on `{bin}/bin/lua`. pgod runs
    it with a bare environment (PATH, LC_ALL) as its merge user, hence the absolute folder."""
    script = f"cd {shlex.quote(str(workload))} && for s in *.lua; do {{bin}}/bin/lua \"$s\" || exit 1; done"
    return ["/bin/sh", "-c", script]


# ---- c. bus and daemon --------------------------------------------------------------------------
def _toml(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def write_config(layout: Layout, source: Source, profiling: str, plain: str, threshold_mb: float,
                 cs_threshold_mb: float | None = None) -> Path:
    top = {
        "spool_dir": layout.spool,
        "state_dir": layout.state,
        "profile_link": layout.profile,
        "threshold_mb": threshold_mb,
        "activation": "auto",
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
    lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
    lines += ["", f"[packages.{PACKAGE}]"] + [f"{key} = {_toml(value)}" for key, value in package.items()]
    layout.config.write_text("\n".join(lines) + "\n")
    return layout.config


class Bus:
    """A private dbus-daemon of the session type, its socket under demo-state/run."""

    def __init__(self, layout: Layout) -> None:
        socket = layout.run / "bus.socket"
        # A unix socket path must fit in 108 bytes; else let dbus-daemon pick one under /tmp.
        address = f"unix:path={socket}" if len(str(socket)) < 100 else "unix:tmpdir=/tmp"
        with open(layout.run / "dbus-daemon.log", "ab") as errors:  # e.g. "Failed to set fd limit"
            self.process = subprocess.Popen(
                ["dbus-daemon", "--session", "--nofork", "--print-address=1", f"--address={address}"],
                stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True,
            )
        (layout.run / "dbus-daemon.pid").write_text(str(self.process.pid))
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            self.close()
            raise DemoError("dbus-daemon did not start")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
        with open(self.layout.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "pgod"), "--config", str(self.layout.config), "--bus", "session", "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
            )
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
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode


# ---- d. training --------------------------------------------------------------------------------
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


def _gate_text(figures: dict | None) -> str:
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
            say(f"    -> gate: {_gate_text(package.get('benchmark'))}")
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
            if _final_started(package) and not self.done.before_final:
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
                f"  {doing}  [{time.monotonic() - self.begun:5.1f} s]")


def _in_cs_stage(trainer: Trainer):
    return lambda p: p.get("stage") == "context-sensitive" and trainer.in_use(p)[0] == "cs-stage"


def _final_started(p: dict) -> bool:
    return p.get("stage") == "context-sensitive" and p["state"] in ("building", "ready", "active")


def _final_active(p: dict) -> bool:
    # `active`, not the state: data that came during the build and gate may start the next build at once.
    return bool(p.get("active") and p.get("optimized"))


def check_active(layout: Layout, package: dict) -> Path:
    lua = layout.active_lua()
    if not lua.exists():
        raise DemoError(f"{lua} does not exist although pgod says lua is active")
    if not os.path.realpath(lua).startswith(package["optimized"] + "/"):
        raise DemoError(f"{lua} is not the optimized build {package['optimized']}")
    return lua


# ---- the loop, a–e ------------------------------------------------------------------------------
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
    bus = daemon = None
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
        with steps(f"train, first stage: the IR-instrumented Lua over demo/workload/*.lua ({len(scripts)} scripts);"
                   " at the threshold pgod builds the context-sensitive stage and puts it in use"):
            trainer.until(_in_cs_stage(trainer), "the context-sensitive stage in use")
            say(f"    in use: {layout.active_lua().relative_to(ROOT)} -> {os.path.realpath(layout.active_lua())}"
                " (IR-optimized, CS-instrumented)")
        with steps("train, context-sensitive stage: the same scripts on the build in use, until pgod's final build"):
            trainer.until(_final_started, "the final build started")
        with steps("pgod builds the final Lua (IR + CS profile), gates it on the workload against plain -O2, activates it;"
                   " the training goes on meanwhile"):
            package = trainer.until(_final_active, "the final build active", BUILD_TIMEOUT)
            check_active(layout, package)
            say(f"    active: {layout.active_lua().relative_to(ROOT)} -> {os.path.realpath(layout.active_lua())}")
            say(f"    gate (status benchmark): {_gate_text(package.get('benchmark'))}")
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


# ---- f. measurement -----------------------------------------------------------------------------
@dataclass
class Measurement:
    """Wall and CPU seconds of every run: [binary][script] → one value per round."""

    names: list[str]
    scripts: list[str]
    wall: dict[str, dict[str, list[float]]]
    cpu: dict[str, dict[str, list[float]]]
    output_bytes: int

    @property
    def rounds(self) -> int:
        return len(self.wall[self.names[0]][self.scripts[0]])

    def median_wall(self, name: str) -> float:
        """The workload's time: each script's median over the rounds, summed."""
        return sum(statistics.median(runs) for runs in self.wall[name].values())

    def median_cpu(self, name: str) -> float:
        return sum(statistics.median(runs) for runs in self.cpu[name].values())

    def round_wall(self, name: str, index: int) -> float:
        return sum(runs[index] for runs in self.wall[name].values())

    def speedup(self, name: str, base: str = "plain") -> float:
        return self.median_wall(base) / self.median_wall(name)


def measure(binaries: dict[str, Path | str], scripts: list[Path], rounds: int, layout: Layout,
            instrumented: tuple[str, ...] = ()) -> Measurement:
    """Interleaved runs: in each round, every script runs under every binary back to back, in an
    order that rotates with the round and the script, so slow drifts of the machine's load hit all
    binaries alike. All binaries must print the same. The `instrumented` ones write their raw
    profile (part of their cost) into a scratch folder, emptied after each run; every other
    binary must write none."""
    names = list(binaries)
    layout.probe.mkdir(parents=True, exist_ok=True)
    scratch = layout.bench / "instrumented-runs"
    scratch.mkdir(parents=True, exist_ok=True)
    # An uninstrumented binary writes no profile even when asked to.
    plain_env = user_env(LLVM_PROFILE_FILE=f"{layout.probe}/%p.profraw")
    instr_env = user_env(LLVM_PROFILE_FILE=f"{scratch}/%p.profraw")

    def run(name: str, script: Path) -> tuple[float, float, str]:
        if name not in instrumented:
            return run_lua(binaries[name], script, plain_env)
        got = run_lua(binaries[name], script, instr_env)
        if not any(scratch.iterdir()):
            raise DemoError(f"{name} was to be instrumented but wrote no profile")
        for path in scratch.iterdir():
            path.unlink()
        return got

    reference = {}
    for name in names:  # warm-up, and the outputs compared
        for script in scripts:
            _, _, out = run(name, script)
            if reference.setdefault(script.name, out) != out:
                raise DemoError(f"{name} prints something else than {names[0]} for {script.name}")
    if written := list(layout.probe.iterdir()):
        raise DemoError(f"a measured binary is instrumented: it wrote {written[0].name}")
    size = sum(len(out) for out in reference.values())
    say(f"    warm-up done; all {len(names)} binaries print the same {size} bytes for the {len(scripts)} scripts")
    wall = {name: {script.name: [] for script in scripts} for name in names}
    cpu = {name: {script.name: [] for script in scripts} for name in names}
    result = Measurement(names, [script.name for script in scripts], wall, cpu, size)
    for index in range(rounds):
        for position, script in enumerate(scripts):
            turn = (index + position) % len(names)
            for name in names[turn:] + names[:turn]:
                w, c, out = run(name, script)
                if out != reference[script.name]:
                    raise DemoError(f"{name} printed something else for {script.name} in round {index + 1}")
                wall[name][script.name].append(w)
                cpu[name][script.name].append(c)
        say(f"    round {index + 1}/{rounds}: " + ", ".join(f"{name} {result.round_wall(name, index):.2f}" for name in names) + " s")
    if written := list(layout.probe.iterdir()):
        raise DemoError(f"a measured binary is instrumented: it wrote {written[0].name}")
    return result


# ---- manual PGO builds: by hand, outside Nix, from the same training runs -------------------------
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
def interrupt_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None, description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=description)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="measurement rounds (default %(default)s)")
    parser.add_argument("--threshold-mb", type=float, default=DEFAULT_THRESHOLD_MB,
                        help="pgod's threshold for lua, MB of raw profiles (default %(default)s)")
    return parser


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
    say(f"gate: {_gate_text(package.get('benchmark'))}")
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
