"""`pgoctl watch`: redraw the status whenever the daemon signals a change (no polling)."""

from __future__ import annotations

import json
import signal
import sys

from .client import DaemonUnreachable
from .exitcodes import EXIT_OK, EXIT_UNREACHABLE
from .render import render_status

CLEAR = "\x1b[H\x1b[2J"


def watch(client, as_json: bool = False) -> int:
    from gi.repository import GLib

    loop = GLib.MainLoop()
    outcome = {"code": EXIT_OK}
    pending = {"redraw": False}

    def show() -> bool:
        pending["redraw"] = False
        try:
            document = client.status()
        except DaemonUnreachable:
            print("pgoctl: the daemon went away", file=sys.stderr)
            outcome["code"] = EXIT_UNREACHABLE
            loop.quit()
            return False
        if as_json:
            print(json.dumps(document), flush=True)
        else:
            sys.stdout.write(CLEAR + render_status(document) + "\n\n(watching; Ctrl-C to stop)\n")
            sys.stdout.flush()
        return False

    def changed(*_args) -> None:
        # Coalesce bursts of signals (a large merge sends several) into one redraw.
        if not pending["redraw"]:
            pending["redraw"] = True
            GLib.timeout_add(100, show)

    client.subscribe("StatusChanged", changed)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda: loop.quit() or False)
    show()
    loop.run()
    return outcome["code"]
