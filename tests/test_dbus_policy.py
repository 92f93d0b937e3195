"""The shipped system-bus policy: every local user reads status; only root and the admin group may change state."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from testbed.bus import SystemLikeBus
from testbed.daemon import Daemon
from testbed.users import AS_NOBODY
from pgod.contract import BUS_NAME, INTERFACE, OBJECT_PATH

POLICY = Path(__file__).resolve().parents[1] / "pgod" / "data" / f"{BUS_NAME}.conf"


@pytest.fixture
def system_bus():
    directory = Path(tempfile.mkdtemp(prefix="pgod-sysbus-"))
    bus = SystemLikeBus(directory, [POLICY])
    yield bus
    bus.close()


def dbus_send_as(user: str, bus: SystemLikeBus, method: str, *args: str) -> subprocess.CompletedProcess:
    """Call a method of the daemon as another uid, with the bus's own client (no Python needed)."""
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user if user == 'root' else 'nogroup'}", "--clear-groups",
         "dbus-send", f"--bus={bus.address}", "--print-reply", f"--dest={BUS_NAME}", OBJECT_PATH, f"{INTERFACE}.{method}", *args],
        capture_output=True, text=True, timeout=30,
    )


def test_other_users_read_status_but_cannot_call_anything_else(system_bus, tmp_path, workload, llvm_profdata_14):
    from testbed.config import write_config

    config = write_config(
        tmp_path / "pgod.toml",
        {"spool_dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state"), "profile_link": str(tmp_path / "profile")},
        {"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
    )
    daemon = Daemon(config, system_bus, tmp_path / "pgod.log").start()
    try:
        status = dbus_send_as("nobody", system_bus, "GetStatus")
        assert status.returncode == 0, status.stderr
        assert '"name": "workload"' in status.stdout
        package = dbus_send_as("nobody", system_bus, "GetPackage", "string:workload")
        assert package.returncode == 0, package.stderr
        # A method outside the reading set is refused by the bus before it reaches the daemon.
        refused = dbus_send_as("nobody", system_bus, "Rebuild", "string:workload")
        assert refused.returncode != 0
        assert "AccessDenied" in refused.stderr
    finally:
        assert daemon.stop() == 0


PERMISSIVE_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="org.pgod.Daemon1"/></policy>
  <policy context="default"><allow send_destination="org.pgod.Daemon1"/></policy>
</busconfig>
"""

MUTATIONS = [("Rebuild", "string:workload"), ("Activate", "string:workload"), ("Deactivate", "string:workload"),
             ("Rollback",), ("Reset", "string:workload")]


def test_the_daemon_itself_refuses_mutations_from_outside_the_admin_group(tmp_path, workload, llvm_profdata_14):
    """With a bus policy that lets everything through, the daemon's own uid check still holds."""
    from testbed.config import write_config

    policy = tmp_path / "permissive.conf"
    policy.write_text(PERMISSIVE_POLICY)
    bus = SystemLikeBus(Path(tempfile.mkdtemp(prefix="pgod-sysbus-")), [policy])
    config = write_config(
        tmp_path / "pgod.toml",
        {"spool_dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state"),
         "profile_link": str(tmp_path / "profile"), "admin_group": "adm"},
        {"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
    )
    daemon = Daemon(config, bus, tmp_path / "pgod.log").start()
    try:
        for method, *args in MUTATIONS:
            refused = dbus_send_as("nobody", bus, method, *args)
            assert refused.returncode != 0, method
            assert "org.freedesktop.DBus.Error.AccessDenied" in refused.stderr, (method, refused.stderr)
            assert "'adm' group" in refused.stderr, refused.stderr
        assert dbus_send_as("nobody", bus, "GetStatus").returncode == 0
        # Root passes the check (and then meets the operation's own precondition).
        reset = dbus_send_as("root", bus, "Reset", "string:workload")
        assert reset.returncode == 0, reset.stderr
        assert "access_denied" in (tmp_path / "pgod.log").read_text()
    finally:
        assert daemon.stop() == 0
        bus.close()


def test_pgoctl_exits_4_when_access_is_denied(tmp_path, workload, llvm_profdata_14):
    import os
    import sys

    from testbed.config import write_config

    bus = SystemLikeBus(Path(tempfile.mkdtemp(prefix="pgod-sysbus-")), [POLICY])
    config = write_config(
        tmp_path / "pgod.toml",
        {"spool_dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state"), "profile_link": str(tmp_path / "profile")},
        {"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
    )
    daemon = Daemon(config, bus, tmp_path / "pgod.log").start()
    try:
        pgoctl = Path(sys.executable).parent / "pgoctl"
        result = subprocess.run(
            [*AS_NOBODY, str(pgoctl), "activate", "workload"],
            capture_output=True, text=True, env={**os.environ, **bus.env(), "HOME": "/"},
        )
        assert result.returncode == 4, result.stderr
        assert "access denied" in result.stderr
    finally:
        daemon.stop()
        bus.close()


def test_an_unknown_package_name_of_any_size_is_refused_without_being_echoed(pgod, workload, llvm_profdata_14):
    """Any local user may ask about any name: a 1 MB one gets a short refusal, not its own
    megabyte back, and the daemon goes on answering."""
    from pydbus import connect

    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    proxy = connect(pgod.bus.address).get(BUS_NAME, OBJECT_PATH)
    name = "x" * (1 << 20)
    for method in (proxy.GetPackage, proxy.GetBuildLog):
        with pytest.raises(Exception) as refused:
            method(name)
        message = str(refused.value)
        # Refused by size before it is even read as a name.
        assert "LimitsExceeded" in message and "bytes of arguments" in message
        assert len(message) < 1000
    # A name within the size limit but longer than any package name is unknown, shown shortened.
    name = "y" * 2000
    with pytest.raises(Exception) as refused:
        proxy.GetPackage(name)
    assert "UnknownPackage" in str(refused.value) and f"({len(name)} characters)" in str(refused.value)
    assert daemon.status()["packages"][0]["name"] == "workload"
