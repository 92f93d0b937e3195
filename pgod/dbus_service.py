"""The thin D-Bus face of the daemon: org.pgod.Daemon1 on the system (or session) bus.

The interface is declared in data/org.pgod.Daemon1.xml. This object only reads state and turns
engine events into signals; every error crosses the bus through `dbus_errors`, the single place
that maps domain exceptions to D-Bus error names.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import structlog
from gi.repository import GLib
from pydbus.generic import signal

from .status import UnknownPackage, package_document, status_document

log = structlog.get_logger(__name__)

BUS_NAME = "org.pgod.Daemon1"
OBJECT_PATH = "/org/pgod/Daemon1"
INTERFACE = "org.pgod.Daemon1"
INTERFACE_XML = resources.files("pgod").joinpath("data", f"{INTERFACE}.xml").read_text()


def _dbus_error(name: str) -> type[Exception]:
    # pydbus uses the exception class name as the D-Bus error name when it contains a dot.
    return type(name, (Exception,), {})


UnknownPackageError = _dbus_error(f"{INTERFACE}.Error.UnknownPackage")
AccessDeniedError = _dbus_error("org.freedesktop.DBus.Error.AccessDenied")
FailedError = _dbus_error(f"{INTERFACE}.Error.Failed")


def dbus_errors(method):
    """Translate domain errors into D-Bus errors; log expected ones briefly, others in full."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except UnknownPackage as err:
            raise UnknownPackageError(f"no package named {err.args[0]!r} in the configuration") from None
        except PermissionError as err:
            log.warning("dbus.access_denied", method=method.__name__, reason=str(err))
            raise AccessDeniedError(str(err)) from None
        except Exception as err:
            log.exception("dbus.method_failed", method=method.__name__)
            raise FailedError(f"{type(err).__name__}: {err}") from None

    return wrapper


class DaemonService:
    """The exported object. Methods run on the GLib main loop thread."""

    dbus = INTERFACE_XML

    PackageChanged = signal()
    ThresholdReached = signal()
    FileRejected = signal()
    StatusChanged = signal()

    def __init__(self, config, sessions, engine, version: str) -> None:
        self._config = config
        self._sessions = sessions
        self._engine = engine
        self._version = version
        engine.listeners.append(self._on_engine_event)

    @property
    def Version(self) -> str:
        return self._version

    @property
    def SpoolBacklog(self) -> int:
        return self._engine.spool_backlog

    @dbus_errors
    def GetStatus(self) -> str:
        return json.dumps(status_document(self._config, self._sessions, self._engine.spool_backlog))

    @dbus_errors
    def GetPackage(self, name: str) -> str:
        return json.dumps(package_document(self._config, self._sessions, name))

    # ---- engine events → signals (engine thread → main loop) ------------------------------
    def _on_engine_event(self, kind: str, data: dict) -> None:
        GLib.idle_add(self._emit, kind, data)

    def _emit(self, kind: str, data: dict) -> bool:
        if kind == "counters":
            name = data["package"]
            try:
                summary = package_document(self._config, self._sessions, name, history=0)
            except UnknownPackage:
                return False
            for key in ("merges", "quarantine", "profile_build", "build_command"):
                summary.pop(key, None)
            self.PackageChanged(name, json.dumps(summary))
        elif kind == "threshold":
            self.ThresholdReached(data["package"], int(data.get("raw_bytes", 0)))
        elif kind == "quarantined":
            self.FileRejected(data["file"], data.get("package", ""), data["reason"])
        self.StatusChanged()
        return False  # one-shot idle callback
