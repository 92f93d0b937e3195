"""Programs linked with the live object, built and driven as tests/test_live_runtime.py and
tests/test_live_acceptance.py need them (by clang 14 and 19, the adapter's flags).

The test program takes commands on stdin, so every count it makes is known: `w N` calls step()
N times, `l N` calls the shared library's lib_step() N times, `fork N PATH` forks a child that
calls step() N times and exits once PATH exists, `exec` becomes /bin/sleep, `spin` calls step()
forever. Checked from outside as pgod's reader sees it: the live file's name, its OFD write
lock, its bytes (llvm-profdata of the same release). Every wait is a poll with a deadline.
The fixtures `built` and `programs` are in tests/conftest.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.clangs import Clang
from testbed.live import LIVE_OBJECT_SOURCE as LIVE_C

F_OFD_GETLK = 36
FLOCK = "@hhqqi4x"  # struct flock on x86_64/aarch64 Linux: type, whence, start, len, pid
LIVE_NAME = re.compile(r"live-(\d+)-[0-9a-f]{32}\.profraw")
DEADLINE = 30.0

PROGRAM = r"""
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef WITH_LIB
long lib_step(long i);
#endif

__attribute__((noinline)) long step(long i) { return i % 5 == 0 ? i / 5 : i * 3 + 1; }

__attribute__((noinline)) long work(long n) {
  long s = 0;
  for (long i = 0; i < n; i++) s += step(i);
  return s;
}

/* a poll of a path (its own counters, none in step) */
static void wait_for_path(const char *path) {
  struct stat st;
  for (int i = 0; i < 6000 && stat(path, &st) != 0; i++) usleep(10000);
}

int main(void) {
  char line[4200];
  long sum = 0;
  int kept[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (fgets(line, sizeof line, stdin)) {
    long n = 0;
    char path[4096];
    if (sscanf(line, "w %ld", &n) == 1) {
      sum += work(n);
      printf("ok %ld\n", sum);
    } else if (strncmp(line, "spin", 4) == 0) {
      printf("spinning\n");
      for (long i = 0;; i++) sum += step(i);
#ifdef WITH_LIB
    } else if (sscanf(line, "l %ld", &n) == 1) {
      for (long i = 0; i < n; i++) sum += lib_step(i);
      printf("ok %ld\n", sum);
#endif
    } else if (sscanf(line, "fork %ld %4095s", &n, path) == 2) {
      fflush(stdout);
      pid_t child = fork();
      if (child == 0) {
        for (int i = 0; i < 8; i++) /* the program's own files, if it has them, are the child's too */
          if (kept[i] >= 0 && write(kept[i], "child\n", 6) != 6) _exit(6);
        sum += work(n);
        printf("child %d\n", (int)getpid());
        fflush(stdout);
        wait_for_path(path);
        exit(0);
      }
      int status = 0;
      waitpid(child, &status, 0);
      printf("reaped %d\n", status);
    } else if (sscanf(line, "closeall %4095s", path) == 1) {
      /* as daemons do: every descriptor above stderr closed, then files of its own opened (they
       * get the numbers the live object had) */
      for (int fd = 3; fd < 1024; fd++) close(fd);
      for (int i = 0; i < 8; i++) kept[i] = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
      printf("closed %d %d\n", kept[0], kept[7]);
    } else if (sscanf(line, "dl %ld %4095s", &n, path) == 2) {
      void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
      long (*lib_step)(long) = lib ? (long (*)(long))dlsym(lib, "lib_step") : NULL;
      if (!lib_step) return 4;
      for (long i = 0; i < n; i++) sum += lib_step(i);
      dlclose(lib);
      printf("unloaded\n");
    } else if (strncmp(line, "exec", 4) == 0) {
      execl("/bin/sleep", "sleep", "60", (char *)NULL);
      return 3;
    }
  }
  for (int i = 0; i < 8; i++)
    if (kept[i] >= 0 && (write(kept[i], "intact\n", 7) != 7 || close(kept[i]) != 0)) return 5;
  return sum == 42; /* never: keeps sum alive */
}
"""

LIBRARY = r"""
__attribute__((noinline)) long lib_step(long i) { return i % 3 == 0 ? i / 3 : i + 7; }
"""


@dataclass(frozen=True)
class Built:
    clang: Clang
    prog: Path  # with pgod-live.o
    prog_exit: Path  # the same instrumented object, without pgod-live.o
    prog_lib: Path  # with pgod-live.o, linked to lib (which has its own pgod-live.o)
    lib: Path
    baked: Path  # the spool baked in with -fprofile-instrument-path


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed: {done.stderr[-3000:]}"
    return done


def build(clang: Clang, root: Path) -> Built:
    """The test programs of PROGRAM and LIBRARY in ``root``, with and without the live object."""
    baked = root / "baked"
    baked.mkdir()
    cc = str(clang.cc)
    live_o = root / "pgod-live.o"
    # as the adapter compiles it: the package's clang, not instrumented, position-independent
    run([cc, "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror", "-c", str(LIVE_C), "-o", str(live_o)])
    instrument = ["-O1", "-fprofile-generate", "-Xclang", f"-fprofile-instrument-path={baked}/%p.profraw"]
    link = ["-fprofile-generate", "-Wl,--build-id"]
    (root / "prog.c").write_text(PROGRAM)
    (root / "lib.c").write_text(LIBRARY)
    run([cc, *instrument, "-c", str(root / "prog.c"), "-o", str(root / "prog.o")])
    run([cc, *instrument, "-DWITH_LIB", "-c", str(root / "prog.c"), "-o", str(root / "prog-lib.o")])
    run([cc, *instrument, "-fPIC", "-c", str(root / "lib.c"), "-o", str(root / "lib.o")])
    lib = root / "libstep.so"
    run([cc, *link, "-shared", str(root / "lib.o"), str(live_o), "-o", str(lib)])
    prog, prog_exit, prog_lib = root / "prog", root / "prog-exit", root / "prog-lib"
    run([cc, *link, str(root / "prog.o"), str(live_o), "-o", str(prog)])
    run([cc, *link, str(root / "prog.o"), "-o", str(prog_exit)])
    run([cc, *link, str(root / "prog-lib.o"), str(live_o), f"-L{root}", "-lstep", f"-Wl,-rpath,{root}", "-o", str(prog_lib)])
    return Built(clang, prog, prog_exit, prog_lib, lib, baked)


# --- looking from outside ---------------------------------------------------------------------


def locked(path: Path) -> bool:
    """Whether some open file description holds a write lock on the file (pgod's probe)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        answer = fcntl.fcntl(fd, F_OFD_GETLK, struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        return struct.unpack(FLOCK, answer)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def poll(predicate, what: str, timeout: float = DEADLINE):
    """predicate() until it returns something true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.02)


def live_files(spool: Path, pid: int | None = None) -> list[Path]:
    found = []
    for path in sorted(spool.iterdir()):
        match = LIVE_NAME.fullmatch(path.name)
        if match and (pid is None or int(match.group(1)) == pid):
            found.append(path)
    return found


def counts(clang: Clang, raw: Path | bytes, scratch: Path) -> dict[str, list[int]]:
    """Function → its counters, as that clang's llvm-profdata shows a copy of the bytes."""
    copy = scratch / f"copy-{time.monotonic_ns()}.profraw"
    copy.write_bytes(raw if isinstance(raw, bytes) else raw.read_bytes())
    shown = clang.profdata_show(copy, "--all-functions", "--counts")
    copy.unlink()
    assert shown.returncode == 0, f"llvm-profdata-{clang.version} show: {shown.stderr[-2000:]}"
    found: dict[str, list[int]] = {}
    name = None
    for line in shown.stdout.splitlines():
        if line.startswith("  ") and not line.startswith("    ") and line.rstrip().endswith(":"):
            name = line.strip()[:-1]
        elif "Block counts: [" in line and name is not None:
            inside = line.split("[", 1)[1].rstrip("]").strip()
            found[name] = [int(n) for n in inside.split(",")] if inside else []
    return found


def calls(found: dict[str, list[int]], function: str) -> int:
    """step() and lib_step() have one if/else: their two counters add up to their calls."""
    return sum(found.get(function, []))


def snapshot(path: Path) -> tuple[int, bytes]:
    """(inode, bytes) of what the name points at, read through one descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0, b""
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            return os.fstat(fd).st_ino, f.read()
    finally:
        os.close(fd)


class Program:
    """One run of a test program, fed commands on stdin."""

    def __init__(self, exe: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pid = self.process.pid
        self.pending = b""

    def send(self, command: str) -> None:
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def line(self, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            assert left > 0, f"no line from the program within {timeout:.0f} s"
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                assert chunk, f"the program ended its output (exit {self.process.poll()})"
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def finish(self) -> int:
        self.process.stdin.close()
        code = self.process.wait(timeout=DEADLINE)
        self.process.stdout.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


def environment(spool: Path | str, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LLVM_PROFILE_FILE": f"{spool}/%p.profraw", "PGOD_LIVE_INTERVAL_S": "1"}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def start(programs: list, exe: Path, env: dict) -> Program:
    program = Program(exe, env)
    programs.append(program)
    return program


def published(clang: Clang, path: Path, scratch: Path, function: str, expected: int):
    """A poll predicate: the bytes at the name once they are a snapshot with `expected` calls."""

    def check():
        inode, data = snapshot(path)
        return (inode, data) if data and calls(counts(clang, data, scratch), function) == expected else None

    return check


