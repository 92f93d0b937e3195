"""A live writer driven from Python, by the protocol of docs/design/live-protocol.md.

It publishes given snapshots (real raw profiles, made by a real instrumented program) under a
live name exactly as stdenv-adapters/live/pgod-live.c does: an empty locked file first, then
each snapshot written to a temp name, locked, renamed over the name, the old inode's lock
dropped. Tests use it where they need the daemon's side at a chosen step (a snapshot, then a
SIGKILL of pgod, then the next); the real object is tested end to end by test_live_runtime.py
and test_live_daemon.py's program runs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
from pathlib import Path

F_OFD_GETLK, F_OFD_SETLK = 36, 37
_FLOCK = struct.Struct("hhqqi4x")


def ofd_lock(fd: int) -> None:
    fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        probe = fcntl.fcntl(fd, F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        return _FLOCK.unpack(probe)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


class LiveWriter:
    """One run: ``publish`` a snapshot, ``end`` (the writer exits: its locks go)."""

    def __init__(self, spool: Path, pid: int | None = None, uid: int | None = None) -> None:
        """``uid``: whose the run's files are (a root test standing in for another user's program)."""
        self.spool = Path(spool)
        self.uid = uid
        self.name = f"live-{pid or os.getpid()}-{secrets.token_hex(16)}.profraw"
        self.path = self.spool / self.name
        self._fd = self._create(self.path)

    def _create(self, path: Path) -> int:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_RDWR | os.O_CLOEXEC, 0o600)
        if self.uid is not None:
            os.fchown(fd, self.uid, -1)
        ofd_lock(fd)
        return fd

    def publish(self, snapshot: bytes) -> None:
        temp = self.spool / f".live-{secrets.token_hex(8)}.tmp"
        fd = self._create(temp)
        os.write(fd, snapshot)
        os.rename(temp, self.path)
        os.close(self._fd)
        self._fd = fd

    def end(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# A C program that writes a cumulative snapshot of its own profile after each of argv[1] rounds
# (snap-<r>.profraw in its folder) and its exit write to final.profraw: indirect calls and memcpy
# sizes give it value profiles that grow between snapshots.
SNAPSHOTS_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int __llvm_profile_write_file(void);
void __llvm_profile_set_filename(const char *);
static int add(int a) { return a + 1; }
static int sub(int a) { return a - 1; }
static int twice(int a) { return a * 2; }
typedef int (*op)(int);
int main(int argc, char **argv) {
  op ops[3] = {add, sub, twice};
  int rounds = atoi(argv[1]);
  char src[512], dst[512];
  memset(src, 'x', sizeof src);
  int acc = 0;
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < 1000 * (r + 1); i++) {
      acc = ops[(i + r) % (r + 1 < 3 ? r + 1 : 3)](acc);
      memcpy(dst, src, (size_t)(i % 7 + 1) * (r + 1));
    }
    char name[64];
    snprintf(name, sizeof name, "snap-%d.profraw", r);
    __llvm_profile_set_filename(name);
    if (__llvm_profile_write_file() != 0) return 3;
  }
  __llvm_profile_set_filename("final.profraw");
  printf("%d %d\n", acc, dst[3]);
  return 0;
}
"""


LIVE_OBJECT_SOURCE = Path(__file__).resolve().parent.parent / "stdenv-adapters" / "live" / "pgod-live.c"

# A service that never exits: a work item every tick, forever (what a daemon does).
SERVER_PROGRAM = r"""
#include <time.h>
__attribute__((noinline)) long step(long i) { return i % 5 == 0 ? i / 5 : i * 3 + 1; }
__attribute__((noinline)) long serve(long n) {
  long s = 0;
  for (long i = 0; i < n; i++) s += step(i);
  return s;
}
int main(void) {
  volatile long sink = 0;
  struct timespec tick = {0, 100 * 1000 * 1000};
  for (;;) {
    sink += serve(1000);
    nanosleep(&tick, 0);
  }
}
"""


def build_live_program(clang, source_text: str, folder: Path, name: str, *, baked: str | None = None) -> Path:
    """Compile ``source_text`` instrumented (IR) and link it with the live object as the adapter
    does (stdenv-adapters/default.nix: the object built uninstrumented by the same clang, hidden
    visibility, position-independent). ``baked``: the default profile path compiled in."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    live_o = folder / f".{name}-pgod-live.o"
    subprocess.run([str(clang.cc), "-O2", "-fPIC", "-fvisibility=hidden", "-c", str(LIVE_OBJECT_SOURCE), "-o", str(live_o)],
                   check=True, capture_output=True)
    source = folder / f".{name}.c"
    source.write_text(source_text)
    extra = ["-Xclang", f"-fprofile-instrument-path={baked}"] if baked else []
    out = folder / name
    subprocess.run([str(clang.cc), "-O1", "-fprofile-generate", *extra, "-Wl,--build-id", str(source), str(live_o),
                    "-o", str(out)], check=True, capture_output=True)
    live_o.unlink()
    source.unlink()
    return out


def snapshots_of_a_run(clang, package_root: Path, run_dir: Path, rounds: int, *, extra: tuple[str, ...] = ()) -> list[Path]:
    """Build SNAPSHOTS_PROGRAM (IR) into ``package_root``/bin/prog and run it for ``rounds`` in
    ``run_dir``: its snapshots in order, the exit write last."""
    import subprocess

    (package_root / "bin").mkdir(parents=True, exist_ok=True)
    source = package_root / "prog.c"
    source.write_text(SNAPSHOTS_PROGRAM)
    exe = clang.compile(source, package_root / "bin" / "prog", ir=True, extra=list(extra))
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("*.profraw"):
        old.unlink()  # the runtime appends to a file that exists
    subprocess.run([str(exe), str(rounds)], cwd=run_dir, check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": str(run_dir / "unused.profraw")})
    return [run_dir / f"snap-{r}.profraw" for r in range(rounds)] + [run_dir / "final.profraw"]
