"""Crash injection for the exactly-once tests.

`PGOD_FAILPOINT=<name>` makes the daemon SIGKILL itself the first time it reaches the named
point, so a test can stop it at each step between claim and clean-up and check that nothing is
lost or counted twice. Unset (always, outside tests) it costs one string comparison.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("PGOD_FAILPOINT") or None

POINTS = (
    "after-claim",  # files renamed into staging, no rows yet
    "after-ingest-commit",  # rows written, staging copies of settled files not yet removed
    "after-merge",  # new profile generation written, not yet committed
    "after-merge-commit",  # committed, merged raw files not yet deleted
    "mid-cleanup",  # some merged raw files deleted, others not
)
# The live runs' seams (intake/live.py), for tests/test_live_daemon.py.
LIVE_POINTS = (
    "after-live-growth",  # growth files written and synced, no rows, the baselines not moved
    "after-live-record",  # growth rows and baselines committed, ended runs' files not yet deleted
    "after-live-end",  # an ended run's file deleted, its row not yet
)


def failpoint(name: str) -> None:
    """Die here, as abruptly as a power cut, if this point is armed."""
    if _ARMED is not None and _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
