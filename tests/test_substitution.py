"""Binary substitution with real Nix profiles: the declared package's place, the optimized binary.

A Nix profile stands for the NixOS system profile: it holds the stand-in of the profiling
hello (nixos-module/substitute.nix), as /run/current-system/sw does on NixOS. Programs are
started with nothing but that profile's bin/ in PATH, as a systemd unit, a cron job or a script
calling /run/current-system/sw/bin/… would start them, and whether they run the profiling or the
optimized build is read from what they do: the profiling build writes a raw profile, the
optimized one does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_closed_loop import THRESHOLD_MB, build_argv, nix_build, run_hello
from testbed.daemon import wait_for

LOOP_NIX = Path(__file__).parent / "nix" / "loop.nix"

pytestmark = pytest.mark.skipif(not Path("/usr/bin/nix-build").exists(), reason="nix-build not installed (apt-get install nix-bin)")


def build_stand_in(spool: Path, substitute_dir: Path, tweak: bool = False) -> str:
    argv = [
        "nix-build", str(LOOP_NIX), "-A", "standIn", "--argstr", "spoolDir", str(spool),
        "--argstr", "substituteDir", str(substitute_dir), "--no-out-link",
        *(["--arg", "tweak", "true"] if tweak else []),
    ]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()[-1]


class SystemPath:
    """A real Nix profile holding the stand-in, and programs run with only its bin/ in PATH."""

    def __init__(self, root: Path, spool: Path) -> None:
        self.profile = root / "system"
        self.spool = spool
        self.probe = root / "probe"
        self.probe.mkdir()

    def install(self, stand_in: str) -> None:
        subprocess.run(["nix-env", "--profile", str(self.profile), "--install", stand_in], check=True, capture_output=True)

    def rollback(self) -> None:
        subprocess.run(["nix-env", "--profile", str(self.profile), "--rollback"], check=True, capture_output=True)

    def resolved(self) -> str:
        return os.path.realpath(self.profile / "bin" / "hello-pgo")

    def runs_instrumented(self) -> bool:
        """Run hello-pgo as a service would find it; True when it wrote a raw profile."""
        for stale in self.probe.iterdir():
            stale.unlink()
        subprocess.run(
            ["hello-pgo", "7", "text"],
            env={"PATH": str(self.profile / "bin"), "LLVM_PROFILE_FILE": f"{self.probe}/%p.profraw"},
            check=True, capture_output=True,
        )
        return any(self.probe.iterdir())


def apply_substitution(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "pgod"), "--config", str(config), "--apply-substitution"],
        capture_output=True, text=True,
    )


def test_whatever_reaches_the_system_path_runs_the_active_build(pgod, tmp_path):
    substitute_dir = tmp_path / "run" / "packages"
    profiling = nix_build("profiling", pgod.spool)
    system = SystemPath(tmp_path, pgod.spool)
    system.install(build_stand_in(pgod.spool, substitute_dir))
    pgod.write_config(
        {"hello": {"profile_build": [profiling], "build": build_argv(pgod.spool), "threshold_mb": THRESHOLD_MB}},
        activation="auto", substitute_dir=str(substitute_dir),
    )
    daemon = pgod.daemon()
    # The daemon's start points the links at the profiling build (the stand-in's files would
    # dangle without them).
    wait_for(lambda: system.resolved().startswith(profiling), 30, "links to the profiling build")
    assert system.runs_instrumented()

    run_hello(Path(system.profile) / "bin" / "hello-pgo", 20)
    package = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "optimized build active")
    optimized = package["optimized"]
    assert system.resolved() == f"{optimized}/bin/hello-pgo"
    assert not system.runs_instrumented()
    # The Nix profile of the optimized builds is kept, but nothing puts it in PATH any more.
    assert (pgod.root / "profile" / "bin" / "hello-pgo").exists()

    daemon.pgoctl("deactivate", "hello")
    assert system.resolved() == f"{profiling}/bin/hello-pgo"
    assert system.runs_instrumented()

    daemon.pgoctl("activate", "hello")
    assert system.resolved() == f"{optimized}/bin/hello-pgo"
    daemon.pgoctl("rollback")  # back to the generation before this activation: none active
    assert system.resolved() == f"{profiling}/bin/hello-pgo"
    assert system.runs_instrumented()

    daemon.pgoctl("activate", "hello")
    assert daemon.stop() == 0

    # A reboot: /run is empty, and the activation script rebuilds the links from the record.
    shutil.rmtree(tmp_path / "run")
    applied = apply_substitution(pgod.config_path)
    assert applied.returncode == 0, applied.stderr
    assert system.resolved() == f"{optimized}/bin/hello-pgo"
    assert not system.runs_instrumented()

    # `nixos-rebuild switch` to a generation with another hello: its activation script runs with
    # that generation's configuration, and the build made for the old hello is not substituted.
    upgraded = nix_build("profiling", pgod.spool, tweak=True)
    system.install(build_stand_in(pgod.spool, substitute_dir, tweak=True))
    pgod.write_config(
        {"hello": {"profile_build": [upgraded], "build": ["false"], "threshold_mb": THRESHOLD_MB}},
        activation="auto", substitute_dir=str(substitute_dir),
    )
    assert apply_substitution(pgod.config_path).returncode == 0
    assert system.resolved() == f"{upgraded}/bin/hello-pgo"
    assert system.runs_instrumented()

    # And the rollback to the first generation brings the optimized build back.
    system.rollback()
    pgod.write_config(
        {"hello": {"profile_build": [profiling], "build": ["false"], "threshold_mb": THRESHOLD_MB}},
        activation="auto", substitute_dir=str(substitute_dir),
    )
    assert apply_substitution(pgod.config_path).returncode == 0
    assert system.resolved() == f"{optimized}/bin/hello-pgo"
    assert not system.runs_instrumented()


def test_apply_substitution_without_a_substitute_dir_is_a_usage_error(pgod):
    pgod.write_config({})
    result = apply_substitution(pgod.config_path)
    assert result.returncode == 2
    assert "substitute_dir is not set" in result.stderr
