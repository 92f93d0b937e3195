"""The shipped system-bus policy: every local user reads status; only root and the admin group may change state."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import Daemon, SystemLikeBus
from pgod.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH

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
    from harness import write_config

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
