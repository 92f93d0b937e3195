"""The host side of a guest: one QEMU process booting an overlay of the cached base image.

    machine = Machine(tmp_path / "guest")
    machine.start()                         # boots; returns when the guest's agent is ready
    machine.succeed("systemctl is-system-running --wait")
    (machine.share / "in.txt").write_text("hello")     # /mnt/host/in.txt in the guest
    machine.power_cut(); machine.start()    # the same disk, after a hard power-off
    machine.close()

Commands travel over a virtio-serial port to agent.py in the guest (one JSON line each way). The
port's host end is one half of a socketpair handed to QEMU as an fd: no socket path to wait for,
no race between QEMU creating it and us connecting. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from .image import cached_image, ensure_image

PORT_NAME = "org.pgod.guest.agent"
KERNEL_CMDLINE = ("root=/dev/vda rw console=ttyS0 quiet loglevel=4 panic=-1 "
                  "systemd.show_status=error mitigations=off")


class GuestError(RuntimeError):
    """A command failed, the guest did not come up, or QEMU went away; the message says which."""


def guest_unavailable() -> str | None:
    """Why a guest cannot run here, or None. Tests skip with this reason, never silently."""
    if os.environ.get("PGOD_GUEST_TESTS") == "0":
        return ("PGOD_GUEST_TESTS=0: the guest tests are left to another run "
                "(.ci/run runs them once, on the CI host, not again in the fresh-machine check)")
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 not found: apt-get install qemu-system-x86"
    if not shutil.which("qemu-img"):
        return "qemu-img not found: apt-get install qemu-utils"
    if cached_image() is None:
        if not shutil.which("mmdebstrap"):
            return "mmdebstrap not found (needed to build the guest image): apt-get install mmdebstrap"
        if os.geteuid() != 0:
            return "building the guest image needs root (or a prebuilt image in $PGOD_GUEST_CACHE)"
    return None


def accelerator() -> list[str]:
    """KVM when it is real hardware virtualization; else TCG.

    /dev/kvm can be kvm_pvm, a paravirtual hypervisor that needs a patched guest kernel: with a
    stock kernel `-cpu host` aborts and other models run ~1,000x slower than TCG. So KVM only with
    vmx/svm in /proc/cpuinfo and no kvm_pvm module. qemu64 boots ~10 % faster than max under TCG.
    """
    forced = os.environ.get("PGOD_GUEST_ACCEL")  # "kvm" or "tcg", to override the guess
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    # /sys/module, not /proc/modules: a kernel without module support has no /proc/modules.
    real_kvm = (os.access("/dev/kvm", os.R_OK | os.W_OK) and flags & {"vmx", "svm"}
                and not Path("/sys/module/kvm_pvm").exists())
    if forced == "kvm" or (real_kvm and forced != "tcg"):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "qemu64"]


class Machine:
    """One guest: a qcow2 overlay of the cached base image, a share folder, a QEMU process.

    The workdir keeps the overlay (so start() after power_cut() or shutdown() boots the same
    disk), the share, console.log (the serial console, appended across boots) and qemu.log.
    """

    def __init__(self, workdir: Path, *, memory_mb: int = 2048, cpus: int = 2,
                 disk_cache: str = "writeback", share: Path | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.share = Path(share) if share else self.workdir / "share"
        self.share.mkdir(parents=True, exist_ok=True)
        self.overlay = self.workdir / "overlay.qcow2"
        self.console_log = self.workdir / "console.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.disk_cache = disk_cache
        self.boot_seconds: list[float] = []   # start to agent ready, one per boot
        self.boot_id: str | None = None
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._answers: dict[int, dict] = {}
        self._ready_count = 0
        self._ready: dict | None = None
        self._gone: str | None = None     # why the connection ended, once it has
        self._next_id = 0

    # --- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120) -> None:
        """Boot (or boot again on the same overlay) and wait for the agent's ready.

        Building the base image, the first time, is not counted in the timeout.
        """
        if self.running:
            raise GuestError("start(): the guest is already running")
        self._teardown()
        image = ensure_image()
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(image.disk), str(self.overlay)], check=True)
        ours, theirs = socket.socketpair()
        with self.console_log.open("a") as console:
            console.write(f"\n===== pgod guest boot at {time.strftime('%H:%M:%S')} =====\n")
        argv = self.qemu_argv(image, theirs.fileno())
        began = time.monotonic()
        try:
            with self.qemu_log.open("a") as log:
                log.write("$ " + " ".join(argv) + "\n")
                log.flush()
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              pass_fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # QEMU has its copy
        self._sock = ours
        with self._cond:
            self._gone = None
            self._ready_count = 0
            self._answers.clear()
        self._reader = threading.Thread(target=self._read, args=(ours, self._proc),
                                        name="pgod-guest-reader", daemon=True)
        self._reader.start()
        self._wait_ready(0, timeout, "boot")
        self.boot_seconds.append(time.monotonic() - began)

    def qemu_argv(self, image, agent_fd: int) -> list[str]:
        """QEMU's command line: no network, no display; the serial console to console.log."""
        return [
            "qemu-system-x86_64", *accelerator(), "-machine", "pc",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-user-config", "-nic", "none",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", KERNEL_CMDLINE,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache={self.disk_cache},discard=unmap",
            "-chardev", f"file,id=console,path={self.console_log},append=on", "-serial", "chardev:console",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=agent,fd={agent_fd}",
            "-device", f"virtserialport,chardev=agent,name={PORT_NAME}",
            "-virtfs", f"local,path={self.share},mount_tag=host0,security_model=none,id=host0",
            "-device", "virtio-rng-pci",
        ]

    def power_cut(self) -> None:
        """SIGKILL QEMU: no shutdown, nothing flushed by the guest."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._teardown()

    def shutdown(self, timeout: float = 60) -> None:
        """Clean poweroff from inside the guest; wait for QEMU to exit."""
        if not self.running:
            return
        self._order("systemctl poweroff --no-block")
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise GuestError(f"the guest did not power off within {timeout} s (killed)\n"
                             + self.console_tail()) from None
        self._teardown()

    def reboot(self, timeout: float = 120) -> None:
        """Clean reboot inside the guest (the same QEMU); wait for the agent's next ready."""
        began = time.monotonic()
        boot = self._order("systemctl reboot --no-block")
        self._wait_ready(boot, timeout, "reboot")
        self.boot_seconds.append(time.monotonic() - began)

    def _order(self, cmd: str) -> int:
        """Send a command that takes the agent down with the system: its answer may never come.
        Only a quick failure is waited for. Returns the boot count it was sent in."""
        request_id, boot = self._send(cmd, 30, None)
        deadline = time.monotonic() + 5
        with self._cond:
            while request_id not in self._answers and not self._problem(boot, deadline, "quiet"):
                self._cond.wait(deadline - time.monotonic())
            answer = self._answers.pop(request_id, None)
        if answer and answer["rc"] != 0:
            raise GuestError(f"{cmd} failed in the guest (rc {answer['rc']}):\n{answer['output']}")
        return boot

    def close(self) -> None:
        """Kill QEMU if it runs; the workdir stays, for its logs."""
        self.power_cut()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands ----------------------------------------------------------------------------

    def run(self, cmd: str, timeout: float = 60, user: str | None = None) -> tuple[int, str]:
        """Run a bash script in the guest (as root, or in a login shell of `user`): (rc, output).

        stdout and stderr come back together. Past `timeout` the guest kills the command and
        everything it started, and rc is 124.
        """
        request_id, boot = self._send(cmd, timeout, user)
        # The agent enforces the timeout; the margin covers a slow guest answering.
        deadline = time.monotonic() + timeout + 30
        with self._cond:
            while request_id not in self._answers:
                problem = self._problem(boot, deadline, f"no answer within {timeout + 30:.0f} s")
                if problem:
                    raise GuestError(f"run({cmd!r}): {problem}\n" + self.console_tail())
                self._cond.wait(deadline - time.monotonic())
            answer = self._answers.pop(request_id)
        return answer["rc"], answer["output"]

    def succeed(self, cmd: str, timeout: float = 60, user: str | None = None) -> str:
        rc, output = self.run(cmd, timeout, user)
        if rc != 0:
            raise GuestError(f"command failed in the guest (rc {rc}{', as ' + user if user else ''}): "
                             f"{cmd}\n{output}")
        return output

    def fail(self, cmd: str, timeout: float = 60, user: str | None = None) -> str:
        rc, output = self.run(cmd, timeout, user)
        if rc == 0:
            raise GuestError(f"command succeeded in the guest but was expected to fail: {cmd}\n{output}")
        return output

    def wait_until_succeeds(self, cmd: str, timeout: float = 60, user: str | None = None) -> str:
        """Run cmd until it succeeds; raise with its last output when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            rc, output = self.run(cmd, max(left, 1), user)
            if rc == 0:
                return output
            if time.monotonic() + delay > deadline:
                raise GuestError(f"never succeeded within {timeout} s: {cmd}\nlast (rc {rc}):\n{output}")
            time.sleep(delay)  # a poll of a guest-side condition: nothing to wait on from here
            delay = min(delay * 2, 1.0)

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no console log)"
        return f"--- last {len(text)} lines of {self.console_log} ---\n" + "\n".join(text)

    # --- internals ---------------------------------------------------------------------------

    def _send(self, cmd: str, timeout: float, user: str | None) -> tuple[int, int]:
        """Send one request; its id and the boot it was sent in."""
        if not self.running or self._sock is None:
            raise GuestError(f"run({cmd!r}): the guest is not running")
        with self._cond:
            self._next_id += 1
            request_id, boot = self._next_id, self._ready_count
        request = {"id": request_id, "cmd": cmd, "timeout": timeout}
        if user:
            request["user"] = user
        with self._send_lock:
            self._sock.sendall((json.dumps(request) + "\n").encode())
        return request_id, boot

    def _problem(self, boot: int, deadline: float, late: str) -> str | None:
        """Why an answer will not come (the caller holds the lock), or None to wait on."""
        if self._gone:
            return self._gone
        if self._ready_count != boot:
            return "the guest rebooted before answering"
        if time.monotonic() >= deadline:
            return late
        return None

    def _read(self, sock: socket.socket, proc: subprocess.Popen) -> None:
        """The reader thread: answers by id, readies counted; the end of the connection noted."""
        buffer = b""
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except OSError as error:
                chunk, why = b"", f"connection to the guest failed: {error}"
            else:
                why = "the connection to the guest closed"
            if not chunk:
                try:
                    why = f"QEMU exited (rc {proc.wait(1)}, see {self.qemu_log})"
                except subprocess.TimeoutExpired:
                    pass
                with self._cond:
                    self._gone = why
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                with self._cond:
                    if message.get("ready"):
                        self._ready = message
                        self._ready_count += 1
                        self.boot_id = message.get("boot_id")
                    elif "id" in message:
                        self._answers[message["id"]] = message
                    self._cond.notify_all()

    def _wait_ready(self, seen: int, timeout: float, what: str) -> None:
        """Wait for a ready after the `seen`-th; on failure kill QEMU and say what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._ready_count <= seen and not self._gone and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            ready = self._ready if self._ready_count > seen else None
            why = self._gone or f"no ready from the guest agent within {timeout:.0f} s"
        if ready is None:
            self.power_cut()
            qemu_log = self.qemu_log.read_text(errors="replace")[-2000:]
            raise GuestError(f"{what} failed: {why}\n--- end of {self.qemu_log} ---\n{qemu_log}\n"
                             + self.console_tail())
        if ready.get("share_error"):
            raise GuestError(f"{what}: the guest could not mount the share: {ready['share_error']}")

    def _teardown(self) -> None:
        """Close the connection and forget an exited QEMU."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
