"""When a due build runs, by the machine (pgod/schedule/conditions.py) and in which order
(schedule/order.py), with the real daemon and real profiles: UPower is python-dbusmock's on a
private system bus (pgod reads OnBattery from it as from the real service), the CPU load is real
processes spinning. A due build waits on battery and starts on AC; waits while the CPU is busy
and starts when it is idle; the package the machine spends most time in builds first; status
says why a build waits; `pgoctl rebuild` does not wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pgod.schedule.conditions import Conditions
from testbed.bus import PrivateBus
from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.programs import WORKLOAD_C, workload_inputs

pytestmark = pytest.mark.skipif(not Path("/usr/bin/nix-store").exists(), reason="nix-store not installed (apt-get install nix-bin)")

UPOWER = ["org.freedesktop.UPower", "/org/freedesktop/UPower"]


class FakeUPower:
    """python-dbusmock's UPower template on a bus of its own, playing the system bus."""

    def __init__(self, directory: Path, on_battery: bool) -> None:
        directory.mkdir()
        self.bus = PrivateBus(directory)
        self.env = {"DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--template", "upower", "-p", json.dumps({"OnBattery": on_battery})],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: self._get() is not None, 30, "the mock UPower on its bus")

    def _send(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dbus-send", f"--bus={self.bus.address}", "--print-reply", f"--dest={UPOWER[0]}",
                               UPOWER[1], *args], capture_output=True, text=True)

    def _get(self) -> str | None:
        reply = self._send("org.freedesktop.DBus.Properties.Get", f"string:{UPOWER[0]}", "string:OnBattery")
        return reply.stdout if reply.returncode == 0 else None

    def set_on_battery(self, value: bool) -> None:
        self._send("org.freedesktop.DBus.Properties.Set", f"string:{UPOWER[0]}", "string:OnBattery",
                   f"variant:boolean:{'true' if value else 'false'}").check_returncode()
        assert f"boolean {'true' if value else 'false'}" in self._get()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.bus.close()


@pytest.fixture
def upower(tmp_path):
    made = []

    def start(on_battery: bool) -> FakeUPower:
        made.append(FakeUPower(tmp_path / f"system-bus-{len(made)}", on_battery))
        return made[-1]

    yield start
    for fake in made:
        fake.close()


def _store_path(tmp_path: Path, name: str) -> str:
    folder = tmp_path / f"out-{name}" / "bin"
    folder.mkdir(parents=True)
    (folder / name).write_text("#!/bin/sh\necho optimized\n")
    (folder / name).chmod(0o755)
    return subprocess.run(["nix-store", "--add", str(folder.parent)], check=True, capture_output=True,
                          text=True).stdout.strip()


def _package(tmp_path: Path, clang14, name: str, variant: int) -> Path:
    """An instrumented copy of the workload program with a build-id of its own."""
    root = tmp_path / f"build-{name}"
    (root / "bin").mkdir(parents=True)
    source = root / "workload.c"
    source.write_text(WORKLOAD_C + f"\nint variant_{variant}(void) {{ return {variant}; }}\n")
    clang14.compile(source, root / "bin" / name)
    return root


def _run(pgod, root: Path, name: str, inputs: list[list[str]]) -> None:
    for args in inputs:
        run_instrumented(root / "bin" / name, args, pgod.spool / "%p.profraw")


def _builds_started(daemon) -> list[str]:
    return [json.loads(line)["package"] for line in daemon.log().splitlines() if '"build.started"' in line]


def test_due_builds_wait_on_battery_start_on_ac_and_the_busiest_package_goes_first(pgod, clang14, llvm_profdata_14,
                                                                                     tmp_path, upower):
    fake = upower(on_battery=True)
    small, big = _package(tmp_path, clang14, "small", 1), _package(tmp_path, clang14, "big", 2)
    pgod.write_config(
        {name: {"profile_build": [str(root)], "build": ["echo", _store_path(tmp_path, name)],
                "llvm_profdata": llvm_profdata_14, "threshold_mb": 0.0001}
         for name, root in (("small", small), ("big", big))},
        # Bytes decide (maturity is another test's); the machine's power is what this is about.
        settled_percent=100, rebuild_change_percent=0, build_on_battery=False, build_idle_cpu_percent=100,
    )
    daemon = pgod.daemon(env=fake.env)
    _run(pgod, small, "small", [["3", "a"]])  # few counts
    _run(pgod, big, "big", [["837799", "some longer text 123 " * 20]] * 3)  # many: where the time goes

    def both_waiting():
        status = daemon.status()
        packages = {p["name"]: p for p in status["packages"]}
        ready = all(p["build_due"] and p["maturity"]["count_sum"] for p in packages.values())
        return status if ready and status["daemon"]["build_waiting"] == "on battery" else None

    status = wait_for(both_waiting, 60, "both packages due, waiting on battery")
    assert status["daemon"]["build_queue"] == ["big", "small"]
    packages = {p["name"]: p for p in status["packages"]}
    assert packages["big"]["maturity"]["count_sum"] > packages["small"]["maturity"]["count_sum"]
    assert packages["big"]["queue_position"] == 1 and packages["small"]["queue_position"] == 2
    assert packages["big"]["waiting"] == packages["small"]["waiting"] == "on battery"
    assert status["daemon"]["conditions"]["on_battery"] is True
    text = daemon.pgoctl("status").stdout
    assert "big: build waits: on battery" in text and "build queue (most time spent first): big, small" in text
    assert "waiting:    on battery" in daemon.pgoctl("show", "big").stdout
    assert _builds_started(daemon) == []

    fake.set_on_battery(False)
    wait_for(lambda: all(p["state"] == "ready" for p in daemon.status()["packages"]), 60, "both built on AC")
    assert _builds_started(daemon) == ["big", "small"]


def test_a_due_build_waits_while_the_cpu_is_busy_and_starts_when_idle(pgod, workload, llvm_profdata_14, tmp_path):
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["echo", _store_path(tmp_path, "workload")],
                      "llvm_profdata": llvm_profdata_14, "threshold_mb": 0.0001}},
        settled_percent=100, rebuild_change_percent=0, build_on_battery=True,
        build_idle_cpu_percent=90, build_idle_seconds=2,
    )
    # Twice as many spinners as CPUs: busy (~100 %) whatever else runs; idle (< 90 %) once they
    # are gone, unless something else keeps every CPU busy.
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        daemon = pgod.daemon()
        _run(pgod, workload, "workload", workload_inputs(2))
        status = wait_for(lambda: (s := daemon.status())["daemon"]["build_waiting"] and
                          s["daemon"]["build_waiting"].startswith("busy, ") and s, 60, "the build waiting: busy")
        assert status["daemon"]["conditions"]["cpu_percent"] >= 90
        assert status["packages"][0]["waiting"].startswith("busy, ") and status["packages"][0]["waiting"].endswith(" % CPU")
        assert "workload: build waits: busy, " in daemon.pgoctl("status").stdout
        assert _builds_started(daemon) == []
    finally:
        for spinner in spinners:
            spinner.send_signal(signal.SIGKILL)
            spinner.wait()
    wait_for(lambda: daemon.package("workload")["state"] == "ready", 60, "built once the CPU is idle")
    conditions = [json.loads(line) for line in daemon.log().splitlines() if '"build.conditions"' in line]
    assert conditions[-1]["waiting"] is None and conditions[-1]["cpu_percent"] < 90


def test_pgoctl_rebuild_does_not_wait_for_the_machine(pgod, workload, llvm_profdata_14, tmp_path, upower):
    fake = upower(on_battery=True)
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["echo", _store_path(tmp_path, "workload")],
                      "llvm_profdata": llvm_profdata_14, "threshold_mb": 0.0001}},
        settled_percent=100, rebuild_change_percent=0, build_on_battery=False,
    )
    daemon = pgod.daemon(env=fake.env)
    _run(pgod, workload, "workload", workload_inputs(2))
    wait_for(lambda: daemon.status()["daemon"]["build_waiting"] == "on battery", 60, "waiting on battery")
    daemon.pgoctl("rebuild", "workload")
    wait_for(lambda: daemon.package("workload")["state"] == "ready", 60, "built at once")


def test_the_cpu_figure_is_the_window_since_the_oldest_sample_a_window_old():
    """The arithmetic alone, on given /proc/stat figures (the daemon tests above read the real one)."""
    from pgod.config import parse_config

    config = parse_config({"build_idle_seconds": 10, "build_idle_cpu_percent": 50}, Path("test.toml"))
    times = iter([(0, 1000), (900, 2000), (1000, 3000)])
    clock = iter([0.0, 5.0, 11.0])
    conditions = Conditions(config, cpu_times=lambda: next(times), on_battery=lambda: None, clock=lambda: next(clock))
    assert conditions.check().waiting == "measuring CPU use (10 s)"
    assert conditions.check().waiting == "measuring CPU use (10 s)"
    reading = conditions.check()  # 11 s after the first sample: (1000 - 0) / (3000 - 1000)
    assert reading.cpu_percent == 50.0 and reading.waiting == "busy, 50 % CPU"


def test_an_unreadable_proc_stat_never_holds_a_build():
    """A unit that hides /proc/stat (ProcSubset=pid) must not make every build wait for ever."""
    from pgod.config import parse_config

    config = parse_config({"build_idle_cpu_percent": 50}, Path("test.toml"))
    conditions = Conditions(config, cpu_times=lambda: None, on_battery=lambda: None)
    assert conditions.check().waiting is None and conditions.check().cpu_percent is None
