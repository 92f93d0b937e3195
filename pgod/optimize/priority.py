"""Optimized rebuilds run at the lowest CPU and I/O priority: nice 19, SCHED_IDLE, I/O class idle.

A rebuild is background work that must never slow the machine's own: a rebuild only goes as
fast as nothing else wants the CPU or the disk. Benchmarks (gate.py) are not lowered like this:
they measure speed.

Two paths lead to the builder processes:

- **Without a Nix daemon** (single-user Nix, root using the store itself) the builders descend
  from pgod's build command, and inherit its priorities. The command is started by a short-lived
  thread that lowers itself first (nice, scheduling policy and I/O priority are per-thread on
  Linux, and a forked child copies the forking thread's): the child has them from its first
  instruction, with no `preexec_fn` (Python code between fork and exec in a threaded daemon) and
  no window between the fork and a setpriority on its pid. The build thread itself, which reads
  the build's log, keeps pgod's own priority.
- **Through nix-daemon** (NIX_REMOTE=daemon, as pgod's unit sets) the builders are children of
  the daemon's worker process that serves the client, not of pgod, and Nix has no build priority
  setting (NixOS/nix#3020, #11088). But the worker writes its client's pid into its own argv[1]
  ("For debugging, stuff the pid into argv[1]": src/nix/daemon.cc in Nix 2.8,
  src/nix/unix/daemon.cc in 2.26; the master runs as `nix-daemon --daemon`, so 8 characters of
  room). While the build runs, a small thread (DaemonWatch) looks at the master daemon's
  children for workers whose argv[1] is the pid of the build command or of one of its
  descendants, and lowers each worker (all its threads) and whatever it has already started: the
  builders it forks afterwards inherit. That takes CAP_SYS_NICE, although the worker is root's
  as pgod is: besides the uid check, the kernel refuses to change the priorities of a process
  whose permitted capabilities are not a subset of the caller's (security/commoncap.c,
  cap_safe_nice), and the daemon has them all where pgod's unit keeps five. pgod's unit grants
  CAP_SYS_NICE for this; the same grant lets pgod lower builders already running as a `nixbld`
  user (another uid). What could not be lowered is logged (the watch polls every 50 ms at first,
  so a worker is normally found while its client still evaluates, long before its first builder).

Processes come and go while they are looked at: every read of /proc may find one gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import time
from dataclasses import dataclass, field

import structlog

from pgod.osthread import name_os_thread

log = structlog.get_logger(__name__)

NICENESS = 19
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_IDLE = 3
IOPRIO_IDLE = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
#: ioprio_set / ioprio_get: no wrapper in Python or glibc.
IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}
WHAT = ("nice 19", "SCHED_IDLE", "io idle")

DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"
FAST_POLL_SECONDS = 0.05  # while a build's client is new: find its worker before it forks builders
SLOW_POLL_SECONDS = 1.0
FAST_PHASE_SECONDS = 10.0  # after the start, and after each new client process

_libc = ctypes.CDLL(None, use_errno=True)


def _ioprio_syscall(index: int) -> int | None:
    numbers = IOPRIO_SYSCALLS.get(platform.machine())
    return numbers[index] if numbers else None


def set_io_idle(tid: int) -> None:
    """I/O class idle for one thread (0: the calling one); OSError when refused."""
    number = _ioprio_syscall(0)
    if number is None:
        raise OSError(errno.ENOSYS, f"no ioprio_set number known for {platform.machine()}")
    if _libc.syscall(number, IOPRIO_WHO_PROCESS, tid, IOPRIO_IDLE) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def io_priority(tid: int) -> int:
    """The thread's raw I/O priority (class << 13 | level); OSError when it cannot be read."""
    number = _ioprio_syscall(1)
    if number is None:
        raise OSError(errno.ENOSYS, f"no ioprio_get number known for {platform.machine()}")
    value = _libc.syscall(number, IOPRIO_WHO_PROCESS, tid)
    if value == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return value


def lower_thread(tid: int) -> list[str]:
    """Nice 19, SCHED_IDLE and I/O idle for one thread (a task id; a process's main thread has
    its pid). What could not be set, as "what: why"; an empty list when all three were.
    Raises ProcessLookupError when the thread is gone."""
    failed = []
    steps = (
        ("nice 19", lambda: os.setpriority(os.PRIO_PROCESS, tid, NICENESS)),
        ("SCHED_IDLE", lambda: os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))),
        ("io idle", lambda: set_io_idle(tid)),
    )
    for what, step in steps:
        try:
            step()
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise ProcessLookupError(errno.ESRCH, f"thread {tid} is gone") from None
            failed.append(f"{what}: {err.strerror}")
    return failed


def lower_process(pid: int) -> list[str]:
    """`lower_thread` for each thread of a process (each carries its own priorities); what
    failed, once per kind. ProcessLookupError when the process is gone."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"process {pid} is gone") from None
    failed: list[str] = []
    lowered_any = False
    for tid in tids:
        try:
            failed += [f for f in lower_thread(tid) if f not in failed]
            lowered_any = True
        except ProcessLookupError:
            continue  # that thread ended
    if not lowered_any:
        raise ProcessLookupError(errno.ESRCH, f"process {pid} is gone")
    return failed


def popen_lowered(popen, *args, **kwargs):
    """``popen(*args, **kwargs)`` (subprocess.Popen) from a thread that lowered itself first,
    so the child starts at nice 19, SCHED_IDLE and I/O idle, and so does all it starts.
    Returns (the Popen, what could not be set on it). The thread ends once the child exists."""
    result: dict = {}

    def spawn() -> None:
        try:
            result["failed"] = lower_thread(threading.get_native_id())
            result["process"] = popen(*args, **kwargs)
        except BaseException as err:  # handed to the caller's thread
            result["error"] = err

    spawner = threading.Thread(target=spawn, name="pgod-build-spawn", daemon=True)
    spawner.start()
    spawner.join()
    if "error" in result:
        raise result["error"]
    return result["process"], result["failed"]


# --- /proc ---------------------------------------------------------------------------------------


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return None


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat split into fields, field N (1-based, as in proc(5)) at index N-1; None
    when the process is gone. The name (field 2) may hold spaces and parentheses."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    head, _, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    return [pid_text, comm, *rest.split()]


def cmdline(pid: int) -> list[str] | None:
    """The process's argv as it now reads (a process may rewrite it); None when gone."""
    raw = _read(f"/proc/{pid}/cmdline")
    if raw is None:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")]


def real_uid(pid: int) -> int | None:
    raw = _read(f"/proc/{pid}/status")
    for line in (raw or b"").splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    return None


#: /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN (Debian's and NixOS's kernels have it).
_KERNEL_LISTS_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children(pid: int) -> list[int]:
    """The process's children, as the kernel lists them per thread (else by a scan of every
    process's parent); [] when it is gone."""
    if not _KERNEL_LISTS_CHILDREN:
        return [p for p in _all_pids() if (fields := stat_fields(p)) is not None and fields[3] == str(pid)]
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for tid in tids:
        raw = _read(f"/proc/{pid}/task/{tid}/children")
        found += [int(c) for c in (raw or b"").split()]
    return found


def descendants(pid: int) -> list[int]:
    """The process and everything below it, parents before children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        if current in found:
            continue
        found.append(current)
        todo += children(current)
    return found


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def is_daemon_master(pid: int, argv: list[str] | None = None) -> bool:
    """A Nix daemon that accepts connections: root's `nix-daemon …` (or `nix daemon …`) whose
    argv[1] is not a worker's client pid."""
    argv = cmdline(pid) if argv is None else argv
    if not argv or real_uid(pid) != 0:
        return False
    program = os.path.basename(argv[0])
    if program == "nix":
        return len(argv) > 1 and argv[1] == "daemon"
    return program == "nix-daemon" and not (len(argv) > 1 and argv[1].strip("\0").isdigit())


def daemon_masters() -> list[int]:
    """Every running Nix daemon master, found by a scan of /proc (names first: only a process
    called nix-daemon or nix has its command line read)."""
    found = []
    for pid in _all_pids():
        fields = stat_fields(pid)
        if fields is not None and fields[1] in ("nix-daemon", "nix") and is_daemon_master(pid):
            found.append(pid)
    return found


def worker_client(pid: int) -> int | None:
    """The client pid a daemon worker wrote into its argv[1], or None (not one, not yet, gone)."""
    argv = cmdline(pid)
    if not argv or len(argv) < 2 or os.path.basename(argv[0]) not in ("nix-daemon", "nix"):
        return None
    client = argv[1].strip("\0")
    return int(client) if client.isdigit() and real_uid(pid) == 0 else None


def workers_serving(clients: set[int], masters: list[int]) -> list[int]:
    """The masters' children that serve one of ``clients``."""
    return [w for m in masters for w in children(m) if worker_client(w) in clients]


# --- the watch -----------------------------------------------------------------------------------


def daemon_may_serve() -> bool:
    """Could the build's Nix talk to a daemon here? Its socket exists."""
    return os.environ.get("NIX_REMOTE") == "daemon" or os.path.exists(DAEMON_SOCKET)


@dataclass
class Lowered:
    """What one build's priorities came to, for its one `build.lowered` line."""

    child: int | None = None
    child_failed: list[str] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    builders: list[int] = field(default_factory=list)  # below a worker, already running when it was found
    not_lowered: dict[int, str] = field(default_factory=dict)  # pid: "user: what: why"


class DaemonWatch:
    """Finds, while one build runs, the Nix daemon workers serving its processes and lowers
    them and what they already run. Its own thread; `stop()` ends it (the build has ended)."""

    def __init__(self, root: int, lowered: Lowered, *, fast=FAST_POLL_SECONDS, slow=SLOW_POLL_SECONDS,
                 fast_phase=FAST_PHASE_SECONDS, masters=daemon_masters) -> None:
        self.root = root
        self.lowered = lowered
        self._fast, self._slow, self._fast_phase = fast, slow, fast_phase
        self._find_masters = masters
        self._masters: list[int] = []
        self._clients: set[int] = set()
        self._done: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.polls = 0
        self._thread = threading.Thread(target=self._run, name="pgod-build-priority", daemon=True)

    def start(self) -> DaemonWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        name_os_thread()
        fast_until = time.monotonic() + self._fast_phase
        while not self._stop.is_set() and os.path.exists(f"/proc/{self.root}"):  # bounded by the build
            try:
                if self.poll():
                    fast_until = time.monotonic() + self._fast_phase
            except Exception as err:  # never take the build down; say it once
                log.warning("build.priority_watch_failed", root=self.root, error=repr(err))
                return
            self._stop.wait(self._fast if time.monotonic() < fast_until else self._slow)

    def poll(self) -> bool:
        """One look; True when the build has a client process not seen before."""
        self.polls += 1
        clients = set(descendants(self.root)) if os.path.exists(f"/proc/{self.root}") else set()
        new = bool(clients - self._clients)
        self._clients |= clients
        if not clients:
            return False
        if not self._masters or not all(os.path.exists(f"/proc/{m}") for m in self._masters):
            self._masters = self._find_masters()
        for worker in workers_serving(clients, self._masters):
            if worker not in self._done:
                self._lower_worker(worker)
        return new

    def _lower_worker(self, worker: int) -> None:
        self._done.add(worker)
        with self._lock:
            self.lowered.workers.append(worker)
        # The worker first, so what it forks from now on inherits; then what it already runs.
        for pid in descendants(worker):
            if pid != worker:
                if pid in self._done:
                    continue
                self._done.add(pid)
            try:
                failed = lower_process(pid)
            except ProcessLookupError:
                continue
            with self._lock:
                if pid != worker:
                    self.lowered.builders.append(pid)
                if failed:
                    self.lowered.not_lowered[pid] = f"uid {real_uid(pid)}: {'; '.join(failed)}"


class BuildPriority:
    """One build's lowering: `popen` starts the command lowered (and the daemon watch, where a
    daemon may serve it); `close` after the build ends stops the watch and logs once."""

    def __init__(self, package: str, build_id: int) -> None:
        self.package = package
        self.build_id = build_id
        self.lowered = Lowered()
        self._watch: DaemonWatch | None = None

    def popen(self, popen, *args, **kwargs):
        process, failed = popen_lowered(popen, *args, **kwargs)
        self.lowered.child, self.lowered.child_failed = process.pid, failed
        if daemon_may_serve():
            self._watch = DaemonWatch(process.pid, self.lowered).start()
        return process

    def close(self) -> Lowered:
        if self._watch is not None:
            self._watch.stop()
        low = self.lowered
        if low.child is not None:
            log.info("build.lowered", package=self.package, build=self.build_id, set=list(WHAT),
                     child=low.child, child_failed=low.child_failed or None,
                     daemon_watched=self._watch is not None, workers=low.workers, builders=low.builders,
                     not_lowered=low.not_lowered or None)
        return low
