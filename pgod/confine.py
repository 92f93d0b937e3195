"""Run a tool on untrusted input as an unprivileged user, inside resource limits.

llvm-profdata parses raw profiles that any local user wrote, and crafted ones make it crash,
allocate gigabytes or write hundreds of megabytes (issue: "one bad file blocks nothing"). So it
never runs as root: the spawn itself drops to the merge user (no supplementary groups, and so no
capabilities: `as_identity`), no_new_privs comes from the process that spawns it (pgod sets it
for itself at start, as its unit does: `set_no_new_privs`), and util-linux's `prlimit` bounds
its address space, CPU time, output file size and core dumps before it starts; the wall clock
is bounded here, and a timeout kills its whole process group. The drop happens in C between
fork and exec, so everything is in force before the first instruction of the tool runs, with
no Python code between fork and exec.

Not util-linux's setpriv: whatever it is asked to do, it ends by applying its capability sets
(capset), which pgod's unit refuses (`~@privileged`): under the unit every merge failed with
"setpriv: activate capabilities: Operation not permitted", even for `setpriv --no-new-privs`."""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ConfineError(RuntimeError):
    """The confinement itself cannot be set up (user or helper missing); not the input's fault."""


@dataclass(frozen=True)
class Identity:
    """Whom the tool runs as: a uid and its primary gid, or None to stay who we are."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_user(cls, name: str) -> Identity | None:
        """The merge user when we are root (whom we must drop to), None otherwise (already
        unprivileged: nothing to drop). Raises ConfineError when root and the user is unknown."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfineError(
                f"no user {name!r} to run llvm-profdata as: create it "
                f"(useradd --system --user-group --no-create-home {name}) or name another in merge_user"
            ) from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ConfineError(f"merge_user {name!r} is root (uid {entry.pw_uid}, gid {entry.pw_gid}): name an unprivileged user")
        return cls(entry.pw_uid, entry.pw_gid, name)


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    memory_bytes: int  # address space (RLIMIT_AS)
    cpu_seconds: int  # RLIMIT_CPU: SIGXCPU, then SIGKILL
    output_bytes: int  # RLIMIT_FSIZE: a larger write gets SIGXFSZ
    wall_seconds: float  # then the process group is killed


@dataclass(frozen=True)
class Finished:
    """How a confined run ended."""

    returncode: int  # negative: killed by that signal
    stderr: str
    timed_out: bool

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def prlimit_path() -> str:
    """Path of prlimit; raises ConfineError naming the package when it is missing."""
    found = shutil.which("prlimit")
    if found is None:
        raise ConfineError("prlimit not found in PATH (util-linux): llvm-profdata cannot run confined")
    return found


def confined_argv(argv: Sequence[str], limits: Limits) -> list[str]:
    """`argv` behind prlimit. Whom it runs as is the spawn's: pass `as_identity(identity)`."""
    return [
        prlimit_path(),
        f"--as={limits.memory_bytes}",
        f"--cpu={limits.cpu_seconds}",
        f"--fsize={limits.output_bytes}",
        "--core=0",
        "--",
        *argv,
    ]


def as_identity(identity: Identity | None) -> dict:
    """Popen arguments that start the child as ``identity``: its uid and primary gid, no
    supplementary groups (setgroups, setregid, setreuid between fork and exec, in C).

    Leaving root for another uid clears the permitted, effective and ambient capability sets
    by itself, so the child has none; no_new_privs, inherited, keeps an exec from gaining any
    back (set-user-ID bits and file capabilities do nothing)."""
    if identity is None:
        return {}
    return {"user": identity.uid, "group": identity.gid, "extra_groups": []}


_PR_SET_NO_NEW_PRIVS = 38


def set_no_new_privs() -> None:
    """Set no_new_privs on this process and so on everything it will start: what pgod's unit
    (NoNewPrivileges=yes) does, done by pgod itself wherever it runs. It needs no privilege,
    cannot be undone, and costs pgod nothing: it never needs an exec to raise its privileges."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise ConfineError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def run_confined(
    argv: Sequence[str],
    limits: Limits,
    identity: Identity | None,
    *,
    pass_fds: Sequence[int] = (),
    stderr_bytes: int = 1 << 20,
) -> Finished:
    """Run `argv` confined, with no input; its stdout is discarded, stderr kept (its last
    `stderr_bytes`). Low CPU priority: a merge must not slow down what the user runs."""
    process = subprocess.Popen(
        confined_argv(argv, limits),
        **as_identity(identity),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        process_group=0,
        close_fds=True,
        # No symbolizer on a crash: a crafted input's stack dump is not worth a second process.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LLVM_DISABLE_SYMBOLIZATION": "1"},
    )
    timed_out = False
    try:
        os.setpriority(os.PRIO_PROCESS, process.pid, 10)
    except OSError:
        pass  # it may already have ended
    try:
        _out, err = process.communicate(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        _out, err = process.communicate()
    # No kill after a normal exit: once reaped, its pid (the group's id) may be reused.
    return Finished(process.returncode, err[-stderr_bytes:].decode("utf-8", "replace"), timed_out)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole group of a child not yet reaped (its pid holds the group's id)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_own(path: Path) -> bytes:
    """A file of pgod's own (a working profile), whole: to hand to the tool as a memfd."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while chunk := os.read(fd, max(size, 1 << 20)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def memfd_holding(name: str, data: bytes) -> int:
    """A memfd holding ``data``. The confined tool, running as another user, reads it through
    /proc/self/fd/N; reopening a root-only file that way is refused (the open checks the
    file's own mode), so pgod's own files go to it as copies."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
