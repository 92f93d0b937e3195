"""The D-Bus client used by pgoctl: connect, call, and turn bus errors into typed exceptions."""

from __future__ import annotations

import json

from pgod.contract import BUS_NAME, OBJECT_PATH

BUS_DRIVER = "org.freedesktop.DBus"  # the bus itself: names, their owners, NameOwnerChanged

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

    def watch_owner(self, on_owner) -> None:
        """Call ``on_owner(unique_name)`` each time the daemon's bus name changes hands ("" when
        it has none), from the bus's NameOwnerChanged signal, and once now with its owner.

        How a waiting client learns that pgod started or restarted, without polling. The
        subscription comes before the question, so no change falls between the two; a change
        seen by both is reported twice, and ``on_owner`` must take that in its stride.
        """
        from gi.repository import GLib

        self.bus.subscribe(
            sender=BUS_DRIVER, iface=BUS_DRIVER, signal="NameOwnerChanged", object="/org/freedesktop/DBus",
            arg0=BUS_NAME,  # the daemon's name only: the bus's other names never wake this client
            signal_fired=lambda _sender, _path, _iface, _signal, args: self._owner_changed(args[2], on_owner),
        )
        try:
            owner = self.bus.dbus.GetNameOwner(BUS_NAME)
        except GLib.Error:  # NameHasNoOwner: nobody serves it now
            owner = ""
        self._owner_changed(owner, on_owner)

    def _owner_changed(self, owner: str, on_owner) -> None:
        # A new owner may be a newer pgod: introspect it afresh rather than trust the old proxy.
        self._proxy = None
        on_owner(owner)

    def status(self) -> dict:
        return json.loads(self.call("GetStatus"))

    def package(self, name: str) -> dict:
        return json.loads(self.call("GetPackage", name))
