"""A long-lived Lua service beside the short training runs (issue 20): the profiling Lua running
demo/service.lua, which serves work items fed on its stdin and never exits. Built with the
live object, it reports its counts while it runs; the training prints them rising each round.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from demo.common import ROOT, WORKLOAD_DIR

SERVER = ROOT / "demo" / "service.lua"
DUMP_INTERVAL_S = "5"  # the adapter bakes in 60 s; the demo wants to see counts rise in seconds
ITEMS_PER_ROUND = 6


class LuaService:
    def __init__(self, lua: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(lua), str(SERVER), str(WORKLOAD_DIR)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**env, "PGOD_LIVE_INTERVAL_S": DUMP_INTERVAL_S},
        )
        self.served = 0

    def feed(self, items: int = ITEMS_PER_ROUND) -> None:
        """Hand it work items (it serves them while the training goes on)."""
        if self.process.poll() is None:
            self.process.stdin.write(b"item\n" * items)
            self.process.stdin.flush()
            self.served += items

    def stop(self) -> int | None:
        """SIGTERM, as `systemctl stop` would: no exit write; what it reported is counted, once."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            try:
                self.process.stdin.close()
            except OSError:
                pass


def live_text(package: dict) -> str:
    """The service's figures as pgod has them: the counts rising while it runs."""
    live = package.get("live") or {}
    if not live.get("processes"):
        return ""
    return f"  live: {live['processes']} running, {live['counts']:,} counts in {live['snapshots']} snapshots"
