"""The whole loop with real Nix: profiling build → runs → merge → optimized nix-build → activation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testbed.daemon import wait_for

LOOP_NIX = Path(__file__).parent / "nix" / "loop.nix"

pytestmark = pytest.mark.skipif(not Path("/usr/bin/nix-build").exists(), reason="nix-build not installed (apt-get install nix-bin)")


def nix_build(attr: str, spool: Path, tweak: bool = False) -> str:
    argv = ["nix-build", str(LOOP_NIX), "-A", attr, "--argstr", "spoolDir", str(spool), "--no-out-link"]
    if tweak:
        argv += ["--arg", "tweak", "true"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()[-1]


def build_argv(spool: Path, tweak: bool = False) -> list[str]:
    return [
        "nix-build", str(LOOP_NIX), "-A", "optimized.out", "--argstr", "spoolDir", str(spool),
        "--argstr", "profile", "{profile}", *(["--arg", "tweak", "true"] if tweak else []), "--no-out-link",
    ]


def run_hello(exe: Path, count: int, env_extra: dict | None = None) -> list[str]:
    """Run the program as a user would: no LLVM_PROFILE_FILE, so the baked-in spool path is used."""
    env = {k: v for k, v in os.environ.items() if k != "LLVM_PROFILE_FILE"} | (env_extra or {})
    return [
        subprocess.run([str(exe), str(n * 3 + 1), "some text 123"], check=True, capture_output=True, text=True, env=env).stdout
        for n in range(count)
    ]


# 20 runs write about 14 KB of raw profiles: enough to cross 8 KB once, not twice, so each
# test sees exactly one build.
THRESHOLD_MB = 0.008


def configure(pgod, profiling: str, activation: str, tweak: bool = False) -> None:
    pgod.write_config(
        {"hello": {"profile_build": [profiling], "build": build_argv(pgod.spool, tweak), "threshold_mb": THRESHOLD_MB}},
        activation=activation,
    )


def generations(profile: Path) -> list[str]:
    listed = subprocess.run(["nix-env", "--profile", str(profile), "--list-generations"], capture_output=True, text=True, check=True)
    return listed.stdout.splitlines()


def test_auto_mode_activates_an_optimized_build_that_writes_no_profile(pgod, tmp_path):
    profiling = nix_build("profiling", pgod.spool)
    plain = nix_build("plain", pgod.spool)
    configure(pgod, profiling, "auto")
    daemon = pgod.daemon()

    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    package = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "optimized build active")

    active_exe = pgod.root / "profile" / "bin" / "hello-pgo"
    assert active_exe.exists()
    assert os.path.realpath(active_exe).startswith(package["optimized"])
    probe = tmp_path / "probe-spool"
    probe.mkdir()
    outputs = run_hello(active_exe, 5, {"LLVM_PROFILE_FILE": f"{probe}/%p.profraw"})
    assert os.listdir(probe) == [], "the optimized binary must not be instrumented"
    assert os.listdir(pgod.spool) == []
    assert outputs == run_hello(Path(plain) / "bin" / "hello-pgo", 5)
    assert package["active"] is True and package["last_error"] is None
    detail = json.loads(daemon.pgoctl("show", "hello", "--json").stdout)
    assert detail["builds"][0]["status"] == "succeeded"
    assert detail["builds"][0]["profile"].startswith("/nix/store/")
    log = daemon.pgoctl("logs", "hello").stdout
    assert "nix-build" in log and package["optimized"] in log
    assert len(generations(pgod.root / "profile")) == 1


def test_upgrade_marks_stale_unshadows_and_rebuilds_from_the_carried_profile(pgod):
    profiling = nix_build("profiling", pgod.spool)
    configure(pgod, profiling, "auto")
    daemon = pgod.daemon()
    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    first = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "first build active")
    # 20 runs, each a file of two parts (program and library): wait until all are counted.
    carried = wait_for(lambda: (p := daemon.package("hello"))["total_files"] == 40 and p["profile"], 60, "all merged")
    assert daemon.stop() == 0

    # The system was updated: a new profiling build of a changed version, and a failing
    # build command so the stale state can be seen before the next build succeeds.
    upgraded = nix_build("profiling", pgod.spool, tweak=True)
    assert upgraded != profiling
    pgod.write_config(
        {"hello": {"profile_build": [upgraded], "build": ["false"], "threshold_mb": THRESHOLD_MB}}, activation="auto"
    )
    daemon = pgod.daemon()
    stale = wait_for(lambda: (p := daemon.package("hello"))["state"] in ("stale", "failed") and p, 60, "upgrade seen")
    assert stale["active"] is False
    assert not (pgod.root / "profile" / "bin" / "hello-pgo").exists(), "the old optimized build still shadows the new version"
    assert stale["profile"] == carried, "the merged profile is carried forward"
    assert daemon.stop() == 0

    configure(pgod, upgraded, "auto", tweak=True)
    daemon = pgod.daemon()
    second = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "rebuilt for the new version")
    assert second["optimized"] != first["optimized"]
    builds = json.loads(daemon.pgoctl("show", "hello", "--json").stdout)["builds"]
    # The build for the new version started from the carried profile (no new raw data yet).
    assert builds[0]["status"] == "succeeded" and builds[0]["profile_generation"] == int(Path(carried).stem)
    # clang used the old version's profile and said where it no longer matches the new code.
    report = json.loads((Path(second["optimized"]) / "nix-support" / "pgo-warnings.json").read_text())
    assert report["profile"] == builds[0]["profile"]
    assert report["mismatched_functions"] >= 1, report


def test_notify_mode_stops_at_ready_notifies_and_activates_on_request(pgod, notification_server):
    profiling = nix_build("profiling", pgod.spool)
    configure(pgod, profiling, "notify")
    daemon = pgod.daemon()
    agent = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "pgoctl"), "--bus", "session", "notify-agent"],
        env=daemon.env(), stdout=subprocess.PIPE, text=True,  # stdout: its state lines; stderr: its log
    )
    try:
        assert agent.stdout.readline().strip() == "pgoctl: notify-agent running"
        run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
        ready = wait_for(lambda: (p := daemon.package("hello"))["state"] == "ready" and p, 180, "optimized build ready")
        assert ready["active"] is False
        assert not (pgod.root / "profile" / "bin" / "hello-pgo").exists()
        received = wait_for(notification_server.received, 30, "dunst received the notification")
        assert received[0].startswith("pgod|hello: optimized build ready|"), received
        assert ready["optimized"] in received[0]

        # The notification's Activate action, performed through the server itself.
        notification_server.perform_action()
        active = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 30, "activated by the action")
        assert active["active"] is True
        assert (pgod.root / "profile" / "bin" / "hello-pgo").exists()
        wait_for(lambda: any("hello: optimized build in use" in line for line in notification_server.received()), 30,
                 "activation notified")

        # Each change is a generation of the Nix profile; rollback returns the previous one.
        daemon.pgoctl("deactivate", "hello")
        assert daemon.package("hello")["state"] == "ready"
        assert not (pgod.root / "profile" / "bin" / "hello-pgo").exists()
        assert daemon.pgoctl("activate", "hello").returncode == 0
        assert daemon.package("hello")["state"] == "active"
        assert (pgod.root / "profile" / "bin" / "hello-pgo").exists()
        assert len(generations(pgod.root / "profile")) == 3
        daemon.pgoctl("rollback")
        back = daemon.package("hello")
        assert back["active"] is False and back["state"] == "ready"
        assert not (pgod.root / "profile" / "bin" / "hello-pgo").exists()
        assert "(current)" in generations(pgod.root / "profile")[1]
    finally:
        agent.terminate()
        agent.wait(timeout=10)
