"""Start-up adoption: each package's row brought in line with the configuration and the system
before the loop runs, and what the activation owes once they all are.

A restart is how a changed configuration arrives, and a system switch how a new version of a
package does, so at every start (and every redone start-up, engine.py) each row is adopted:
a build the stop interrupted is owed again; a changed `profile_build` (an upgrade) takes the
old optimized build out of use and starts again at the first stage, carrying the merged profile
forward; a working profile of another instrumentation kind than the profiling build's is set
aside; a context-sensitive stage switched off in the configuration ends; the stage's build is
made known to attribution. Then `finish_start_up` puts the profile and the system path's
stand-ins in line with what the rows now say (activation.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from pgod.config import Config
from pgod.intake.attribution import Attributor
from pgod.optimize import nixstore, stages
from pgod.state.db import Build, Package

log = structlog.get_logger(__name__)


def profile_build_key(paths) -> str:
    return "\n".join(sorted(str(p) for p in paths))


def index_stage_build(attributor: Attributor | None, name: str, out_path: str) -> None:
    """Attribution learns the ids of the context-sensitive stage's build: its raw profiles are the
    package's (and of the stage's kind)."""
    if attributor is not None:
        try:
            attributor.add_outputs(name, nixstore.outputs_of(out_path))
        except nixstore.NixError as err:
            log.error("attribution.stage_build_unreadable", package=name, build=out_path, error=str(err))


class Adoption:
    """Adopts the package rows at start; its collaborators are handed over by the engine."""

    def __init__(
        self,
        config: Config,
        activation,  # activation.Activation: the profile, the stand-ins, owed stage placements
        roots,  # gcroots.GCRoots
        attributor: Attributor | None = None,
        in_flight: Callable[[], set[str]] = set,  # packages whose build or benchmark runs now
    ) -> None:
        self.config = config
        self._activation = activation
        self._roots = roots
        self.attributor = attributor  # learns the CS build's ids; knows each build's kind
        self._in_flight = in_flight
        self._pending_profile_sync = False  # an upgrade took an active package out at start

    def adopt(self, session: Session, row: Package) -> None:
        """Bring a package row in line with the configuration at start (upgrades, lost builds)."""
        key = profile_build_key(self.config.packages[row.name].profile_build)
        if row.state == "building" and row.name not in self._in_flight():
            # The daemon stopped mid-build: that build's result is lost, so build again.
            row.state = "stale" if row.profile_build_key and row.profile_build_key != key else "profiling"
            row.build_due = True
            for build in session.scalars(select(Build).where(Build.package == row.name, Build.status.in_(("running", "benchmarking")))):
                build.status, build.error, build.finished_at = "failed", "interrupted by a daemon stop", time.time()
        if row.profile_build_key and row.profile_build_key != key:
            self._upgrade(row)
        row.profile_build_key = key
        self._check_kind(row)
        package = self.config.packages[row.name]
        if row.stage == stages.CONTEXT_SENSITIVE and package.cs_build is None:
            # The stage was switched off: its build leaves the system path, the profile stays.
            self._roots.remove(row.name, row.stage_build, "cs-profile")
            stages.back_to_first(row, package)
            self._pending_profile_sync = True
        row.threshold_bytes = stages.threshold_for(package, row)
        if row.stage_build:
            index_stage_build(self.attributor, row.name, row.stage_build)
        # A restart is how a changed configuration arrives (a fixed build command, say), so a
        # failed build is retried now rather than after the rest of its backoff.
        row.next_build_at = 0.0

    def _check_kind(self, row: Package) -> None:
        """Profiles of two instrumentation kinds are never mixed (llvm-profdata merges front-end
        and IR ones without a word, into a profile no build uses well): a working profile of
        another kind than the profiling build's is set aside, and collection starts again; raw
        profiles of the old kind still pending are refused at their merge (merge.gather_inputs)."""
        build = self.attributor.builds.get(row.name) if self.attributor else None
        kind = build.instrumentation if build else None
        if kind is None:
            return
        kind = "ir" if kind == "cs-ir" else kind
        was = row.profile_kind or "fe"  # rows before schema 4: every profile was front-end
        if row.profile_path is not None and was != kind:
            log.warning("profile.kind_changed", package=row.name, was=was, now=kind, set_aside=row.profile_path,
                        hint="the profile is not carried forward: the next build waits for profiles of the new kind")
            row.profile_path = None
            row.raw_bytes = row.files = 0
            row.build_due = False
        row.profile_kind = kind
        if kind == "fe" and self.config.packages[row.name].cs_build is not None:
            log.warning("stage.needs_ir", package=row.name,
                        hint="cs_build is ignored: the context-sensitive stage builds on IR instrumentation")

    def _upgrade(self, row: Package) -> None:
        """The system now has a new version: the old optimized build must stop shadowing it."""
        log.info("package.upgraded", package=row.name, was_active=row.active)
        row.state = "stale"
        if row.active or row.stage_build:
            row.active = False
            self._pending_profile_sync = True
        self._roots.remove(row.name, row.stage_build, "cs-profile")
        stages.back_to_first(row, self.config.packages[row.name])
        # The merged profile is carried forward: it is the starting profile of the new version,
        # and clang reports how much of it still matches. Build as soon as there is one.
        row.build_due = row.profile_path is not None
        row.next_build_at = 0.0
        row.build_failures = 0

    def finish_start_up(self) -> None:
        """Once every row is adopted: what adoption took out of use leaves the profile, and the
        stand-ins are published; stage builds not yet in place are tried again."""
        self._activation.resume_placing()
        if self._pending_profile_sync:
            self._pending_profile_sync = False
            try:
                self._activation.sync_profile()
            except nixstore.NixError as err:
                log.error("activation.sync_failed", error=str(err))
        # After a reboot or a system switch the activation script already did this; a daemon
        # started by hand, or after a crash between record and links, finds it undone.
        self._activation.publish_substitution()
