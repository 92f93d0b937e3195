"""Private D-Bus buses for a pgod under test: a session-type one, and one like the system bus.

Each is a dbus-daemon process of our own; its address is read from its first line of output. The
tests, the demo and the benchmarks all run pgod on one of these, never on the machine's buses.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class _DbusDaemon:
    """A dbus-daemon process of our own; its address is read from its first line of output."""

    ADDRESS_VARIABLE = ""
    _connection = None

    def _start(self, argv: list[str], *, log: Path | None = None, pidfile: Path | None = None,
               new_session: bool = False) -> None:
        errors = open(log, "ab") if log is not None else None
        try:
            self.process = subprocess.Popen(
                ["dbus-daemon", "--nofork", "--print-address=1", *argv],
                stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=new_session,
            )
        finally:
            if errors is not None:
                errors.close()
        if pidfile is not None:
            pidfile.write_text(str(self.process.pid))
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            self.close()
            raise RuntimeError(f"dbus-daemon {' '.join(argv)} did not start")

    def env(self) -> dict[str, str]:
        return {self.ADDRESS_VARIABLE: self.address}

    @property
    def connection(self):
        """A pydbus client connection to this bus, opened on first use, closed by close()."""
        if self._connection is None:
            from pydbus import connect

            self._connection = connect(self.address)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.con.close_sync(None)
            except Exception:
                pass
            self._connection = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PrivateBus(_DbusDaemon):
    """A session-type bus: anyone on it may own any name. Its socket is ``directory/bus.socket``
    (or one dbus-daemon picks under /tmp when that path is too long for a unix socket).

    ``log``: where its stderr goes (e.g. its "Failed to set fd limit" warning); ``pidfile``: a
    file to write its pid to; ``new_session``: start it in a session of its own (no terminal's
    Ctrl-C reaches it)."""

    ADDRESS_VARIABLE = "DBUS_SESSION_BUS_ADDRESS"

    def __init__(self, directory: Path, *, log: Path | None = None, pidfile: Path | None = None,
                 new_session: bool = False) -> None:
        socket = directory / "bus.socket"
        # A unix socket path must fit in 108 bytes; else let dbus-daemon pick one under /tmp.
        address = f"unix:path={socket}" if len(str(socket)) < 100 else "unix:tmpdir=/tmp"
        self._start(["--session", f"--address={address}"], log=log, pidfile=pidfile, new_session=new_session)


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
