"""Desktop notifications of pgod's events: what each says, and sending it to the session's server.

The texts are built from the daemon's own documents (`pgoctl show NAME --json`: the package and
its build records), so a notification names what the user needs: the package, how much faster
the build measured if it was measured, and the command that acts on it. The lifecycle (when to
tell what) is notify_agent.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from pgod.contract import PLACING_STAGE_BUILD

log = structlog.get_logger(__name__)

NOTIFICATIONS = "org.freedesktop.Notifications"
APP_NAME = "pgod"
# The "default" key is the action a notification server runs when the notification itself is
# clicked; servers that show buttons label it "Activate".
ACTIVATE_ACTION = "default"
MAX_ACTIONABLE = 64  # notifications whose Activate action is remembered; the oldest go first


@dataclass(frozen=True)
class Message:
    summary: str
    body: str
    activate: str | None = None  # the package the Activate action activates, if one is offered


def speedup_of(build: dict, package: dict | None = None) -> float | None:
    """How many times faster the build ran on the package's benchmark, if that was measured.

    Read from the build record's `speedup` (the benchmark gate writes it), else from the
    package's own `speedup` when the build is the package's current optimized build."""
    value = build.get("speedup")
    if value is None and package is not None and package.get("optimized") == build.get("out_path"):
        value = package.get("speedup")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def _speed(speedup: float) -> str:
    if speedup >= 1:
        return f"{speedup:.2f}× faster on your benchmark"
    return f"{speedup:.2f}× the speed on your benchmark (slower)"


def _finished(build: dict) -> str:
    """When the build finished, for news told after the fact (the agent was not running, the
    daemon not reachable, or the notification server not there)."""
    finished = build.get("finished_at")
    if not isinstance(finished, (int, float)):
        return ""
    when = time.localtime(finished)
    shown = time.strftime("%H:%M" if when[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M", when)
    return f"\nFinished at {shown}, before this agent could tell you."


def build_ready(name: str, build: dict, package: dict, in_use: bool, late: bool = False) -> Message:
    """A build that succeeded. ``in_use``: the optimized build runs now (activation "auto", or
    it was activated since); else the message says how to put it in use. ``late``: told after
    the fact, so the message says when it finished."""
    speedup = speedup_of(build, package)
    summary = f"{name}: optimized build {'in use' if in_use else 'ready'}"
    if speedup is not None:
        summary += f", {_speed(speedup)}"
    if in_use:
        what = f"It is in use now. To go back to the profiling build: pgoctl deactivate {name}"
    else:
        what = f"To put it in use: pgoctl activate {name} (or the Activate button)"
    measured = "" if speedup is not None else "\nSpeed-up: not measured."
    body = f"{what}{measured}\nBuild: {build.get('out_path')}{_finished(build) if late else ''}"
    return Message(summary, body, activate=None if in_use else name)


def build_failed(name: str, error: str, build: dict | None = None, late: bool = False) -> Message:
    """A build that failed; pgod retries it itself, later. ``build``: its record, if it has one."""
    body = f"{error}\nThe log: pgoctl logs {name}"
    if late and build is not None:
        body += _finished(build)
    return Message(f"{name}: optimized build failed", body)


def build_rejected(name: str, build: dict, late: bool = False) -> Message:
    """A build the benchmark gate refused: slower than the package's min_speedup (or its
    benchmark failed). Nothing changed for the user; pgod goes on profiling."""
    speedup = speedup_of(build)
    summary = f"{name}: optimized build not used" + (f", {speedup:.2f}× the speed on your benchmark" if speedup else "")
    body = (f"{build.get('error') or 'refused by the benchmark gate'}\n"
            f"pgod goes on profiling and builds again at the next threshold. Details: pgoctl show {name}")
    return Message(summary, body + (_finished(build) if late else ""))


# How the daemon words a failed activation in a "failed" event (activation.py, Activation.activate_accepted).
ACTIVATION_FAILED = "activation: "


def step_failed(name: str, error: str) -> Message:
    """A "failed" event that is no build's own outcome: the profile snapshot before a build, or
    the activation after one (activation "auto")."""
    if error.startswith(ACTIVATION_FAILED):
        return Message(
            f"{name}: could not put the optimized build in use",
            f"{error[len(ACTIVATION_FAILED):]}\nTo try again: pgoctl activate {name}",
        )
    if error.startswith(PLACING_STAGE_BUILD):
        return Message(
            f"{name}: the second stage's build is not in use yet",
            f"{error[len(PLACING_STAGE_BUILD):].lstrip(': ')}\npgod tries again by itself; until then the "
            f"first stage's programs run, and their profiles are not used. Details: pgoctl show {name}",
        )
    return build_failed(name, error)


def activated(name: str, optimized: str) -> Message:
    """An optimized build put in use by hand (`pgoctl activate`, the Activate action)."""
    return Message(
        f"{name}: optimized build in use",
        f"{name} now runs from {optimized}\nTo go back to the profiling build: pgoctl deactivate {name}",
    )


def activation_refused(name: str, reason: str) -> Message:
    return Message(f"{name}: could not activate", reason)


class Notifier:
    """The session's notification server (org.freedesktop.Notifications): sends Messages and
    hands a clicked Activate action to ``on_activate(package)``."""

    def __init__(self, session_bus, on_activate: Callable[[str], None]) -> None:
        self._server = session_bus.get(NOTIFICATIONS)
        self._on_activate = on_activate
        self._actionable: dict[int, str] = {}  # notification id → package, oldest first
        self._server.onActionInvoked = self._on_action
        self._server.onNotificationClosed = lambda notification_id, _reason: self._actionable.pop(notification_id, None)

    def send(self, message: Message) -> bool:
        """Show ``message``; False (logged) when the server could not be reached."""
        from gi.repository import GLib

        actions = [ACTIVATE_ACTION, "Activate"] if message.activate else []
        try:
            notification_id = self._server.Notify(APP_NAME, 0, "", message.summary, message.body, actions, {}, -1)
        except GLib.Error as err:
            log.warning("notify.not_sent", summary=message.summary, error=err.message)
            return False
        if message.activate:
            self._actionable[notification_id] = message.activate
            while len(self._actionable) > MAX_ACTIONABLE:
                del self._actionable[next(iter(self._actionable))]
        log.info("notify.sent", summary=message.summary, id=notification_id)
        return True

    def _on_action(self, notification_id: int, action: str) -> None:
        name = self._actionable.pop(notification_id, None)
        if name is not None and action == ACTIVATE_ACTION:
            self._on_activate(name)
