"""Optimized rebuilds run at nice 19, SCHED_IDLE and I/O idle (pgod/optimize/priority.py).

Every check reads real processes: the build command and what it starts record their own
/proc/self/stat (field 19 nice, field 41 policy, 5 = SCHED_IDLE) and `ionice -p $$`; a real
nix-build (the host's single-user Nix, as tests/test_closed_loop.py runs it) writes its builder's
into $out. The daemon case is played by a stand-in nix-daemon, a C program that writes its
client's pid into its own argv[1] exactly as Nix's worker does; the builders it starts are read
from outside. The booted guest checks the real nix-daemon (tests/test_guest_nix.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from unitfile import capability_bounding_set

from pgod.optimize.builds import BuildRun
from pgod.optimize.priority import (
    IOPRIO_IDLE,
    DaemonWatch,
    Lowered,
    daemon_masters,
    descendants,
    io_priority,
    stat_fields,
    worker_client,
    workers_serving,
)

REPO = Path(__file__).resolve().parent.parent
SCHED_IDLE = 5

#: Each process it runs appends "label nice policy ionice-output" for itself.
RECORD = r"""
record() {  # label, pid
    set -- "$1" "$2" $(sed 's/.*) //' /proc/$2/stat)
    printf '%s %s %s %s\n' "$1" "${19}" "${41}" "$(ionice -p $2)" >> "$OUT"
}
"""


def _run_build(argv: list[str], log: Path, timeout: float = 300):
    done = threading.Event()
    results = []
    run = BuildRun("probe", 1, argv, log, lambda result: (results.append(result), done.set()))
    run.start()
    assert done.wait(timeout), "the build did not end"
    return results[0]


def _records(path: Path) -> dict[str, tuple[int, int, str]]:
    found = {}
    for line in path.read_text().splitlines():
        label, nice, policy, io = line.split(" ", 3)
        found[label] = (int(nice), int(policy), io)
    return found


def test_the_build_command_and_all_it_starts_run_at_idle_priority(tmp_path):
    out = tmp_path / "priorities"
    script = tmp_path / "build.sh"
    script.write_text("#!/bin/sh\n" + RECORD + textwrap.dedent("""\
        record command $$
        sh -c '. "$0"; record child $$' "$0.lib"
        (sh -c '. "$0"; record grandchild $$' "$0.lib") & wait
        echo /nix/store/result
        """))
    (tmp_path / "build.sh.lib").write_text(RECORD)
    script.chmod(0o755)
    before = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), io_priority(0))

    result = _run_build([str(script)], tmp_path / "build.log", timeout=60)

    assert result.error == "build printed /nix/store/result, which does not exist"  # it ran to its end
    assert out.exists(), (tmp_path / "build.log").read_text()
    records = _records(out)
    assert set(records) == {"command", "child", "grandchild"}
    for label, (nice, policy, io) in records.items():
        assert (nice, policy, io) == (19, SCHED_IDLE, "idle"), label
    # The daemon's own threads keep their priority: only the thread that started the build lowered itself.
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), io_priority(0)) == before


@pytest.fixture(autouse=True)
def _out_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "priorities"))


PROBE_NIX = r"""
{ nonce }:
derivation {
  name = "pgod-priority-probe";
  system = builtins.currentSystem;
  inherit nonce;
  builder = "/bin/sh";
  # The builder (this shell) and a child it runs write their own stat lines and I/O class.
  args = [ "-c" ''
    read -r stat < /proc/self/stat
    echo "builder $stat" > $out
    /usr/bin/ionice -p $$ >> $out
    echo "child $(/bin/cat /proc/self/stat)" >> $out
  '' ];
}
"""


def _stat_line(line: str) -> tuple[int, int]:
    """nice (field 19) and policy (field 41) of a /proc/PID/stat line."""
    rest = line.rpartition(")")[2].split()
    return int(rest[19 - 3]), int(rest[41 - 3])


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("nix-build") or not os.access("/usr/bin/ionice", os.X_OK),
                    reason="needs nix-build (apt-get install nix-bin) and /usr/bin/ionice")
def test_a_real_nix_build_runs_its_builder_at_idle_priority(tmp_path):
    """Single-user Nix (root, the store itself, no daemon): the builder descends from pgod's
    build command and inherits its priorities."""
    expr = tmp_path / "probe.nix"
    expr.write_text(PROBE_NIX)
    argv = ["nix-build", str(expr), "--argstr", "nonce", f"{time.time_ns()}-{os.getpid()}", "--no-out-link"]

    result = _run_build(argv, tmp_path / "build.log")

    assert result.ok, result.error
    lines = Path(result.out_path).read_text().splitlines()
    builder, io, child = lines
    assert _stat_line(builder.split(" ", 1)[1]) == (19, SCHED_IDLE)
    assert io == "idle"
    assert _stat_line(child.split(" ", 1)[1]) == (19, SCHED_IDLE)
    subprocess.run(["nix-store", "--delete", result.out_path], capture_output=True)


# --- the Nix daemon's workers ------------------------------------------------------------------

FAKE_DAEMON_C = r"""
/* A stand-in for Nix's daemon: `nix-daemon --daemon DIR UID CLIENT...`. The master forks one
   worker per CLIENT; each worker, as Nix's does, writes its client's pid into its own argv[1]
   (strncpy over "--daemon"), starts one builder at once (as UID when not 0), another once
   DIR/go exists, and waits. Every pid goes into DIR/<what>-<client>. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>

static void note(const char *dir, const char *what, const char *client, pid_t pid) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-%s", dir, what, client);
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%d\n", (int)pid); fclose(f); }
}

static pid_t builder(uid_t uid) {
    pid_t pid = fork();
    if (pid == 0) {
        if (uid && setuid(uid) != 0) _exit(1);
        execl("/bin/sleep", "sleep", "600", (char *)0);
        _exit(1);
    }
    return pid;
}

int main(int argc, char **argv) {
    const char *dir = argv[2];
    uid_t uid = (uid_t)atoi(argv[3]);
    for (int i = 4; i < argc; i++) {
        const char *client = argv[i];
        pid_t worker = fork();
        if (worker == 0) {
            setsid();
            strncpy(argv[1], client, strlen(argv[1]));
            note(dir, "early", client, builder(uid));
            note(dir, "worker", client, getpid());
            char go[4096];
            snprintf(go, sizeof go, "%s/go", dir);
            while (access(go, F_OK) != 0) usleep(10000);
            note(dir, "late", client, builder(uid));
            for (;;) pause();
        }
    }
    for (;;) pause();
}
"""


@pytest.fixture
def fake_daemon(tmp_path_factory):
    """Start the stand-in daemon: ``start(uid, *clients)`` → (master pid, its folder)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler (apt-get install gcc)")
    build = tmp_path_factory.mktemp("fake-daemon")
    (build / "fake.c").write_text("#include <stdlib.h>\n" + FAKE_DAEMON_C)
    exe = build / "nix-daemon"  # the kernel names the process after its file: comm "nix-daemon"
    subprocess.run([cc, "-O1", "-o", str(exe), str(build / "fake.c")], check=True)
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(uid: int, *clients: int):
        folder = Path(tmp_path_factory.mktemp("daemon"))
        folder.chmod(0o755)
        master = subprocess.Popen(["nix-daemon", "--daemon", str(folder), str(uid), *map(str, clients)],
                                  executable=str(exe))
        started.append((master, folder))
        deadline = time.monotonic() + 10
        while not all((folder / f"worker-{c}").exists() for c in clients):
            assert time.monotonic() < deadline, "the stand-in daemon did not start its workers"
            time.sleep(0.01)
        return master.pid, folder

    yield start
    for master, folder in started:
        for pid_file in folder.glob("*-*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        master.kill()
        master.wait()


def _pid(folder: Path, what: str, client: int) -> int:
    path = folder / f"{what}-{client}"
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"no {path.name}"
        time.sleep(0.01)
    return int(path.read_text())


def _seen_from_outside(pid: int) -> tuple[int, int, str]:
    """nice, policy (/proc/PID/stat fields 19 and 41) and `ionice -p PID`."""
    fields = stat_fields(pid)
    io = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True, check=True).stdout.strip()
    return int(fields[18]), int(fields[40]), io


LOW = (19, SCHED_IDLE, "idle")


@pytest.fixture
def build_child():
    """A stand-in for pgod's build command: a shell whose child (the Nix client) connects."""
    process = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    client = int(process.stdout.readline())
    yield process.pid, client
    os.kill(client, signal.SIGKILL)
    process.wait()


def test_the_worker_serving_the_build_is_found_by_its_argv1_and_lowered_with_its_builders(fake_daemon, build_child):
    root, client = build_child
    other = os.getpid()  # a worker serving someone else
    master, folder = fake_daemon(0, client, other)
    worker, early = _pid(folder, "worker", client), _pid(folder, "early", client)
    other_worker, other_early = _pid(folder, "worker", other), _pid(folder, "early", other)

    assert master in daemon_masters()
    assert worker_client(worker) == client and worker_client(master) is None
    assert client in descendants(root)
    assert workers_serving({root, client}, [master]) == [worker]

    lowered = Lowered()
    watch = DaemonWatch(root, lowered, fast=0.01).start()
    deadline = time.monotonic() + 10
    while not lowered.workers:
        assert time.monotonic() < deadline, "the watch did not find the worker"
        time.sleep(0.01)
    watch.stop()
    (folder / "go").touch()
    late = _pid(folder, "late", client)

    assert lowered.workers == [worker]
    assert lowered.builders == [early]
    assert lowered.not_lowered == {}
    for pid in (worker, early, late):  # late: started after the watch stopped, it inherited
        assert _seen_from_outside(pid) == LOW, pid
    assert io_priority(worker) == IOPRIO_IDLE
    for pid in (master, other_worker, other_early):
        assert _seen_from_outside(pid) != LOW, pid


WATCH_ONCE = """
import json, sys
from pgod.optimize.priority import DaemonWatch, Lowered
lowered = Lowered()
DaemonWatch(int(sys.argv[1]), lowered).poll()
print(json.dumps({"workers": lowered.workers, "builders": lowered.builders, "not_lowered": lowered.not_lowered}))
"""


def _unit_capabilities(without: str | None = None) -> list[str]:
    """setpriv giving a root process pgod's unit's capabilities (tests/unitfile.py), less one."""
    caps = [c for c in capability_bounding_set() if c != without]
    return ["setpriv", f"--bounding-set=-all,{','.join('+' + c for c in caps)}", "--inh-caps=-all", "--"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv (util-linux)")
def test_with_the_units_capabilities_the_worker_and_a_nixbld_builder_already_running_are_lowered(
        fake_daemon, build_child):
    """pgod's unit keeps five capabilities, CAP_SYS_NICE among them: enough to lower the daemon's
    worker (root's, with every capability) and a builder already running as another user; a
    builder the lowered worker starts afterwards inherits all three."""
    root, client = build_child
    master, folder = fake_daemon(65534, client)
    worker, early = _pid(folder, "worker", client), _pid(folder, "early", client)
    assert "sys_nice" in capability_bounding_set()

    report = _watch_once(_unit_capabilities(), root)
    (folder / "go").touch()
    late = _pid(folder, "late", client)

    assert (report["workers"], report["builders"], report["not_lowered"]) == ([worker], [early], {})
    for pid in (worker, early, late):
        assert _seen_from_outside(pid) == LOW, pid


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv (util-linux)")
def test_without_cap_sys_nice_even_roots_worker_cannot_be_lowered_and_that_is_logged(fake_daemon, build_child):
    """Why the unit grants CAP_SYS_NICE: the kernel refuses a priority change to a process whose
    capabilities are not a subset of the caller's (cap_safe_nice), same uid or not."""
    root, client = build_child
    master, folder = fake_daemon(65534, client)
    worker, early = _pid(folder, "worker", client), _pid(folder, "early", client)

    report = _watch_once(_unit_capabilities(without="sys_nice"), root)

    refused = "nice 19: Operation not permitted; SCHED_IDLE: Operation not permitted; io idle: Operation not permitted"
    assert report["workers"] == [worker] and report["builders"] == [early]
    assert report["not_lowered"] == {str(worker): f"uid 0: {refused}", str(early): f"uid 65534: {refused}"}
    assert _seen_from_outside(worker) != LOW and _seen_from_outside(early) != LOW


def _watch_once(prefix: list[str], root: int) -> dict:
    done = subprocess.run([*prefix, sys.executable, "-c", WATCH_ONCE, str(root)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout)


def test_processes_vanishing_while_looked_at_are_no_error(build_child):
    root, _client = build_child
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert stat_fields(gone.pid) is None and descendants(gone.pid) == [gone.pid] and worker_client(gone.pid) is None
    lowered = Lowered()
    watch = DaemonWatch(gone.pid, lowered, masters=lambda: [gone.pid])
    assert watch.poll() is False
    assert lowered == Lowered()
