"""pgod installed in a booted guest as a distribution would install it, for the guest tests.

The host does what need not run under emulation (compiling the instrumented test program,
writing the config); the guest runs install-pgod.sh from the share, which installs the shipped
unit and system files with pgod/data/install-system-files.sh and starts pgod under its unit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from testbed.clangs import Clang
from testbed.config import SCHEDULE_OFF, write_config
from testbed.live import SERVER_PROGRAM, build_live_program
from testbed.programs import WORKLOAD_SOURCE

REPO = Path(__file__).resolve().parents[2]
SPOOL = "/var/spool/pgod"
#: The path the profiling adapter bakes into every binary (stdenv-adapters/default.nix).
BAKED_PATH = f"{SPOOL}/%p.profraw"

GUEST_SETTINGS = {
    "spool_dir": SPOOL,
    "state_dir": "/var/lib/pgod",
    "profile_link": "/nix/var/nix/profiles/pgod/optimized",
    "substitute_dir": "/run/pgod/packages",
    "merge_user": "pgod-merge",
    "admin_group": "wheel",
    "threshold_mb": 64,
    "activation": "notify",
}


def prepare_share(share: Path, clang: Clang, packages: dict[str, dict] | None = None, *, live_server: bool = False,
                  schedule: dict | None = None, **settings) -> None:
    """Put pgod's code, the install script, an instrumented workload (IR instrumentation with
    the adapter's baked-in spool path, as a profiling build has it) and the config in ``share``.
    ``live_server``: also a program that never exits, linked with the live object (package
    "liveserver" in /opt/liveserver), for the live-runs test. ``schedule``: the when-to-build
    settings; by default SCHEDULE_OFF (the guest's tests build at the threshold: maturity and the
    machine's conditions are tested on the host); {} for a pgod from before them, to which
    they are unknown keys."""
    shutil.copytree(REPO / "pgod", share / "src" / "pgod", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    shutil.copy2(REPO / "tests" / "guest" / "install-pgod.sh", share / "install-pgod.sh")
    bin_dir = share / "workload" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    clang.compile(WORKLOAD_SOURCE, bin_dir / "workload", ir=True, extra=["-Xclang", f"-fprofile-instrument-path={BAKED_PATH}"])
    workload = {"profile_build": ["/opt/workload"], "build": ["true"], "llvm_profdata": f"/usr/bin/llvm-profdata-{clang.version}"}
    if live_server:
        build_live_program(clang, SERVER_PROGRAM, share / "opt" / "liveserver" / "bin", "liveserver", baked=BAKED_PATH)
        packages = {**(packages or {}), "liveserver": {**workload, "profile_build": ["/opt/liveserver"]}}
    top = {**GUEST_SETTINGS, **(SCHEDULE_OFF if schedule is None else schedule), **settings}
    write_config(share / "config.toml", top, {"workload": workload, **(packages or {})})


def install(machine) -> None:
    """Install and start pgod in the booted ``machine``; wait until it answers on the system bus."""
    machine.succeed("bash /mnt/host/install-pgod.sh", timeout=300)
    machine.wait_until_succeeds("pgoctl status --json >/dev/null", timeout=120)


def status(machine, user: str | None = None) -> dict:
    return json.loads(machine.succeed("pgoctl status --json", user=user))


def package(machine, name: str) -> dict:
    return next(p for p in status(machine)["packages"] if p["name"] == name)


def journal(machine, unit: str | None = None, lines: int = 200) -> str:
    which = f"-u {unit}" if unit else ""
    return machine.run(f"journalctl -b --no-pager -o cat {which} | tail -n {lines}", timeout=60)[1]
