"""Step b: the Nix builds of demo/lua.nix (profiling, plain, and the command lines pgod runs for
the context-sensitive stage and the optimized build), and the gate's benchmark command.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from demo.common import LUA_NIX, ROOT, WORKLOAD_DIR, DemoError, Layout, indent, say
from demo.sources import Source


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
