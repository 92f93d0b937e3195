"""The D-Bus client used by pgoctl: connect, call, and turn bus errors into typed exceptions."""

from __future__ import annotations

import json

from .busnames import BUS_NAME, OBJECT_PATH

_UNREACHABLE = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Disconnected",
)


class DaemonUnreachable(Exception):
    """No pgod answers on the chosen bus."""


class AccessDenied(Exception):
    """The daemon (or the bus policy) refused the call."""


class OperationFailed(Exception):
    """The daemon answered with an error."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _remote_error(err) -> Exception:
    from gi.repository import Gio

    name = Gio.DBusError.get_remote_error(err) or ""
    message = err.message or ""
    if message.startswith("GDBus.Error:"):
        message = message.split(": ", 1)[-1]
    if name in _UNREACHABLE or not name and "connect" in (err.message or "").lower():
        return DaemonUnreachable(message)
    if name == "org.freedesktop.DBus.Error.AccessDenied":
        return AccessDenied(message)
    return OperationFailed(name, message)


class Client:
    """A connection to the daemon on the system or session bus."""

    def __init__(self, bus_kind: str = "system") -> None:
        from gi.repository import GLib
        from pydbus import SessionBus, SystemBus

        self.bus_kind = bus_kind
        try:
            self.bus = SystemBus() if bus_kind == "system" else SessionBus()
        except GLib.Error as err:
            raise DaemonUnreachable(f"cannot connect to the {bus_kind} bus: {err.message}") from None
        self._proxy = None

    @property
    def proxy(self):
        from gi.repository import GLib

        if self._proxy is None:
            try:
                self._proxy = self.bus.get(BUS_NAME, OBJECT_PATH)
            except GLib.Error as err:
                raise _remote_error(err) from None
        return self._proxy

    def call(self, method: str, *args):
        from gi.repository import GLib

        try:
            return getattr(self.proxy, method)(*args)
        except GLib.Error as err:
            raise _remote_error(err) from None

    def subscribe(self, signal_name: str, handler) -> None:
        """Call ``handler(*args)`` for each of the daemon's ``signal_name`` signals."""
        self.bus.subscribe(
            sender=BUS_NAME, iface=BUS_NAME, signal=signal_name, object=OBJECT_PATH,
            signal_fired=lambda _sender, _path, _iface, _signal, args: handler(*args),
        )

    def status(self) -> dict:
        return json.loads(self.call("GetStatus"))

    def package(self, name: str) -> dict:
        return json.loads(self.call("GetPackage", name))
