"""A real notification server for the tests of pgod's notify agent: dunst on an Xvfb screen.

A test starts it on its private session bus and reads back what dunst itself received.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testbed.daemon import wait_for


class NotificationServer:
    """dunst, a real notification server, on an Xvfb screen and the given session bus.

    A dunst rule runs a script for every notification from pgod, recording its app name, summary
    and body as one "app|summary|body" entry (NUL-terminated, since a body may hold newlines),
    so a test can see what the server itself received."""

    def __init__(self, directory: Path, bus_env: dict[str, str]) -> None:
        self.record = directory / "notifications.log"
        script = directory / "record.sh"
        script.write_text(f'#!/bin/sh\nprintf "%s|%s|%s\\0" "$1" "$2" "$3" >> {self.record}\n')
        script.chmod(0o755)
        config = directory / "dunstrc"
        config.write_text(f'[global]\n    font = Monospace 8\n[pgod]\n    appname = pgod\n    script = {script}\n')
        # -displayfd: Xvfb picks a free display and says which, once it is ready.
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", "1", "-nolisten", "tcp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.display = f":{self.xvfb.stdout.readline().strip()}"
        self.env = env = {**os.environ, **bus_env, "DISPLAY": self.display}
        self.dunst = subprocess.Popen(["dunst", "-config", str(config)], env=env, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: subprocess.run(["dunstctl", "is-paused"], env=env, capture_output=True).returncode == 0,
            20,
            "dunst owns org.freedesktop.Notifications",
        )

    def perform_action(self) -> None:
        """What a click on the newest notification does: run its default action."""
        subprocess.run(["dunstctl", "action", "0"], env=self.env, check=True, timeout=10)

    def received(self) -> list[str]:
        """Every notification received so far, oldest first, each "app|summary|body"."""
        return self.record.read_text().split("\0")[:-1] if self.record.exists() else []

    def close(self) -> None:
        for process in (self.dunst, self.xvfb):
            process.terminate()
            process.wait(timeout=10)
