"""Run the real daemon and CLI in tests: a private D-Bus bus, a config, a pgod process.

Nothing here fakes a part of pgod: the daemon is the installed `pgod` entry point started as a
process, and status is read through the real `pgoctl` over the real bus.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], object], timeout: float, message: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # a definite failure (e.g. the daemon exited): no point waiting
        except Exception as err:  # the thing polled may not exist yet
            last_error = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}" + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


class _DbusDaemon:
    """A dbus-daemon process of our own; its address is read from its first line of output."""

    ADDRESS_VARIABLE = ""

    def _start(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(["dbus-daemon", "--nofork", "--print-address=1", *argv], stdout=subprocess.PIPE, text=True)
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            raise RuntimeError(f"dbus-daemon {' '.join(argv)} did not start")

    def env(self) -> dict[str, str]:
        return {self.ADDRESS_VARIABLE: self.address}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class PrivateBus(_DbusDaemon):
    """A session-type bus: anyone on it may own any name."""

    ADDRESS_VARIABLE = "DBUS_SESSION_BUS_ADDRESS"

    def __init__(self, directory: Path) -> None:
        self._start(["--session", f"--address=unix:path={directory / 'bus.socket'}"])


SYSTEM_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""


class SystemLikeBus(_DbusDaemon):
    """A dbus-daemon configured like the system bus: default deny, plus pgod's shipped policy.

    Its socket lives in a world-searchable folder so other uids can connect to it."""

    ADDRESS_VARIABLE = "DBUS_SYSTEM_BUS_ADDRESS"

    def __init__(self, directory: Path, policy_files: list[Path]) -> None:
        directory.chmod(0o755)
        policy_dir = directory / "system.d"
        policy_dir.mkdir()
        for policy in policy_files:
            shutil.copy(policy, policy_dir / policy.name)
        self.socket = directory / "system_bus_socket"
        config = directory / "system.conf"
        config.write_text(SYSTEM_BUS_CONFIG.format(socket=self.socket, policy_dir=policy_dir))
        self._start([f"--config-file={config}"])


class NotificationServer:
    """dunst, a real notification server, on an Xvfb screen and the given session bus.

    A dunst rule runs a script for every notification from pgod, recording its app name, summary
    and body as one "app|summary|body" entry (NUL-terminated, since a body may hold newlines),
    so a test can see what the server itself received."""

    def __init__(self, directory: Path, bus_env: dict[str, str]) -> None:
        self.record = directory / "notifications.log"
        script = directory / "record.sh"
        script.write_text(f'#!/bin/sh\nprintf "%s|%s|%s\\0" "$1" "$2" "$3" >> {self.record}\n')
        script.chmod(0o755)
        config = directory / "dunstrc"
        config.write_text(f'[global]\n    font = Monospace 8\n[pgod]\n    appname = pgod\n    script = {script}\n')
        # -displayfd: Xvfb picks a free display and says which, once it is ready.
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", "1", "-nolisten", "tcp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.display = f":{self.xvfb.stdout.readline().strip()}"
        self.env = env = {**os.environ, **bus_env, "DISPLAY": self.display}
        self.dunst = subprocess.Popen(["dunst", "-config", str(config)], env=env, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: subprocess.run(["dunstctl", "is-paused"], env=env, capture_output=True).returncode == 0,
            20,
            "dunst owns org.freedesktop.Notifications",
        )

    def perform_action(self) -> None:
        """What a click on the newest notification does: run its default action."""
        subprocess.run(["dunstctl", "action", "0"], env=self.env, check=True, timeout=10)

    def received(self) -> list[str]:
        """Every notification received so far, oldest first, each "app|summary|body"."""
        return self.record.read_text().split("\0")[:-1] if self.record.exists() else []

    def close(self) -> None:
        for process in (self.dunst, self.xvfb):
            process.terminate()
            process.wait(timeout=10)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, top: dict, packages: dict[str, dict]) -> Path:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, table in packages.items():
        lines.append(f"\n[packages.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Daemon:
    """One pgod process at a time for a test, restartable."""

    config: Path
    bus: PrivateBus | SystemLikeBus
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    #: A command the daemon runs under, e.g. setpriv with the unit's capability set.
    prefix: list[str] = field(default_factory=list)

    @property
    def bus_kind(self) -> str:
        return "system" if isinstance(self.bus, SystemLikeBus) else "session"

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.bus.env(), **self.extra_env}

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> "Daemon":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.prefix, str(BIN / "pgod"), "--config", str(self.config), "--bus", self.bus_kind, "--log-level", "debug"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env(), **(env or {})},
        )
        log.close()
        if wait:
            wait_for(self._answers, 30, "pgod did not come up on the bus")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgod exited with {self.process.returncode}:\n{self.log()}")
        answer = self.pgoctl("status", "--json", check=False)
        # Answering, and its start-up (recovery, upgrades, the first scan) over.
        return answer.returncode == 0 and not json.loads(answer.stdout)["daemon"]["starting"]

    def pgoctl_argv(self) -> list[str]:
        return [str(BIN / "pgoctl"), "--bus", self.bus_kind]

    def pgoctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.pgoctl_argv(), *args], capture_output=True, text=True, env=self.env(), timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"pgoctl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.pgoctl("status", "--json").stdout)

    def package(self, name: str) -> dict:
        return next(p for p in self.status()["packages"] if p["name"] == name)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        return self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def profdata_show(profdata: str, path: Path) -> str:
    """Every function's counts, as llvm-profdata prints them: the fingerprint two profiles share."""
    return subprocess.run(
        [profdata, "show", "--all-functions", "--counts", str(path)], capture_output=True, text=True, check=True
    ).stdout


def one_shot_merge(profdata: str, inputs: list[Path], output: Path) -> Path:
    listing = output.with_suffix(".list")
    listing.write_text("".join(f"{p}\n" for p in inputs))
    subprocess.run([profdata, "merge", "-o", str(output), "-f", str(listing)], check=True)
    return output


def copy_tree_files(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for entry in sorted(source.iterdir()):
        shutil.copy2(entry, target / entry.name)
        copied.append(target / entry.name)
    return copied


# Run a command as uid nobody that can still reach the test's folders: pytest's tmp_path and a
# venv may sit under folders only root may enter (Debian's /root is 0700). CAP_DAC_READ_SEARCH,
# kept as an ambient capability, lets it read and traverse them; it gives no right to write, and
# the kernel, the bus and the daemon still see uid nobody, which is what these tests are about.
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
