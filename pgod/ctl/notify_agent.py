"""`pgoctl notify-agent`: a user's desktop notifications of pgod's builds, none of them lost.

A login session may start the agent before the daemon, and the daemon may restart under it.
So the agent does not need the daemon to start: it watches the daemon's bus name (the bus's
NameOwnerChanged signal, no polling), waits while nobody owns it, and each time a daemon
appears it catches up: it tells once about each package's latest build that became ready or
failed while it was away, and remembers what it told (notify_record.py) so the next login does
not tell it again. Live PackageEvent signals go through the same path, so what the user was
told live is not told again either. Every question to the daemon (the activation mode included)
is asked when the answer is needed; a daemon gone mid-call sends the agent back to waiting.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import structlog

from pgod.contract import EXIT_FAILED, EXIT_OK
from pgod.ctl import notify
from pgod.ctl.client import AccessDenied, DaemonUnreachable, OperationFailed
from pgod.ctl.notify_record import NotifiedRecord, build_key, default_path

log = structlog.get_logger(__name__)

RUNNING_LINE = "pgoctl: notify-agent running"
WAITING_LINE = "pgoctl: notify-agent waiting for the pgod daemon on the {bus} bus"
RETRY_SECONDS = 5  # a daemon that owns its name but did not answer is asked again after this


def newest(builds: list[dict], status: str) -> dict | None:
    """The newest build record with ``status`` (GetPackage lists them newest first)."""
    return next((build for build in builds if build.get("status") == status), None)


class NotifyAgent:
    """Waiting (no daemon) or running (caught up, telling events as they come)."""

    def __init__(self, client, session_bus, record: NotifiedRecord, say: Callable[[str], None]) -> None:
        self.client = client
        self.record = record
        self.notifier = notify.Notifier(session_bus, self._activate)
        self._say = say
        self._owner: str | None = None  # the daemon's unique bus name; "" none; None not asked yet
        self._state = ""
        self._retry = 0  # GLib source of a pending retry, 0 for none
        self._told_in_use: dict[str, str] = {}  # package → new build told "in use" before its activation

    def start(self) -> None:
        self.client.subscribe("PackageEvent", self._on_package_event)
        self.client.watch_owner(self._on_owner)

    # ---- lifecycle -------------------------------------------------------------------------
    def _on_owner(self, owner: str) -> None:
        if owner == self._owner:
            return  # the same change, reported by the signal and by the question both
        self._owner = owner
        self._cancel_retry()
        if owner:
            log.info("notify.daemon_appeared", owner=owner)
            self._connect()
        else:
            log.info("notify.daemon_gone")
            self._enter("waiting")

    def _connect(self) -> None:
        try:
            self._catch_up()
        except DaemonUnreachable as err:
            self._lost(err)
            return
        except OperationFailed as err:
            log.warning("notify.catch_up_failed", error=str(err))
            self._schedule_retry()
        self._enter("running")

    def _lost(self, err: DaemonUnreachable, **context) -> None:
        """A call found no daemon (gone mid-call, or no answer): back to waiting. What was
        being told is not remembered as told, so the next catch-up tells it."""
        log.warning("notify.daemon_unreachable", error=str(err), **context)
        self._enter("waiting")
        self._schedule_retry()

    def _enter(self, state: str) -> None:
        """Say the agent's state on stdout, once per change: the one line a user (or a test) reads."""
        if state != self._state:
            self._state = state
            self._say(RUNNING_LINE if state == "running" else WAITING_LINE.format(bus=self.client.bus_kind))

    def _schedule_retry(self) -> None:
        """A daemon gone mid-call announces itself by NameOwnerChanged (which cancels this);
        one that owns its name but did not answer (a timeout) does not, so it is asked again,
        once, a little later."""
        from gi.repository import GLib

        if not self._retry:
            self._retry = GLib.timeout_add_seconds(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> bool:
        self._retry = 0
        if self._owner:
            self._connect()
        return False  # one-shot

    def _cancel_retry(self) -> None:
        from gi.repository import GLib

        if self._retry:
            GLib.source_remove(self._retry)
            self._retry = 0

    # ---- what to tell ----------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Tell what finished while the agent was away: every package's untold news."""
        for package in self.client.status().get("packages", []):
            # No optimized build and no error: no build ever finished, or none is still news.
            if package.get("optimized") or package.get("last_error"):
                self._tell_news(self.client.package(package["name"]), late=True)

    def _tell_news(self, document: dict, late: bool, live_ready: str | None = None) -> bool:
        """Tell a package's latest successful build if it is the one to use now, and its latest
        failed build if that came after it, each unless told before; True if anything was.
        ``document``: the package as GetPackage gives it; ``live_ready``: the store path a ready
        event just named."""
        name = document["name"]
        builds = document.get("builds") or []
        succeeded, failed = newest(builds, "succeeded"), newest(builds, "failed")
        told = False
        if (
            succeeded is not None
            and succeeded.get("out_path") == document.get("optimized")
            and document.get("state") != "stale"  # built for a version the system no longer has
            and not self.record.told(name, "ready", build_key(succeeded))
        ):
            in_use = bool(document.get("active"))
            if live_ready == succeeded.get("out_path"):
                # The daemon activates a new build just after this event when activation is
                # "auto", or when the package's build before it was in use: told as in use now,
                # its "activated" event (which may have come already) is not told again.
                in_use = in_use or self._activation_mode() == "auto"
                if in_use:
                    self._told_in_use[name] = live_ready
            told |= self._tell(name, "ready", succeeded, notify.build_ready(name, succeeded, document, in_use, late))
        if (
            failed is not None
            and (succeeded is None or failed.get("id", 0) > succeeded.get("id", 0))
            and not self.record.told(name, "failed", build_key(failed))
        ):
            message = notify.build_failed(name, failed.get("error") or "no reason recorded", failed, late)
            told |= self._tell(name, "failed", failed, message)
        rejected = newest(builds, "rejected")
        if (
            rejected is not None
            and all(other is None or rejected.get("id", 0) > other.get("id", 0) for other in (succeeded, failed))
            and not self.record.told(name, "rejected", build_key(rejected))
        ):
            told |= self._tell(name, "rejected", rejected, notify.build_rejected(name, rejected, late))
        return told

    def _tell(self, name: str, outcome: str, build: dict, message: notify.Message) -> bool:
        if not self.notifier.send(message):
            return False  # not remembered: told at the next start, once a server is there
        self.record.remember(name, outcome, build_key(build))
        return True

    def _activation_mode(self) -> str:
        return self.client.status().get("daemon", {}).get("activation", "notify")

    def _on_package_event(self, name: str, event: str, detail: str) -> None:
        try:
            if event == "ready":
                self._tell_news(self.client.package(name), late=False, live_ready=detail)
            elif event == "failed":
                self._on_failed(name, detail)
            elif event == "rejected":
                self._tell_news(self.client.package(name), late=False)
            elif event == "activated":
                if self._told_in_use.pop(name, None) != detail:  # else told already, as "in use"
                    self.notifier.send(notify.activated(name, detail))
        except DaemonUnreachable as err:
            self._lost(err, package=name, event_=event)
        except OperationFailed as err:
            log.warning("notify.event_not_told", package=name, event_=event, error=str(err))
        log.info("notify.event_handled", package=name, event_=event)

    def _on_failed(self, name: str, error: str) -> None:
        self._told_in_use.pop(name, None)  # an activation that failed is not followed by "activated"
        document = self.client.package(name)
        if self._tell_news(document, late=False):
            return
        last = newest(document.get("builds") or [], "failed")
        if last is None or last.get("error") != error:
            # Not a build's own outcome (the snapshot before it, or the activation after it
            # failed): nothing to remember it by, and nothing a later start would repeat.
            self.notifier.send(notify.step_failed(name, error))

    def _activate(self, name: str) -> None:
        """The Activate action of a "ready" notification."""
        try:
            self.client.call("Activate", name)
        except (AccessDenied, OperationFailed, DaemonUnreachable) as err:
            self.notifier.send(notify.activation_refused(name, str(err)))


def run_agent(client) -> int:
    from gi.repository import GLib
    from pydbus import SessionBus

    from pgod.logs import configure_logging

    configure_logging()  # on stderr: stdout carries the agent's state lines
    try:
        session = SessionBus() if client.bus_kind != "session" else client.bus
        agent = NotifyAgent(client, session, NotifiedRecord(default_path()), lambda line: print(line, flush=True))
    except GLib.Error as err:
        print(f"pgoctl: notify-agent: no notification service on the session bus: {err.message}", file=sys.stderr)
        return EXIT_FAILED
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda: loop.quit() or False)
    agent.start()
    loop.run()
    return EXIT_OK
