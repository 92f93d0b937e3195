"""The thin D-Bus face of the daemon: org.pgod.Daemon1 on the system (or session) bus.

The interface is declared in data/org.pgod.Daemon1.xml. This object only reads state and turns
engine events into signals; every error crosses the bus through `dbus_errors`, the single place
that maps domain exceptions to D-Bus error names.
"""

from __future__ import annotations

import functools
import grp
import json
import os
import pwd
import time
from importlib import resources

import structlog
from gi.repository import GLib
from pydbus.generic import signal

from pgod.contract import INTERFACE
from pgod.daemon.status import UnknownPackage, package_document, package_summary, status_document
from pgod.optimize.nixstore import NixError
from pgod.optimize.operations import OperationError

log = structlog.get_logger(__name__)

INTERFACE_XML = resources.files("pgod").joinpath("data", f"{INTERFACE}.xml").read_text()
STATUS_CACHE_SECONDS = 0.5  # a GetStatus answer is at most this old, unless the engine said more
# Events any local user can cause at will (each refused file, each spool scan step): after them
# the status is built again only once it is STATUS_TOUCHED_SECONDS old, or a spool full of junk
# beside a GetStatus flood would make every call a full read of the database.
USER_PACED_EVENTS = frozenset({"quarantined", "backlog"})
STATUS_TOUCHED_SECONDS = 0.1
BUILD_LOG_TAIL_BYTES = 1_000_000  # what GetBuildLog returns of a build's log: its end
MAX_NAME_LENGTH = 100  # a package name is at most this long (config.py); longer is unknown at once


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
            # Any caller may send any name: the reply repeats only its start.
            name = err.args[0]
            shown = repr(name) if len(name) <= MAX_NAME_LENGTH else f"{name[:MAX_NAME_LENGTH]!r}… ({len(name)} characters)"
            raise UnknownPackageError(f"no package named {shown} in the configuration") from None
        except PermissionError as err:
            log.warning("dbus.access_denied", method=method.__name__, reason=str(err))
            raise AccessDeniedError(str(err)) from None
        except (OperationError, NixError) as err:
            log.warning("dbus.operation_failed", method=method.__name__, reason=str(err))
            raise FailedError(str(err)) from None
        except Exception as err:
            log.exception("dbus.method_failed", method=method.__name__)
            raise FailedError(f"{type(err).__name__}: {err}") from None

    return wrapper


def _in_group(uid: int, group: str) -> bool:
    try:
        gid = grp.getgrnam(group).gr_gid
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


class DaemonService:
    """The exported object. Methods run on the GLib main loop thread."""

    dbus = INTERFACE_XML

    PackageChanged = signal()
    PackageEvent = signal()
    ThresholdReached = signal()
    FileRejected = signal()
    StatusChanged = signal()

    def __init__(self, config, sessions, engine, version: str, bus, *, intake, layout, optimizer, activation) -> None:
        self._config = config
        self._sessions = sessions
        self._engine = engine  # runs the state changes (`command`) and reports events
        self._intake = intake  # the engine's intake: spool backlog, disk, per-uid report
        self._layout = layout
        self._optimizer = optimizer  # builds and gates running (read only), reset
        self._activation = activation  # activate, deactivate, rollback
        self._version = version
        self._bus = bus
        self._status_cache: tuple[float, str] | None = None  # (when built, the JSON)
        self._status_touched = False  # a user-paced event came since the cache was built
        engine.listeners.append(self._on_engine_event)

    @property
    def Version(self) -> str:
        return self._version

    @property
    def SpoolBacklog(self) -> int:
        return self._intake.spool_backlog

    @dbus_errors
    def GetStatus(self) -> str:
        """The status document, built at most once per STATUS_CACHE_SECONDS and again after every
        change the engine reports (after those users pace, USER_PACED_EVENTS, at most every
        STATUS_TOUCHED_SECONDS): a flood of calls from one connection costs a lookup each, not a
        database read each, so others' calls are not held up behind it."""
        now = time.monotonic()
        age = now - self._status_cache[0] if self._status_cache is not None else None
        if age is None or age > STATUS_CACHE_SECONDS or (self._status_touched and age > STATUS_TOUCHED_SECONDS):
            self._status_touched = False
            document = status_document(
                self._config, self._sessions, self._intake.spool_backlog, self._running(), self._intake.disk,
                self._layout, self._intake.report, gating=self._optimizer.gating, schedule=self._optimizer.schedule(),
                starting=not self._engine.started_up, live=self._intake.live.status.daemon_figures(),
            )
            self._status_cache = (now, json.dumps(document))
        return self._status_cache[1]

    @dbus_errors
    def GetPackage(self, name: str) -> str:
        self._known(name)
        return json.dumps(package_document(self._config, self._sessions, name, running=self._running(),
                                           gating=self._optimizer.gating, schedule=self._optimizer.schedule()))

    @dbus_errors
    def GetBuildLog(self, name: str) -> str:
        self._known(name)
        path = package_document(self._config, self._sessions, name).get("build_log")
        if not path:
            return ""
        with open(path, "rb") as log_file:  # its last part only: a big build's log is big
            log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - BUILD_LOG_TAIL_BYTES))
            return log_file.read(BUILD_LOG_TAIL_BYTES).decode("utf-8", "replace")

    # ---- mutating methods: authorized here as well as by the bus policy --------------------
    @dbus_errors
    def Rebuild(self, name: str, dbus_context=None) -> None:
        self._authorize(dbus_context, "Rebuild")
        self._known(name)
        self._on_engine(self._engine.rebuild, name)

    @dbus_errors
    def Activate(self, name: str, dbus_context=None) -> None:
        self._authorize(dbus_context, "Activate")
        self._known(name)
        self._on_engine(self._activation.activate, name)

    @dbus_errors
    def Deactivate(self, name: str, dbus_context=None) -> None:
        self._authorize(dbus_context, "Deactivate")
        self._known(name)
        self._on_engine(self._activation.deactivate, name)

    @dbus_errors
    def Rollback(self, dbus_context=None) -> None:
        self._authorize(dbus_context, "Rollback")
        self._on_engine(self._activation.rollback)

    @dbus_errors
    def Reset(self, name: str, dbus_context=None) -> None:
        self._authorize(dbus_context, "Reset")
        self._known(name)
        self._on_engine(self._optimizer.reset, name)

    def _on_engine(self, function, *args):
        """Run a state change on the engine thread and wait for it without blocking this main
        loop: it goes on serving other calls (GetStatus above all) and emitting signals in a
        nested iteration until the engine answers, however long that takes (a nix-env, say)."""
        future = self._engine.command(function, *args)
        context = GLib.MainContext.default()
        future.add_done_callback(lambda _done: context.wakeup())
        while not future.done():
            context.iteration(True)
        return future.result()

    def _known(self, name: str) -> None:
        if len(name) > MAX_NAME_LENGTH or name not in self._config.packages:
            raise UnknownPackage(name)

    def _running(self):
        return self._optimizer.running

    def _authorize(self, context, method: str) -> None:
        """Root, the daemon's own user and the admin group only: asks the bus who the caller is."""
        uid = self._bus.dbus.GetConnectionUnixUser(context.sender)
        if uid in (0, os.geteuid()) or _in_group(uid, self._config.admin_group):
            return
        raise PermissionError(f"{method} is for root and the {self._config.admin_group!r} group; uid {uid} is neither")

    # ---- engine events → signals (engine thread → main loop) ------------------------------
    def _on_engine_event(self, kind: str, data: dict) -> None:
        GLib.idle_add(self._emit, kind, data)

    def _emit(self, kind: str, data: dict) -> bool:
        if kind in USER_PACED_EVENTS:
            self._status_touched = True  # read afresh soon, not at every call
        else:
            self._status_cache = None  # something changed: the next GetStatus reads it afresh
        if kind in ("counters", "build-progress"):
            name = data["package"]
            try:
                summary = package_summary(self._config, self._sessions, name, self._running(),
                                          gating=self._optimizer.gating, schedule=self._optimizer.schedule())
            except UnknownPackage:
                return False
            self.PackageChanged(name, json.dumps(summary))
        elif kind == "package":
            self.PackageEvent(data["package"], data["event"], data.get("detail") or "")
        elif kind == "threshold":
            self.ThresholdReached(data["package"], int(data.get("raw_bytes", 0)))
        elif kind == "quarantined":
            self.FileRejected(data["file"], data.get("package", ""), data["reason"])
        self.StatusChanged()
        return False  # one-shot idle callback
