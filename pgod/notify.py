"""`pgoctl notify-agent`: desktop notifications for daemon events, in a user's session.

Listens to the daemon's PackageEvent signals (on the daemon's bus) and sends
org.freedesktop.Notifications notifications (on the user's session bus). In notify mode a
"ready" notification carries an Activate action that calls the daemon's Activate method.
"""

from __future__ import annotations

import signal
import sys

import structlog

from .client import AccessDenied, OperationFailed
from .exitcodes import EXIT_FAILED, EXIT_OK

log = structlog.get_logger(__name__)

NOTIFICATIONS = "org.freedesktop.Notifications"
# The "default" key is the action a notification server runs when the notification itself is
# clicked; servers that show buttons label it "Activate".
ACTIVATE_ACTION = "default"

MESSAGES = {
    "ready": ("{name}: optimized build ready", "Profile-guided build of {name} finished: {detail}"),
    "activated": ("{name}: optimized build in use", "{name} now runs from {detail}"),
    "failed": ("{name}: optimized build failed", "{detail}"),
}


class NotifyAgent:
    def __init__(self, client, session_bus, activation_mode: str) -> None:
        self.client = client
        self.notifications = session_bus.get(NOTIFICATIONS)
        self.activation_mode = activation_mode
        self._actionable: dict[int, str] = {}  # notification id → package
        self.notifications.onActionInvoked = self._on_action

    def on_package_event(self, name: str, event: str, detail: str) -> None:
        if event not in MESSAGES:
            return
        summary, body = (text.format(name=name, detail=detail) for text in MESSAGES[event])
        actions = [ACTIVATE_ACTION, "Activate"] if event == "ready" and self.activation_mode == "notify" else []
        notification_id = self.notifications.Notify("pgod", 0, "", summary, body, actions, {}, -1)
        if actions:
            self._actionable[notification_id] = name
        log.info("notify.sent", package=name, event_=event, id=notification_id)

    def _on_action(self, notification_id: int, action: str) -> None:
        name = self._actionable.pop(notification_id, None)
        if name is None or action != ACTIVATE_ACTION:
            return
        try:
            self.client.call("Activate", name)
        except (AccessDenied, OperationFailed) as err:
            self.notifications.Notify("pgod", 0, "", f"{name}: could not activate", str(err), [], {}, -1)


def run_agent(client) -> int:
    from gi.repository import GLib
    from pydbus import SessionBus

    try:
        session = SessionBus() if client.bus_kind != "session" else client.bus
        mode = client.status().get("daemon", {}).get("activation", "notify")
        agent = NotifyAgent(client, session, mode)
    except GLib.Error as err:
        print(f"pgoctl: notify-agent: no notification service on the session bus: {err.message}", file=sys.stderr)
        return EXIT_FAILED
    client.subscribe("PackageEvent", agent.on_package_event)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda: loop.quit() or False)
    print("pgoctl: notify-agent running", flush=True)
    loop.run()
    return EXIT_OK
