"""`pgoctl watch`: redraw the status whenever the daemon signals a change (no polling).

While a build runs, the screen shows its progress as Nix reports it (the daemon signals each
change, at most 4 times a second) and its elapsed time, which is redrawn every second from the
last status read: the clock needs no call to the daemon.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys

from pgod.contract import EXIT_OK, EXIT_UNREACHABLE
from pgod.ctl.client import DaemonUnreachable
from pgod.ctl.render import render_status

CLEAR = "\x1b[H\x1b[2J"
LOG_LINES = 5  # of each running build's log, shown under the table
TICK_MS = 1000  # the elapsed time of a running build is redrawn this often


def watch(client, as_json: bool = False) -> int:
    from gi.repository import GLib

    loop = GLib.MainLoop()
    outcome = {"code": EXIT_OK}
    pending = {"redraw": False}
    last = {"document": None}

    def draw() -> None:
        document = last["document"]
        width = shutil.get_terminal_size().columns
        screen = render_status(document, log_lines=LOG_LINES, width=width)
        sys.stdout.write(CLEAR + screen + "\n\n(watching; Ctrl-C to stop)\n")
        sys.stdout.flush()

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
            last["document"] = document
            draw()
        return False

    def tick() -> bool:
        document = last["document"]
        if document is not None and any(p.get("build") for p in document["packages"]):
            draw()
        return True  # keep ticking

    def changed(*_args) -> None:
        # Coalesce bursts of signals (a large merge sends several) into one redraw.
        if not pending["redraw"]:
            pending["redraw"] = True
            GLib.timeout_add(100, show)

    client.subscribe("StatusChanged", changed)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda: loop.quit() or False)
    if not as_json:
        GLib.timeout_add(TICK_MS, tick)
    show()
    loop.run()
    return outcome["code"]
