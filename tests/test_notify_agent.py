"""The notify agent with the real daemon and a real notification server (dunst under Xvfb):
started before the daemon it waits, it survives daemon restarts, and it tells each finished
build once, live or after the fact, and not again at the next start."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.daemon import BIN, wait_for
from testbed.notifications import NotificationServer
from testbed.programs import workload_inputs

needs_nix = pytest.mark.skipif(not Path("/usr/bin/nix-store").exists(), reason="nix-store not installed (apt-get install nix-bin)")

RUNNING = "pgoctl: notify-agent running"
WAITING = "pgoctl: notify-agent waiting for the pgod daemon on the session bus"

# A build command that costs a second: the merged profile snapshot, copied into a folder that
# is added to the Nix store, as a build's output. Each profile generation gives another path.
BUILD_SCRIPT = """set -e
work=$(mktemp -d)
mkdir "$work/workload-optimized"
cp "$1" "$work/workload-optimized/profile.profdata"
nix-store --add "$work/workload-optimized"
rm -rf "$work"
"""
BUILD = ["/bin/sh", "-c", BUILD_SCRIPT, "build", "{profile}"]


class Agent:
    """`pgoctl notify-agent` as a process, its stdout lines (its state) and stderr lines (its
    log, one JSON event a line) gathered as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [str(BIN / "pgoctl"), "--bus", "session", "notify-agent"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.lines), (self.process.stderr, self.log))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"notify-agent exited {self.process.returncode}: {self.log}")

    def said(self, line: str, times: int = 1, timeout: float = 30) -> None:
        """Wait until the agent has printed ``line`` ``times`` times (it prints one per change)."""
        wait_for(lambda: self._alive() or self.lines.count(line) >= times, timeout,
                 f"notify-agent said {line!r} {times}× (it said {self.lines})")

    def handled(self, event: str, times: int = 1, timeout: float = 30) -> None:
        """Wait until the agent has handled ``times`` PackageEvent signals ``event``."""

        def count() -> int:
            entries = [json.loads(line) for line in self.log if line.startswith("{")]
            return sum(e.get("event") == "notify.event_handled" and e.get("event_") == event for e in entries)

        wait_for(lambda: self._alive() or count() >= times, timeout, f"notify-agent handled {event!r} {times}×")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)


@pytest.fixture
def agents(bus, tmp_path):
    """Starts agents for the test, all with the test's own $XDG_STATE_HOME; stops them after."""
    started: list[Agent] = []
    state_home = tmp_path / "xdg-state"

    def start() -> Agent:
        agent = Agent({**os.environ, **bus.env(), "XDG_STATE_HOME": str(state_home)})
        started.append(agent)
        return agent

    start.state_home = state_home
    yield start
    for agent in started:
        if agent.process.poll() is None:
            agent.stop()


def configure(pgod, workload, profdata, build=BUILD, **top) -> None:
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": build, "llvm_profdata": profdata}}, **top)


def profile_runs(pgod, workload, daemon, count: int) -> None:
    """``count`` runs of the instrumented program, waited for until all are merged."""
    before = daemon.package("workload")["total_files"]
    for args in workload_inputs(count):
        run_instrumented(workload / "bin" / "workload", args, pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("workload")["total_files"] == before + count, 60, f"{count} runs merged", interval=0.2)


def build_now(daemon, state: str = "ready") -> dict:
    """`pgoctl rebuild`, then the package once its build has finished."""
    builds = len(json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["builds"])
    daemon.pgoctl("rebuild", "workload")

    def finished() -> dict | None:
        document = json.loads(daemon.pgoctl("show", "workload", "--json").stdout)
        done = len(document["builds"]) > builds and document["builds"][0]["status"] != "running"
        return document if done and document["state"] == state else None

    return wait_for(finished, 60, f"the build finished, package {state}", interval=0.2)


def ready_notices(server: NotificationServer) -> list[str]:
    return [entry for entry in server.received() if entry.startswith("pgod|workload: optimized build ready")]


@needs_nix
def test_agent_started_before_the_daemon_waits_then_tells_the_ready_build(pgod, workload, llvm_profdata_14, notification_server, agents):
    configure(pgod, workload, llvm_profdata_14)
    agent = agents()
    agent.said(WAITING)
    assert agent.process.poll() is None, "the agent must wait for the daemon, not exit"

    daemon = pgod.daemon()
    agent.said(RUNNING)
    profile_runs(pgod, workload, daemon, 5)
    package = build_now(daemon)

    [notice] = wait_for(lambda: ready_notices(notification_server), 30, "dunst received the ready notification")
    summary, body = notice.split("|", 2)[1:]
    assert summary == "workload: optimized build ready", notice
    assert "pgoctl activate workload" in body and "Activate button" in body
    assert "Speed-up: not measured" in body
    assert package["optimized"] in body
    assert "before this agent could tell you" not in body, "told live, not after the fact"


@needs_nix
def test_daemon_restarted_between_two_builds_each_build_is_told_once(pgod, workload, llvm_profdata_14, notification_server, agents):
    configure(pgod, workload, llvm_profdata_14)
    daemon = pgod.daemon()
    agent = agents()
    agent.said(RUNNING)
    profile_runs(pgod, workload, daemon, 5)
    first = build_now(daemon)
    wait_for(lambda: len(notification_server.received()) == 1, 30, "first build told")

    daemon.kill()  # SIGKILL: no goodbye, only the bus seeing its name lose its owner
    agent.said(WAITING)
    # The restarted daemon activates builds itself: the agent asks for the mode when it needs
    # it, so the next build is told as in use, not as waiting for `pgoctl activate`.
    configure(pgod, workload, llvm_profdata_14, activation="auto")
    daemon = pgod.daemon()
    agent.said(RUNNING, times=2)  # caught up: the first build is not told again
    assert len(notification_server.received()) == 1, notification_server.received()

    profile_runs(pgod, workload, daemon, 5)
    second = build_now(daemon, state="active")
    assert second["optimized"] != first["optimized"]
    agent.handled("activated")
    received = wait_for(lambda: (r := notification_server.received()) and len(r) >= 2 and r, 30, "second build told")
    assert received[0].startswith("pgod|workload: optimized build ready|") and first["optimized"] in received[0]
    assert received[1].startswith("pgod|workload: optimized build in use|It is in use now"), received
    assert second["optimized"] in received[1] and "pgoctl deactivate workload" in received[1]
    assert len(received) == 2, received
    assert agent.process.poll() is None


@needs_nix
def test_a_build_finished_while_no_agent_ran_is_told_at_its_start_and_not_at_the_next(
    pgod, workload, llvm_profdata_14, notification_server, agents
):
    configure(pgod, workload, llvm_profdata_14)
    daemon = pgod.daemon()
    profile_runs(pgod, workload, daemon, 5)
    package = build_now(daemon)

    agent = agents()
    agent.said(RUNNING)  # printed once the catch-up is done
    [notice] = wait_for(lambda: ready_notices(notification_server), 30, "the finished build told at the agent's start")
    assert package["optimized"] in notice and "pgoctl activate workload" in notice
    assert "before this agent could tell you" in notice
    record = json.loads((agents.state_home / "pgod" / "notified.json").read_text())
    assert record["packages"]["workload"]["ready"] == f"{package['builds'][0]['id']}@{package['builds'][0]['finished_at']!r}"
    agent.stop()

    again = agents()
    again.said(RUNNING)
    assert len(ready_notices(notification_server)) == 1, notification_server.received()
    assert notification_server.received() == [notice]


@needs_nix
def test_a_failed_build_is_told_once_after_the_fact(pgod, workload, llvm_profdata_14, notification_server, agents):
    configure(pgod, workload, llvm_profdata_14, build=["false"])
    daemon = pgod.daemon()
    profile_runs(pgod, workload, daemon, 5)
    build_now(daemon, state="failed")

    agents().said(RUNNING)
    [notice] = wait_for(notification_server.received, 30, "the failed build told at the agent's start")
    assert notice.startswith("pgod|workload: optimized build failed|build exited 1"), notice
    assert "pgoctl logs workload" in notice
    agents().said(RUNNING)
    assert notification_server.received() == [notice]


@needs_nix
def test_auto_mode_says_the_build_is_in_use_and_how_to_go_back_once(pgod, workload, llvm_profdata_14, notification_server, agents):
    configure(pgod, workload, llvm_profdata_14, activation="auto")
    daemon = pgod.daemon()
    agent = agents()
    agent.said(RUNNING)
    profile_runs(pgod, workload, daemon, 5)
    package = build_now(daemon, state="active")

    # A later activation by hand is told; the automatic one just before it was told as the
    # build itself ("in use"), so the two notifications are these, in this order.
    daemon.pgoctl("deactivate", "workload")
    daemon.pgoctl("activate", "workload")
    agent.handled("activated", times=2)
    received = wait_for(lambda: (r := notification_server.received()) and len(r) >= 2 and r, 30, "two notifications")
    summary, body = received[0].split("|", 2)[1:]
    assert summary == "workload: optimized build in use", received
    assert "pgoctl deactivate workload" in body and package["optimized"] in body
    assert "pgoctl activate" not in body
    assert received[1].startswith("pgod|workload: optimized build in use|workload now runs from"), received
    assert len(received) == 2, received



@needs_nix
def test_a_new_build_of_a_package_in_use_is_told_once_as_in_use(pgod, workload, llvm_profdata_14, notification_server, agents):
    """In notify mode too, the daemon puts a package's new build in use when its previous one was."""
    configure(pgod, workload, llvm_profdata_14)
    daemon = pgod.daemon()
    agent = agents()
    agent.said(RUNNING)
    profile_runs(pgod, workload, daemon, 5)
    build_now(daemon)
    daemon.pgoctl("activate", "workload")
    agent.handled("activated")
    profile_runs(pgod, workload, daemon, 5)
    second = build_now(daemon, state="active")
    agent.handled("activated", times=2)
    received = wait_for(lambda: (r := notification_server.received()) and len(r) >= 3 and r, 30, "three notifications")
    assert [entry.split("|")[1] for entry in received] == [
        "workload: optimized build ready", "workload: optimized build in use", "workload: optimized build in use",
    ], received
    assert second["optimized"] in received[2] and "It is in use now" in received[2]


class GoneMidCall:
    """A stand-in for pgod's client whose daemon vanishes at will: every call raises
    DaemonUnreachable while ``gone``, as the real client does when the daemon dies mid-call."""

    bus_kind = "session"
    OUT = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-lua-5.4.7"

    def __init__(self) -> None:
        self.gone = False
        self.on_owner = self.on_event = None

    def subscribe(self, _signal: str, handler) -> None:
        self.on_event = handler

    def watch_owner(self, on_owner) -> None:
        self.on_owner = on_owner

    def _answer(self, document: dict) -> dict:
        from pgod.ctl.client import DaemonUnreachable

        if self.gone:
            raise DaemonUnreachable("org.freedesktop.DBus.Error.NoReply")
        return document

    def status(self) -> dict:
        return self._answer({"daemon": {"activation": "notify"}, "packages": [{"name": "lua", "optimized": self.OUT}]})

    def package(self, name: str) -> dict:
        build = {"id": 1, "status": "succeeded", "finished_at": 1764600000.5, "out_path": self.OUT}
        return self._answer({"name": name, "state": "ready", "optimized": self.OUT, "active": False, "builds": [build]})


class RecordingServer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def get(self, _name: str) -> "RecordingServer":
        return self

    def Notify(self, _app, _replaces, _icon, summary, _body, _actions, _hints, _timeout) -> int:  # noqa: N802 (D-Bus name)
        self.sent.append(summary)
        return len(self.sent)


def test_a_daemon_gone_mid_call_sends_the_agent_back_to_waiting_and_nothing_is_lost(tmp_path, monkeypatch):
    from gi.repository import GLib

    from pgod.ctl import notify_agent
    from pgod.ctl.notify_record import NotifiedRecord

    monkeypatch.setattr(notify_agent, "RETRY_SECONDS", 0)
    client, server, said = GoneMidCall(), RecordingServer(), []
    agent = notify_agent.NotifyAgent(client, server, NotifiedRecord(tmp_path / "notified.json"), said.append)
    agent.start()
    client.gone = True
    client.on_owner(":1.5")  # it appears, and dies before the catch-up's first answer
    assert said == [WAITING] and server.sent == []
    client.on_event("lua", "ready", client.OUT)  # a signal already on its way: not told, not raised
    client.on_owner("")  # its NameOwnerChanged, which cancels the retry: now only an owner brings it back
    assert said == [WAITING]

    client.gone = False
    client.on_owner(":1.9")
    assert said == [WAITING, RUNNING]
    assert server.sent == ["lua: optimized build ready"], "the build is told once the daemon is back"
    client.on_event("lua", "ready", client.OUT)
    assert server.sent == ["lua: optimized build ready"]

    # A daemon that keeps its name but does not answer: waiting, then asked again by itself.
    client.gone = True
    client.on_event("lua", "failed", "build exited 1")
    assert said == [WAITING, RUNNING, WAITING]
    client.gone = False
    context = GLib.MainContext.default()
    # Each poll runs the main loop once (the retry is a GLib timeout), then looks.
    wait_for(lambda: (context.iteration(False), said[-1] == RUNNING)[1], 10, "asked again after no answer")
    assert said == [WAITING, RUNNING, WAITING, RUNNING]


def gated_build(pgod, workload, profdata, agents, tmp_path, candidate_is: str) -> dict:
    """A build the benchmark gate measures, with an agent running: the candidate is a store path
    ten times faster (or slower) than the baseline. The package once its build is judged."""
    from test_pgo_stages import slow_and_fast_builds

    fast, slow = slow_and_fast_builds(tmp_path)
    candidate, baseline = (fast, slow) if candidate_is == "fast" else (slow, fast)
    pgod.write_config({"workload": {
        "profile_build": [str(workload)], "build": ["echo", candidate], "llvm_profdata": profdata,
        "benchmark": ["{bin}/bin/work"], "baseline_build": baseline,
    }})
    daemon = pgod.daemon()
    agent = agents()
    agent.said(RUNNING)
    profile_runs(pgod, workload, daemon, 2)
    package = build_now(daemon, state="ready" if candidate_is == "fast" else "rejected")
    package["agent"] = agent
    return package


@needs_nix
def test_a_build_the_benchmark_gate_measured_is_told_with_its_speedup(pgod, workload, llvm_profdata_14, notification_server, agents, tmp_path):
    """The gate's figure reaches the user: "workload: optimized build ready, N× faster on your
    benchmark"."""
    package = gated_build(pgod, workload, llvm_profdata_14, agents, tmp_path, "fast")
    speedup = package["builds"][0]["speedup"]
    assert speedup > 1.0 and package["speedup"] == speedup
    [notice] = wait_for(lambda: ready_notices(notification_server), 30, "dunst received the ready notification")
    summary = notice.split("|", 2)[1]
    assert summary == f"workload: optimized build ready, {speedup:.2f}× faster on your benchmark", notice


@needs_nix
def test_a_build_the_gate_refused_is_told_once_and_nothing_is_offered(pgod, workload, llvm_profdata_14, notification_server, agents, tmp_path):
    package = gated_build(pgod, workload, llvm_profdata_14, agents, tmp_path, "slow")
    agent = package["agent"]
    speedup = package["builds"][0]["speedup"]
    assert speedup < 1.0
    notices = wait_for(lambda: [n for n in notification_server.received() if n.startswith("pgod|workload: optimized build not used")],
                       30, "dunst received the rejection")
    assert notices[0].split("|", 2)[1] == f"workload: optimized build not used, {speedup:.2f}× the speed on your benchmark"
    assert "below min_speedup 1" in notices[0] and "pgoctl show workload" in notices[0]
    assert not ready_notices(notification_server)
    agent.stop()
    again = agents()
    again.said(RUNNING)
    assert len([n for n in notification_server.received() if "not used" in n]) == 1, "told again at the next start"
