"""What the closed loop's parts share: the error of an operation refused now, and the longest
wait between two tries of what failed.

`OperationError` is raised by the operations callers ask for (`pgoctl rebuild`, `activate`,
`reset`, … through D-Bus: pgod/daemon/service.py turns it into the bus's Failed error, its
message for the caller). The retry ceiling bounds both backoffs of the loop: a failed build's
(optimizer.py) and a stage build's that could not be put in place (activation.py).
"""

from __future__ import annotations

BUILD_RETRY_MAX_SECONDS = 3600.0  # the backoff doubles from config.build_retry_seconds up to this


class OperationError(Exception):
    """A requested operation cannot be done now; the message says why, for the caller."""
