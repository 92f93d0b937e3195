"""What is in use on the system: the optimized-packages Nix profile and the system path's
stand-ins (substitution.py), and which build each package has in its place.

A package's place holds its optimized build while active, else the context-sensitive stage's
build while it profiles in that stage, else nothing: the declared profiling build
(stages.in_use). Every change here rewrites the whole profile from the database and then
publishes the stand-ins, so the two never tell different stories for long; a start finds and
mends a crash between them (adoption.py).

Runs on the engine thread only, like the optimizer that hands it the builds it accepts.
Putting a stage build in place may fail (the profile's folder unwritable, say): it is then owed,
and tried again with a backoff (`retry_placing`, called before each build is started).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.contract import PLACING_STAGE_BUILD
from pgod.optimize import nixstore, stages, substitution
from pgod.optimize.operations import BUILD_RETRY_MAX_SECONDS, OperationError
from pgod.state.db import Package

log = structlog.get_logger(__name__)


class Activation:
    """activate, deactivate, rollback; the profile and the stand-ins; stage builds put in place."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], emit: Callable[..., None]) -> None:
        self.config = config
        self.sessions = sessions
        self._emit = emit
        # A stage build that could not be put in place: package → (when to try again, by the
        # wall clock; the delay until then, which doubles as build retries do).
        self._place_owed: dict[str, tuple[float, float]] = {}

    # ---- what callers ask for (pgoctl through D-Bus, on the engine thread) ------------------
    def activate(self, name: str) -> None:
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            built_for_another = row.optimized_for is not None and row.optimized_for != row.profile_build_key
            if row.optimized is None or row.state == "stale" or built_for_another:
                raise OperationError(f"{name} has no optimized build for its current version yet")
        self._change_active(name, True)
        self._emit("package", package=name, event="activated", detail=self._optimized(name))

    def deactivate(self, name: str) -> None:
        self._change_active(name, False)
        self._emit("package", package=name, event="deactivated", detail="")

    def rollback(self) -> None:
        """Return the profile to its previous generation, and believe what it now holds."""
        nixstore.profile_rollback(self.config.profile_link)
        contents = nixstore.profile_contents(self.config.profile_link)
        changed = []
        with self.sessions.begin() as session:
            for row in session.scalars(select(Package)):
                active = row.optimized is not None and row.optimized in contents
                if active != row.active:
                    row.active = active
                    if row.state in ("ready", "active"):
                        row.state = "active" if active else "ready"
                    changed.append(row.name)
        log.info("activation.rolled_back", profile=str(self.config.profile_link), changed=changed)
        self.publish_substitution()
        for name in changed:
            self._emit("counters", package=name)
            self._emit("package", package=name, event="rolled-back", detail="")

    def activate_accepted(self, name: str) -> None:
        """A build just accepted goes in use (activation "auto", or the package was active): a
        failure is the package's error, told as a "failed" event, not the caller's."""
        try:
            self.activate(name)
        except (OperationError, nixstore.NixError) as err:
            self._set_error(name, f"activation: {err}")

    # ---- the profile and the stand-ins --------------------------------------------------------
    def sync_profile(self, strict: bool = False) -> None:
        """Make the profile and the stand-ins hold what the database says is in use."""
        with self.sessions() as session:
            wanted = sorted(self._in_use(session).values())
        nixstore.profile_set(self.config.profile_link, wanted)
        self.publish_substitution(strict=strict)

    def publish_substitution(self, active: dict[str, str] | None = None, strict: bool = False) -> None:
        """Point the system path's stand-ins at what is in use (pgod/optimize/substitution.py): ``active``
        (package → store path) when given, else what the database says now. A failure is
        logged, or raised if ``strict`` (when the caller must know the links are in place)."""
        if self.config.substitute_dir is None:
            return
        if active is None:
            with self.sessions() as session:
                active = self._in_use(session)
        try:
            substitution.publish(
                self.config,
                {
                    name: substitution.Active(
                        built_for=tuple(str(p) for p in self.config.packages[name].profile_build),
                        outputs=tuple(nixstore.outputs_of(optimized)),
                    )
                    for name, optimized in active.items()
                },
            )
        except (OSError, nixstore.NixError) as err:
            log.error("substitution.failed", error=str(err), substitute_dir=str(self.config.substitute_dir))
            if strict:
                raise

    def _optimized(self, name: str) -> str:
        with self.sessions() as session:
            return session.get(Package, name).optimized or ""

    def _in_use(self, session: Session) -> dict[str, str]:
        """Package → the store path in its place (stages.in_use), for the configured packages."""
        return {
            row.name: path
            for row in session.scalars(select(Package))
            if row.name in self.config.packages and (path := stages.in_use(row))
        }

    def _change_active(self, name: str, active: bool) -> None:
        with self.sessions() as session:
            wanted = self._in_use(session)
            in_place = stages.in_use(session.get(Package, name), active=active)
            if in_place:
                wanted[name] = in_place
            else:
                wanted.pop(name, None)
        nixstore.profile_set(self.config.profile_link, sorted(wanted.values()))
        # The links first, then the state: once status says "active", the system path runs it.
        # (A crash between the two is mended at the next start, which publishes the record's.)
        self.publish_substitution(wanted)
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            row.active = active
            if row.state in ("ready", "active"):
                row.state = "active" if active else "ready"
        log.info("activation.changed", package=name, active=active, profile=str(self.config.profile_link))
        self._emit("counters", package=name)

    # ---- the context-sensitive stage's build ------------------------------------------------
    def put_stage_build_in_place(self, name: str) -> None:
        """Link the stage's build in the profiling build's place: the Nix profile and the system
        path's stand-ins. Until that works, the programs users run are the first stage's, whose
        profiles the stage refuses: so a failure (the profile's folder unwritable, say) is tried
        again after build_retry_seconds, doubling up to an hour, and after a restart; it is told
        (the package's error, a "failed" event) the first time only."""
        owed = self._place_owed.get(name)
        delay = min(owed[1] * 2, BUILD_RETRY_MAX_SECONDS) if owed else self.config.build_retry_seconds
        self._place_owed[name] = (time.time() + delay, delay)  # before trying: whatever happens
        try:
            self.sync_profile(strict=True)
        except (nixstore.NixError, OSError) as err:
            error = f"{PLACING_STAGE_BUILD}: {err}"
            if owed is None:
                self._set_error(name, error)
            else:
                with self.sessions.begin() as session:
                    session.get(Package, name).last_error = error
                log.warning("stage.still_not_in_place", package=name, error=str(err), retry_in=delay)
            return
        del self._place_owed[name]
        if owed is not None:  # in place at last
            log.info("stage.build_in_place", package=name)
            with self.sessions.begin() as session:
                row = session.get(Package, name)
                if row.last_error and row.last_error.startswith(PLACING_STAGE_BUILD):
                    row.last_error = None
            self._emit("counters", package=name)

    def resume_placing(self) -> None:
        """At start: the stage builds whose placement had not worked before the stop are owed,
        to be tried again now."""
        with self.sessions() as session:
            for row in session.scalars(select(Package).where(Package.stage == stages.CONTEXT_SENSITIVE)):
                if row.name in self.config.packages and (row.last_error or "").startswith(PLACING_STAGE_BUILD):
                    self._place_owed.setdefault(row.name, (0.0, self.config.build_retry_seconds))

    def retry_placing(self) -> None:
        now = time.time()
        for name, (at, _delay) in list(self._place_owed.items()):
            if at > now:
                continue
            if name not in self.config.packages:
                del self._place_owed[name]
                continue
            try:
                self.put_stage_build_in_place(name)
            except Exception:  # the database, say: rescheduled already; builds must still start
                log.exception("stage.placement_failed", package=name)

    def placing_deadline(self) -> float | None:
        """Wall-clock time of the next try at putting a stage build in place, if one is owed."""
        return min((at for at, _delay in self._place_owed.values()), default=None)

    def _set_error(self, name: str, error: str) -> None:
        with self.sessions.begin() as session:
            session.get(Package, name).last_error = error
        log.error("package.error", package=name, error=error)
        self._emit("package", package=name, event="failed", detail=error)
