"""A running build watched live: Nix's machine-readable log read into progress, on the screen.

The parser is checked on what Nix 2.8 (Debian's nix-bin, the Nix here) really wrote for
tests/nix/watch.nix (tests/data/nix-2.8-internal-json-*.log, recorded with
`nix-build --log-format internal-json -v`). The screen is checked as a person sees it: the real
daemon runs a real Nix build of that file, `pgoctl watch` runs in a tmux pane, and the test
reads the pane (`tmux capture-pane`) while the build waits at a FIFO the test opens only then.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from pgod.optimize import build_progress
from pgod.optimize.build_progress import BuildProgress, bounded_lines
from pgod.optimize.builds import NIX_LOG_FLAGS, Throttle, is_nix_build, supports_internal_json, with_nix_log
from pgod.ctl.render import build_line, render_status

DATA = Path(__file__).parent / "data"
WATCH_NIX = Path(__file__).parent / "nix" / "watch.nix"
OPTIMIZED_DRV = "/nix/store/n5gx4vw30xx6rsfg15qs4jl2viji7cjp-watch-optimized-rec1.drv"  # in the recording


def recorded(name: str) -> list[str]:
    return (DATA / f"nix-2.8-internal-json-{name}.log").read_text().splitlines()


def fed(lines: list[str], progress: BuildProgress | None = None) -> tuple[BuildProgress, list[str]]:
    progress = progress or BuildProgress()
    written = [text for line in lines if (text := progress.feed(line)) is not None]
    return progress, written


# ---- the parser, on Nix's own output -----------------------------------------------------------
def test_recorded_nix_log_gives_derivation_phase_and_derivations_done_of_total():
    lines = recorded("success")
    waiting = next(i for i, line in enumerate(lines) if "waiting at the gate" in line)
    progress, written = fed(lines[: waiting + 1])

    now = progress.snapshot()
    assert now["format"] == "nix"
    assert now["derivation"] == "watch-optimized-rec1"
    assert now["phase"] == "buildPhase"
    assert (now["done"], now["total"], now["running"], now["failed"]) == (2, 3, 1, 0)
    assert now["building"] == ["watch-optimized-rec1"]
    # The tail is the running derivation's own log, not the steps built before it.
    assert now["log_tail"] == [
        "fixture: running unpackPhase", "fixture: running buildPhase",
        "compiling part 1 of 3", "compiling part 2 of 3", "compiling part 3 of 3", "waiting at the gate",
    ]
    assert written[-1] == "waiting at the gate"

    progress, written = fed(lines[waiting + 1:], progress)
    done = progress.snapshot()
    assert (done["done"], done["total"], done["derivation"], done["phase"]) == (3, 3, None, None)


def test_the_log_written_from_nix_json_is_the_plain_text_nix_build_prints():
    _progress, written = fed(recorded("success"))
    assert not any("@nix" in line or line.startswith("{") for line in written)
    assert written[0] == "these 3 derivations will be built:"
    building = [line for line in written if line.startswith("building '/nix/store/")]
    assert building[-1] == f"building '{OPTIMIZED_DRV}'..."  # as plain nix-build says it
    assert [line.rsplit("-", 1)[0].split("-", 1)[1] for line in building] == [
        "watch-step1", "watch-step2", "watch-optimized"
    ]
    assert written.index("step 1: built") < written.index("step 2: built") < written.index("gate opened: go")
    # `-v` adds "evaluating file" messages (level 4): not what plain nix-build prints, not logged.
    assert not any(line.startswith("evaluating file") for line in written)


def test_a_failed_build_ends_on_nix_error_without_colour_codes():
    progress, written = fed(recorded("failure"))
    assert progress.last_line.startswith("error: builder for '/nix/store/")
    assert "failed with exit code 1" in progress.last_line
    assert "\x1b" not in "".join(written)
    now = progress.snapshot()
    assert now["failed"] == 1 and now["derivation"] is None
    assert now["log_tail"][-1] == progress.last_line  # the error is among the last lines shown


def test_a_plain_build_command_keeps_its_lines_and_terminal_escapes_stay_off_the_screen():
    progress, written = fed(["compiling \x1b[31mred\x1b[0m", "", "linking\x07 now", "@nix not json"])
    assert written == ["compiling \x1b[31mred\x1b[0m", "", "linking\x07 now", "@nix not json"]
    now = progress.snapshot()
    assert now["format"] == "plain"
    assert (now["derivation"], now["phase"], now["done"], now["total"]) == (None, None, None, None)
    assert now["log_tail"] == ["compiling red", "linking now", "@nix not json"]


def test_what_is_kept_of_a_build_is_bounded():
    progress = BuildProgress()
    last = build_progress.MAX_ACTIVITIES + 100
    for ident in range(1, last + 1):
        progress.feed("@nix " + json.dumps({"action": "start", "id": ident, "type": 105, "level": 3,
                                            "fields": [f"/nix/store/{'a' * 32}-d{ident}.drv", "", 1, 1], "text": "b"}))
        progress.feed("@nix " + json.dumps({"action": "result", "id": ident, "type": 101, "fields": ["x" * 5000]}))
    for _ in range(50):
        progress.feed("@nix " + json.dumps({"action": "result", "id": last, "type": 101, "fields": ["y" * 5000]}))
    assert len(progress._types) <= build_progress.MAX_ACTIVITIES
    assert len(progress._running) <= build_progress.MAX_RUNNING
    now = progress.snapshot()
    assert now["derivation"] == f"d{last}" and len(now["building"]) <= 8
    assert len(now["log_tail"]) == build_progress.TAIL_LINES
    assert all(len(line) <= build_progress.SHOWN_CHARS for line in now["log_tail"])
    progress.feed("@nix " + "[" * 100_000)  # nested past Python's recursion limit: a plain line
    progress.feed("@nix " + json.dumps({"action": "result", "id": 3, "type": 105, "fields": "no list"}))


def test_lines_are_cut_at_the_limit_across_chunks():
    chunks = [b"ab", b"c\nde", b"f" * 50, b"g\nhi\xff\n", b"tail"]
    assert list(bounded_lines(chunks, limit=10)) == [
        "abc", f"de{'f' * 8} …[line cut at 10 bytes]", "hi\ufffd", "tail"
    ]
    endless = (b"x" * 65536 for _ in range(64))  # a 4 MiB line
    assert [len(line) for line in bounded_lines(endless, limit=1000)] == [1000 + len(" …[line cut at 1000 bytes]")]


# ---- the command -------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nix-build") is None, reason="nix-build not installed (apt-get install nix-bin)")
def test_nix_builds_ask_for_the_machine_readable_log_and_other_commands_run_as_given():
    assert supports_internal_json("nix-build")  # Nix 2.8 has it
    argv = ["nix-build", "x.nix", "-A", "optimized"]
    assert with_nix_log(argv) == ["nix-build", *NIX_LOG_FLAGS, "x.nix", "-A", "optimized"]
    assert is_nix_build(["/usr/bin/nix", "build", ".#lua"])
    assert not is_nix_build(["nix", "eval", ".#lua"])
    assert not is_nix_build(["nix-build", "--log-format", "bar", "x.nix"])  # the admin chose one
    assert with_nix_log(["make", "build"]) == ["make", "build"]
    assert not supports_internal_json("false")  # a "Nix" refusing the option: run as given


def test_progress_signals_are_limited_to_four_a_second_and_the_last_is_never_lost():
    fired = []
    throttle = Throttle(0.25, lambda: fired.append(time.monotonic()))
    started = time.monotonic()
    for _ in range(1000):
        throttle.poke()
    assert len(fired) == 1
    wait_for(lambda: len(fired) == 2, 5, "the poke held back fires at the interval's end")
    assert fired[1] - fired[0] >= 0.24 and fired[0] - started < 0.2
    throttle.poke()
    throttle.close()
    time.sleep(0.3)
    assert len(fired) == 2, "nothing fires after close"


def test_render_shows_progress_like_the_issue_says():
    build = {"started_at": 1000.0, "format": "nix", "derivation": "lua-5.4.7-pgo-optimized", "phase": "buildPhase",
             "done": 2, "total": 3, "log_tail": ["cc -O2 -c lapi.c", "cc -O2 -c lcode.c"], "last_line": "cc -O2 -c lcode.c"}
    assert build_line(build, now=1072.0) == "[2/3] lua-5.4.7-pgo-optimized: buildPhase  1m12s"
    assert build_line({"started_at": 1000.0, "format": "nix"}, now=1003.0) == "evaluating  3s"
    assert build_line({"started_at": 1000.0, "format": "plain"}, now=1003.0) == "3s"
    document = {
        "daemon": {"version": "x", "spool_backlog": 0},
        "packages": [{"name": "lua", "state": "building", "raw_bytes": 0, "threshold_bytes": 1, "files": 0,
                      "quarantined": 0, "last_error": None, "build": build}],
        "unattributed": {"files": 0, "bytes": 0}, "quarantine": {"files": 0, "bytes": 0},
    }
    screen = render_status(document, now=1072.0, log_lines=1, width=30).splitlines()
    assert "lua  building  [2/3] lua-5.4.7-pgo-optimized: buildPhase  1m12s" in screen
    assert "    cc -O2 -c lcode.c" in screen and "    cc -O2 -c lapi.c" not in screen


# ---- the screen, during a real build -----------------------------------------------------------
class Tmux:
    """A tmux server of the test's own (its socket in the test's folder), one pane 120×40."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.socket = directory / "tmux.sock"
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
                              env=self.env, capture_output=True, text=True, timeout=30)

    def start(self, argv: list[str]) -> None:
        # The pane stays after the command, so a crash of pgoctl is on the screen to read.
        command = f"{shlex.join(argv)}; echo \"[pgoctl exited $?]\"; exec sleep 3600"
        started = self.run("new-session", "-d", "-x", "120", "-y", "40", "-s", "watch", command)
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "watch").stdout

    def close(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux(tmp_path, bus):
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed (apt-get install tmux)")
    server = Tmux(tmp_path, {**os.environ, **bus.env()})
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nix-build") is None, reason="nix-build not installed (apt-get install nix-bin)")
def test_watch_screen_shows_phase_and_progress_of_a_running_nix_build(pgod, workload, llvm_profdata_14, tmux, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    nonce = f"{os.getpid()}x{time.time_ns() % 10**9}"  # new derivations: Nix builds all three
    build = ["nix-build", str(WATCH_NIX), "-A", "optimized", "--argstr", "gate", str(gate), "--argstr", "nonce", nonce,
             "--argstr", "profile", "{profile}", "--no-out-link"]
    pgod.write_config({"watched": {"profile_build": [str(workload)], "build": build, "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    for n in range(3):
        run_instrumented(workload / "bin" / "workload", [str(n), "watch"], pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("watched")["profile"], 60, "a merged profile to build with")

    tmux.start([*daemon.pgoctl_argv(), "watch"])
    wait_for(lambda: "watched" in tmux.screen(), 30, "pgoctl watch shows the status")
    daemon.pgoctl("rebuild", "watched")

    derivation = f"watch-optimized-{nonce}"
    try:
        screen = wait_for(
            lambda: (s := tmux.screen()) and f"[2/3] {derivation}: buildPhase" in s and "waiting at the gate" in s and s,
            120, f"the watch screen shows the build's phase and progress (last screen: {tmux.screen()!r})",
        )
        assert f"watched  building  [2/3] {derivation}: buildPhase  " in screen
        assert "    compiling part 3 of 3" in screen
        assert "@nix" not in screen
        # The build says nothing while it waits: the elapsed time still moves on the screen.
        elapsed = re.compile(re.escape(f"{derivation}: buildPhase  ") + r"(\S+)")
        first = elapsed.search(screen).group(1)
        wait_for(lambda: (m := elapsed.search(tmux.screen())) and m.group(1) != first, 10, "the elapsed time redrawn")

        shown = json.loads(daemon.pgoctl("show", "watched", "--json").stdout)["build"]
        assert (shown["derivation"], shown["phase"], shown["done"], shown["total"]) == (derivation, "buildPhase", 2, 3)
        assert shown["format"] == "nix" and shown["log_tail"][-1] == "waiting at the gate"
        assert shown["elapsed_seconds"] >= 0
        assert f"[2/3] {derivation}: buildPhase" in daemon.pgoctl("show", "watched").stdout
        during = daemon.pgoctl("logs", "watched").stdout
        assert "compiling part 1 of 3" in during and "@nix" not in during
    finally:
        # Release the build: the builder holds the FIFO open, so this open does not block.
        writer = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"go\n")
        os.close(writer)

    ready = wait_for(lambda: (p := daemon.package("watched"))["state"] in ("ready", "failed") and p, 120, "build done")
    assert ready["state"] == "ready", ready["last_error"]
    assert ready["build"] is None
    wait_for(lambda: "ready" in (s := tmux.screen()) and "building  [" not in s, 30,
             f"the watch screen shows the build done (last screen: {tmux.screen()!r})")
    log = daemon.pgoctl("logs", "watched").stdout
    assert "building '/nix/store/" in log and "gate opened: go" in log and ready["optimized"] in log
    assert "@nix" not in log and '"action"' not in log
