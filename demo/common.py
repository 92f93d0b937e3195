"""The demo's ground: its constants, its output (progress lines, numbered and timed steps), the
demo-state folder and its lock, the tools it needs, and its command line's common options.

Every other module of the demo, and benchmarks/pgo.py, builds on these.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.nixlocal import describe as describe_local_nix
from demo.nixlocal import use_local_nix

DESCRIPTION = "pgod's demo: the whole closed loop on a real third-party C program, the Lua 5.4 interpreter."
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


# ---- the command line ---------------------------------------------------------------------------
def interrupt_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None, description: str = DESCRIPTION) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=description)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="measurement rounds (default %(default)s)")
    parser.add_argument("--threshold-mb", type=float, default=DEFAULT_THRESHOLD_MB,
                        help="pgod's threshold for lua, MB of raw profiles (default %(default)s)")
    return parser
