#!/usr/bin/python3
"""The guest side of the test harness: runs the host's commands, sent over a virtio-serial port.

Installed into the guest image as /usr/local/lib/pgod-guest/agent.py and started by
pgod-guest-agent.service once multi-user.target is reached (the unit is Type=exec, so its start
job ends at once and `systemctl is-system-running --wait` never waits on the agent).

Why a serial port and not ssh: the guest has no network (nothing to configure, nothing that can
reach out), and a virtio-serial port is there as soon as its driver is loaded.

Protocol, one JSON object per line each way:

  guest → host  {"ready": true, "boot_id": "...", "uptime": 12.3, "share_error": null}
                  once per boot, after the 9p share is mounted at /mnt/host
  host → guest  {"id": 7, "cmd": "bash script", "timeout": 60, "user": "alice"}
  guest → host  {"id": 7, "rc": 0, "output": "stdout and stderr together"}

Each request runs on a thread of its own, so the host may have several in flight. Commands run
as root with `bash -c` (or, with "user", in a login shell of that user: `runuser -l USER -c`,
which goes through PAM and so gets a logind session), stdin /dev/null, a fixed environment. A
command past its timeout is killed with everything it started, and answered with rc 124.

Standard library only: the image's /usr/bin/python3 runs it, not the pgod venv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

PORT_NAME = "org.pgod.guest.agent"
SHARE_TAG = "host0"
SHARE_DIR = "/mnt/host"
SHARE_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"
OUTPUT_CAP = 64 << 20  # bytes of a command's output sent back; the rest is cut, and said so
TIMEOUT_RC = 124  # what timeout(1) answers, so tests read it the same way

ROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


def log(message: str) -> None:
    print(f"pgod-guest-agent: {message}", file=sys.stderr, flush=True)


def run(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ROOT_ENV)
    return done.returncode, done.stdout + done.stderr


def find_port(timeout: float = 60.0) -> str:
    """The port's device. udev's symlink when it made one, else found through sysfs.

    The port appears when virtio_console has probed; it is loaded here rather than waited for
    from udev's coldplug. The wait that is left is bounded, and short.
    """
    run(["modprobe", "-a", "virtio_console"])
    link = f"/dev/virtio-ports/{PORT_NAME}"
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(link):
            return link
        try:
            entries = os.listdir("/sys/class/virtio-ports")
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                with open(f"/sys/class/virtio-ports/{entry}/name") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name == PORT_NAME and os.path.exists(f"/dev/{entry}"):
                return f"/dev/{entry}"
        if time.monotonic() > deadline:
            raise SystemExit(f"no virtio-serial port named {PORT_NAME} after {timeout:.0f} s "
                             "(is qemu started with -device virtserialport,name=...?)")
        time.sleep(0.05)


def mount_share() -> str | None:
    """Mount the host's 9p share at /mnt/host; the error, or None when it is mounted."""
    os.makedirs(SHARE_DIR, exist_ok=True)
    with open("/proc/self/mounts") as f:
        if any(line.split()[1] == SHARE_DIR for line in f):
            return None  # the agent restarted within one boot
    rc, output = run(["mount", "-t", "9p", "-o", SHARE_OPTIONS, SHARE_TAG, SHARE_DIR])
    if rc != 0:
        return f"mount -t 9p {SHARE_TAG} {SHARE_DIR} failed (rc {rc}): {output.strip()}"
    return None


def descendants(pid: int) -> set[int]:
    """Every process below pid, from one snapshot of /proc.

    Needed beside the process group: `runuser -c` puts the user's shell in a session of its
    own, which killing the group would orphan rather than stop.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


KILLED_GONE_SECONDS = 10.0


def kill_tree(pid: int) -> None:
    """SIGKILL pid and everything below it, and wait (bounded) until they are gone from /proc.

    Answering at once raced the next request: the killed grandchildren, reparented to PID 1,
    were still in /proc (not yet reaped) when a test's `pgrep` looked for them.
    """
    tree = descendants(pid)
    for target in [pid, *tree]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)  # what left the tree by a double fork but kept the group
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + KILLED_GONE_SECONDS
    while tree and time.monotonic() < deadline:
        tree = {target for target in tree if os.path.exists(f"/proc/{target}")}
        if tree:
            time.sleep(0.05)


def execute(request: dict) -> dict:
    """Run one request; its answer. Output goes to a memfd, not a pipe, so a command that leaves
    a background process holding its stdout still ends when its shell does."""
    user = request.get("user")
    if user:
        argv = ["/usr/sbin/runuser", "-l", user, "-c", request["cmd"]]
        cwd = "/"
    else:
        argv = ["/bin/bash", "-c", request["cmd"]]
        cwd = "/root"
    timeout = request.get("timeout")
    output_fd = os.memfd_create("pgod-guest-output")
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output_fd, stderr=output_fd,
                                    cwd=cwd, env=ROOT_ENV, start_new_session=True)
        except OSError as error:
            return {"id": request["id"], "rc": 127, "output": f"pgod-guest-agent: {error}\n"}
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            rc = TIMEOUT_RC
        size = os.fstat(output_fd).st_size
        data = os.pread(output_fd, min(size, OUTPUT_CAP), 0)
    finally:
        os.close(output_fd)
    output = data.decode("utf-8", "replace")
    if size > OUTPUT_CAP:
        output += f"\n[pgod-guest-agent: output cut, {size - OUTPUT_CAP} bytes more]\n"
    if rc == TIMEOUT_RC and timeout is not None:
        output += f"\n[pgod-guest-agent: timed out after {timeout} s, killed]\n"
    return {"id": request["id"], "rc": rc, "output": output}


class Port:
    """The serial port: whole lines out (under a lock, from many threads), lines in."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)
        self.lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:  # blocks while the host side is not connected: nothing is lost
                view = view[os.write(self.fd, view):]

    def lines(self):
        buffer = b""
        while True:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                # The host end is not connected (virtio_console reads as end-of-file then, and
                # gives no event for the reconnection): look again shortly.
                time.sleep(0.2)
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield line


def serve(port: Port, line: bytes) -> None:
    request = None
    try:
        request = json.loads(line)
        answer = execute(request)
    except Exception as error:  # a bad request is answered, never the end of the agent
        answer = {"id": request.get("id") if isinstance(request, dict) else None,
                  "rc": 125, "output": f"pgod-guest-agent: {type(error).__name__}: {error}\n"}
    port.send(answer)


def main() -> None:
    port = Port(find_port())
    share_error = mount_share()
    if share_error:
        log(share_error)
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    port.send({"ready": True, "boot_id": boot_id, "uptime": uptime, "share_error": share_error})
    log(f"ready {uptime:.1f} s after the kernel started")
    for line in port.lines():
        threading.Thread(target=serve, args=(port, line), daemon=True).start()


if __name__ == "__main__":
    main()
