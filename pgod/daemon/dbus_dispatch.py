"""pydbus's method dispatch, bounded: arguments are capped in size, and invocations not leaked.

Any local user may call pgod's methods with any arguments. Arguments of more than
MAX_ARGUMENT_BYTES (package names are at most 100 characters) are refused before they are turned
into Python objects, with a short error.

The leak: one GDBusMethodInvocation per D-Bus call that pydbus answers.

pydbus publishes objects with `Gio.DBusConnection.register_object`, which GObject introspection
binds to `g_dbus_connection_register_object_with_closures` on GLib before 2.84. That function
hands the closure a reference to the invocation the handler is meant to own, but as a plain
GValue argument, so bindings (PyGObject among them) never drop it: `return_value` consumes a
reference PyGObject adds for it, and the one the handler owned stays. Measured here: about 1.6 KB
of daemon memory per call, whatever the call (61 → 127 MB over three 15 s GetStatus floods).
GLib 2.84 added `register_object_with_closures2` with binding-friendly semantics instead of
fixing it (the fix was released in 2.82.3 and taken back in 2.82.4; see GLib issue 3560 and
gtk-rs-core PR 1600, which applies the same correction).

So, where `register_object` still binds the old function (and the GLib is not 2.82.3), each
invocation pydbus has answered gets that owned reference dropped. pydbus answers every call
before its handler returns (return_value or return_dbus_error), so the invocation is done with.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from gi.repository import Gio, GLib

_OLD_SYMBOL = "g_dbus_connection_register_object_with_closures"


def needs_fix() -> bool:
    """Does `register_object` leak the invocation on this GLib?"""
    symbol = Gio.DBusConnection.register_object.get_symbol()
    released_fix = (GLib.MAJOR_VERSION, GLib.MINOR_VERSION, GLib.MICRO_VERSION) == (2, 82, 3)
    return symbol == _OLD_SYMBOL and not released_fix


MAX_ARGUMENT_BYTES = 4096
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"


def install() -> bool:
    """Wrap pydbus's method dispatch (once); True if the invocation leak needed the fix."""
    from pydbus import registration

    wrapper_class = registration.ObjectWrapper
    leaks = needs_fix()
    if getattr(wrapper_class.call_method, "_pgod_bounded", False):
        return leaks
    unref = None
    if leaks:
        gobject = ctypes.CDLL(ctypes.util.find_library("gobject-2.0"))
        gobject.g_object_unref.argtypes = [ctypes.c_void_p]
        gobject.g_object_unref.restype = None
        unref = gobject.g_object_unref
    answer = wrapper_class.call_method

    def call_method(self, connection, sender, object_path, interface_name, method_name, parameters, invocation):
        try:
            size = parameters.get_size() if parameters is not None else 0
            if size > MAX_ARGUMENT_BYTES:
                invocation.return_dbus_error(
                    LIMITS_EXCEEDED, f"{method_name}: {size} bytes of arguments, more than the {MAX_ARGUMENT_BYTES} pgod takes"
                )
            else:
                answer(self, connection, sender, object_path, interface_name, method_name, parameters, invocation)
        finally:
            if unref is not None:
                # PyGObject hashes a GObject by the address of the C object.
                unref(hash(invocation))

    call_method._pgod_bounded = True  # type: ignore[attr-defined]
    wrapper_class.call_method = call_method
    return leaks
