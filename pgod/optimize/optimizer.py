"""The closed loop after merging: snapshot, optimized rebuild, activation, upgrades.

Runs on the engine thread only (the engine calls it), so, like the merge, every state change
happens in one place. Builds themselves run in a BuildRun thread that reports back through
the engine's queue.

States (docs/interfaces.md §7.3): profiling → building → ready ⇄ active; building → failed → (backoff)
building; building → rejected (slower than min_speedup on the package's benchmark, gate.py) →
profiling goes on; a changed `profile_build` makes a package stale until its next build. With a
context-sensitive stage (stages.py) the first build makes the stage's instrumented variant and
puts it in use: profiling → building → profiling (stage "cs") → building → ready.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.confine import Identity
from pgod.contract import PLACING_STAGE_BUILD
from pgod.durable import replace_file
from pgod.intake.attribution import Attributor
from pgod.optimize import nixstore, stages, substitution
from pgod.optimize.builds import BuildProgressed, BuildResult, BuildRun, expand_argv
from pgod.optimize.gate import GateResult, GateRun
from pgod.state.db import Build, Package
from pgod.state.layout import Layout

log = structlog.get_logger(__name__)

BUILD_RETRY_MAX_SECONDS = 3600.0  # the backoff doubles from config.build_retry_seconds up to this


class OperationError(Exception):
    """A requested operation cannot be done now; the message says why, for the caller."""


def profile_build_key(paths) -> str:
    return "\n".join(sorted(str(p) for p in paths))


class Optimizer:
    def __init__(
        self,
        config: Config,
        layout: Layout,
        sessions: sessionmaker[Session],
        emit: Callable[..., None],
        report_build: Callable[[BuildResult | BuildProgressed], None],
        merging: Callable[[str], bool] = lambda _name: False,
        attributor: Attributor | None = None,
        bench_identity: Identity | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self._emit = emit
        self._report_build = report_build
        self._merging = merging  # a merge of this package runs or is owed: its build waits
        self.attributor = attributor  # learns the CS build's ids; knows each build's kind
        self._bench_identity = bench_identity  # whom benchmarks run as (the merge user)
        self.running: BuildRun | None = None
        self.gating: GateRun | None = None
        self._pending_profile_sync = False  # an upgrade took an active package out at start
        # A stage build that could not be put in place: package → (when to try again, by the
        # wall clock; the delay until then, which doubles as build retries do).
        self._place_owed: dict[str, tuple[float, float]] = {}

    @property
    def gcroots(self) -> Path:
        return self.layout.state / "gcroots"

    # ---- start-up --------------------------------------------------------------------------
    def adopt(self, session: Session, row: Package) -> None:
        """Bring a package row in line with the configuration at start (upgrades, lost builds)."""
        key = profile_build_key(self.config.packages[row.name].profile_build)
        live = {run.package if isinstance(run, BuildRun) else run.package.name
                for run in (self.running, self.gating) if run is not None}
        if row.state == "building" and row.name not in live:
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
            self._remove_roots(row.name, row.stage_build, "cs-profile")
            stages.back_to_first(row, package)
            self._pending_profile_sync = True
        row.threshold_bytes = stages.threshold_for(package, row)
        if row.stage_build:
            self._index_stage_build(row.name, row.stage_build)
        # A restart is how a changed configuration arrives (a fixed build command, say), so a
        # failed build is retried now rather than after the rest of its backoff.
        row.next_build_at = 0.0

    def _index_stage_build(self, name: str, out_path: str) -> None:
        if self.attributor is not None:
            try:
                self.attributor.add_outputs(name, nixstore.outputs_of(out_path))
            except nixstore.NixError as err:
                log.error("attribution.stage_build_unreadable", package=name, build=out_path, error=str(err))

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
        self._remove_roots(row.name, row.stage_build, "cs-profile")
        stages.back_to_first(row, self.config.packages[row.name])
        # The merged profile is carried forward: it is the starting profile of the new version,
        # and clang reports how much of it still matches. Build as soon as there is one.
        row.build_due = row.profile_path is not None
        row.next_build_at = 0.0
        row.build_failures = 0

    def finish_start_up(self) -> None:
        with self.sessions() as session:
            for row in session.scalars(select(Package).where(Package.stage == stages.CONTEXT_SENSITIVE)):
                if row.name in self.config.packages and (row.last_error or "").startswith(PLACING_STAGE_BUILD):
                    # Its placement had not worked before the stop: try again now.
                    self._place_owed.setdefault(row.name, (0.0, self.config.build_retry_seconds))
        if self._pending_profile_sync:
            self._pending_profile_sync = False
            try:
                self._sync_profile()
            except nixstore.NixError as err:
                log.error("activation.sync_failed", error=str(err))
        # After a reboot or a system switch the activation script already did this; a daemon
        # started by hand, or after a crash between record and links, finds it undone.
        self._publish_substitution()

    def _publish_substitution(self, active: dict[str, str] | None = None, strict: bool = False) -> None:
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

    # ---- builds ----------------------------------------------------------------------------
    def _put_stage_build_in_place(self, name: str) -> None:
        """Link the stage's build in the profiling build's place: the Nix profile and the system
        path's stand-ins. Until that works, the programs users run are the first stage's, whose
        profiles the stage refuses: so a failure (the profile's folder unwritable, say) is tried
        again after build_retry_seconds, doubling up to an hour, and after a restart; it is told
        (the package's error, a "failed" event) the first time only."""
        owed = self._place_owed.get(name)
        delay = min(owed[1] * 2, BUILD_RETRY_MAX_SECONDS) if owed else self.config.build_retry_seconds
        self._place_owed[name] = (time.time() + delay, delay)  # before trying: whatever happens
        try:
            self._sync_profile(strict=True)
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

    def _retry_placing(self) -> None:
        now = time.time()
        for name, (at, _delay) in list(self._place_owed.items()):
            if at > now:
                continue
            if name not in self.config.packages:
                del self._place_owed[name]
                continue
            try:
                self._put_stage_build_in_place(name)
            except Exception:  # the database, say: rescheduled already; builds must still start
                log.exception("stage.placement_failed", package=name)

    def next_deadline(self) -> float | None:
        """Wall-clock time of the next build retry or stage placement, if one is waiting."""
        placing = min((at for at, _delay in self._place_owed.values()), default=None)
        if self.running is not None or self.gating is not None:
            return placing
        with self.sessions() as session:
            retry = session.scalar(
                select(Package.next_build_at).where(Package.build_due.is_(True), Package.next_build_at > time.time())
                .order_by(Package.next_build_at)
                .limit(1)
            )
        return min((at for at in (placing, retry) if at is not None), default=None)

    def maybe_start_build(self) -> None:
        """Start the first due package's build, if none is running (one build at a time)."""
        self._retry_placing()
        if self.running is not None or self.gating is not None:
            return
        now = time.time()
        with self.sessions() as session:
            due = {
                row.name: row
                for row in session.scalars(
                    select(Package).where(Package.build_due.is_(True), Package.next_build_at <= now)
                )
            }
        for name in self.config.packages:  # configuration order is queue order
            if name in due and due[name].profile_path and not self._merging(name):
                self._start_build(name)
                return

    def request_build(self, name: str) -> None:
        """`pgoctl rebuild`: build now, whatever the threshold."""
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            if row.profile_path is None:
                raise OperationError(f"{name} has no merged profile yet: run the profiling build first")
            if row.state == "building":
                raise OperationError(f"{name} is already building")
            row.build_due = True
            row.next_build_at = 0.0
        self.maybe_start_build()

    def _start_build(self, name: str) -> None:
        package = self.config.packages[name]
        with self.sessions() as session:
            row = session.get(Package, name)
            profile_path, generation = Path(row.profile_path), row.profile_generation
            stage, command = stages.next_build(package, row)
        try:
            snapshot = nixstore.add_file(profile_path, f"pgo-{name}-{generation}.profdata")
            nixstore.add_root(snapshot, self.gcroots / f"{name}-profile")
        except (nixstore.NixError, OSError) as err:
            self._build_failed_to_start(name, f"profile snapshot: {err}")
            return
        argv = expand_argv(command, snapshot)
        started = time.time()
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            build = Build(
                package=name,
                profile_store_path=snapshot,
                profile_generation=generation,
                log_path="",
                started_at=started,
                stage=stage,
            )
            session.add(build)
            session.flush()
            build.log_path = str(self.layout.state / "logs" / f"{name}-{build.id}.log")
            row.state = "building"
            row.build_due = False
            row.raw_bytes = 0  # counters restart: they measure data since this build started
            row.files = 0
            build_id, log_path = build.id, Path(build.log_path)
        self.running = BuildRun(name, build_id, argv, log_path, self._report_build, on_progress=self._report_build)
        self.running.start()
        log.info("build.started", package=name, build=build_id, stage=stage, profile=snapshot, argv=argv)
        self._emit("counters", package=name)
        self._emit("package", package=name, event="building", detail=snapshot)

    def _build_failed_to_start(self, name: str, error: str) -> None:
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            self._record_failure(row, error)
        self._emit("counters", package=name)
        self._emit("package", package=name, event="failed", detail=error)

    def _record_failure(self, row: Package, error: str) -> None:
        row.state = "failed"
        row.last_error = error
        row.build_failures += 1
        delay = min(self.config.build_retry_seconds * 2 ** (row.build_failures - 1), BUILD_RETRY_MAX_SECONDS)
        row.next_build_at = time.time() + delay
        row.build_due = True
        log.error("build.failed", package=row.name, error=error, retry_in=delay, failures=row.build_failures)

    def on_build_progress(self, event: BuildProgressed) -> None:
        """The running build said something new: tell the watchers (at most 4 times a second,
        builds.PROGRESS_INTERVAL_SECONDS), so `pgoctl watch` redraws its progress."""
        if self.running is not None and self.running.build_id == event.build_id:
            self._emit("build-progress", package=event.package)

    def on_build_done(self, result: BuildResult) -> None:
        self.running = None
        name = result.package
        with self.sessions() as session:
            stage = session.get(Build, result.build_id).stage
        root = "cs-profile" if stage == stages.CS_PROFILE else "candidate"
        if result.ok:
            try:
                self._add_roots(name, result.out_path, root)
            except nixstore.NixError as err:
                result = BuildResult(name, result.build_id, False, None, f"GC root: {err}", result.seconds)
        if not result.ok:
            with self.sessions.begin() as session:
                build = session.get(Build, result.build_id)
                build.finished_at, build.status, build.error = time.time(), "failed", result.error
                self._record_failure(session.get(Package, name), result.error)
            self._emit("package", package=name, event="failed", detail=result.error)
            self._emit("counters", package=name)
            return
        if stage == stages.CS_PROFILE:
            self._enter_context_sensitive(name, result)
            return
        package = self.config.packages[name]
        if package.benchmark is None:
            self._accept(name, result.build_id, result.out_path, None)
            return
        with self.sessions.begin() as session:
            build = session.get(Build, result.build_id)
            build.status, build.out_path = "benchmarking", result.out_path  # the candidate
        self.gating = GateRun(package, result.build_id, result.out_path, self._bench_identity, self._report_build)
        self.gating.start()
        log.info("gate.started", package=name, build=result.build_id, candidate=result.out_path,
                 baseline=str(package.baseline_build), rounds=package.benchmark_rounds)
        self._emit("package", package=name, event="benchmarking", detail=result.out_path)
        self._emit("counters", package=name)

    def on_gate_done(self, gate: GateResult) -> None:
        self.gating = None
        name = gate.package
        figures = gate.figures()
        with self.sessions() as session:
            candidate = session.get(Build, gate.build_id).out_path
        if gate.accepted:
            log.info("gate.accepted", package=name, speedup=figures["speedup"], seconds=figures["seconds"])
            self._accept(name, gate.build_id, candidate, figures)
            return
        self._remove_roots(name, candidate, "candidate")
        if gate.error is not None:
            # The gate could not judge (a broken benchmark, a missing baseline): a failure, retried
            # with the backoff of failed builds, not a verdict on the build.
            error = f"benchmark failed: {gate.error}"
            with self.sessions.begin() as session:
                build = session.get(Build, gate.build_id)
                build.finished_at, build.status, build.error = time.time(), "failed", error
                build.benchmark = json.dumps(figures)
                self._record_failure(session.get(Package, name), error)
            self._emit("package", package=name, event="failed", detail=error)
            self._emit("counters", package=name)
            return
        why = (f"rejected: {gate.speedup:.3f}× on the benchmark, below min_speedup {gate.min_speedup:g}"
               f" (baseline {figures['baseline_median_seconds']:.3f} s, candidate"
               f" {figures['candidate_median_seconds']:.3f} s, median of {figures['rounds']})")
        with self.sessions.begin() as session:
            build = session.get(Build, gate.build_id)
            build.finished_at, build.status, build.error = time.time(), "rejected", why
            build.benchmark, build.speedup = json.dumps(figures), figures.get("speedup")
            row = session.get(Package, name)
            # Not a failure to retry: the profile goes on growing, and the next threshold builds.
            # The build in use, if any, stays: the state says so.
            row.state = "active" if row.active else "rejected"
            row.last_error = why
            row.build_due = row.raw_bytes >= row.threshold_bytes
        log.warning("gate.rejected", package=name, reason=why, seconds=figures["seconds"])
        self._emit("package", package=name, event="rejected", detail=why)
        self._emit("counters", package=name)

    def _root_names(self, name: str, out_path: str, kind: str) -> list[tuple[str, Path]]:
        """Every output of the build of ``out_path`` and its GC root: `<name>-<kind>` for the
        printed output, `<name>-<kind>-<output's store name>` for the others."""
        return [
            (output, self.gcroots / (f"{name}-{kind}" if output == out_path else f"{name}-{kind}-{substitution.store_name(output)}"))
            for output in nixstore.outputs_of(out_path)
        ]

    def _remove_roots(self, name: str, out_path: str | None, kind: str) -> None:
        if out_path is None:
            return
        try:
            for _output, root in self._root_names(name, out_path, kind):
                root.unlink(missing_ok=True)
        except nixstore.NixError as err:
            log.warning("gcroot.not_removed", package=name, build=out_path, error=str(err))

    def _add_roots(self, name: str, out_path: str, kind: str) -> None:
        """Every output, not only the one nix-build printed: a substituted `lib` or `man`
        output must outlive garbage collection as long as `out` does."""
        for output, root in self._root_names(name, out_path, kind):
            nixstore.add_root(output, root)

    def _enter_context_sensitive(self, name: str, result: BuildResult) -> None:
        """The IR-optimized, CS-instrumented build replaces the profiling build in use, and the
        working profile goes back to the snapshot that build was made from: the final build
        must see the very IR profile the stage's inlining came from, or clang drops the CS
        counts as mismatched (measured on the demo: 17 functions). First-stage profiles merged
        since are left out; later ones are refused at their merge (merge.gather_inputs)."""
        package = self.config.packages[name]
        with self.sessions() as session:
            snapshot = session.get(Build, result.build_id).profile_store_path
            generation = session.get(Package, name).profile_generation + 1
        working = self.layout.package_profiles(name) / f"{generation:08d}.profdata"
        try:
            working.parent.mkdir(mode=0o700, exist_ok=True)
            replace_file(working, Path(snapshot).read_bytes())  # a store file: a few MB at most
        except OSError as err:
            self._build_failed_to_start(name, f"the stage's starting profile {snapshot}: {err}")
            return
        with self.sessions.begin() as session:
            build = session.get(Build, result.build_id)
            build.finished_at, build.status, build.out_path = time.time(), "succeeded", result.out_path
            row = session.get(Package, name)
            replaced = row.profile_path
            row.profile_path, row.profile_generation = str(working), generation
            stages.enter_context_sensitive(row, package, result.out_path)
            row.last_error = None
            row.build_failures = 0
            row.next_build_at = 0.0
            row.build_due = row.raw_bytes >= row.threshold_bytes
        if replaced and replaced != str(working):
            Path(replaced).unlink(missing_ok=True)
        self._index_stage_build(name, result.out_path)
        log.info("stage.context_sensitive", package=name, build=result.out_path, profile=snapshot,
                 seconds=round(result.seconds, 1))
        self._put_stage_build_in_place(name)
        self._emit("package", package=name, event="stage", detail=result.out_path)
        self._emit("counters", package=name)

    def _accept(self, name: str, build_id: int, out_path: str, figures: dict | None) -> None:
        """A final build that passed (or had no) benchmark: it is the package's optimized build."""
        try:
            self._add_roots(name, out_path, "optimized")
        except nixstore.NixError as err:
            with self.sessions.begin() as session:
                build = session.get(Build, build_id)
                build.finished_at, build.status, build.error = time.time(), "failed", f"GC root: {err}"
                self._record_failure(session.get(Package, name), build.error)
            self._emit("package", package=name, event="failed", detail=f"GC root: {err}")
            return
        self._remove_roots(name, out_path, "candidate")
        with self.sessions.begin() as session:
            build = session.get(Build, build_id)
            row = session.get(Package, name)
            build.finished_at = time.time()
            build.status, build.out_path = "succeeded", out_path
            if figures is not None:
                build.benchmark, build.speedup = json.dumps(figures), figures.get("speedup")
            row.optimized = out_path
            row.optimized_for = row.profile_build_key
            row.state = "active" if row.active else "ready"
            row.last_error = None
            row.build_failures = 0
            row.next_build_at = 0.0
            # Data that arrived during the build may already justify the next one.
            row.build_due = row.raw_bytes >= row.threshold_bytes
            was_active = row.active
            seconds = build.finished_at - build.started_at
        log.info("build.succeeded", package=name, out=out_path, seconds=round(seconds, 1),
                 speedup=figures.get("speedup") if figures else None)
        self._emit("package", package=name, event="ready", detail=out_path)
        if self.config.activation == "auto" or was_active:
            try:
                self.activate(name)
            except (OperationError, nixstore.NixError) as err:
                self._set_error(name, f"activation: {err}")
        self._emit("counters", package=name)

    # ---- activation ------------------------------------------------------------------------
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
        self._publish_substitution(wanted)
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            row.active = active
            if row.state in ("ready", "active"):
                row.state = "active" if active else "ready"
        log.info("activation.changed", package=name, active=active, profile=str(self.config.profile_link))
        self._emit("counters", package=name)

    def _sync_profile(self, strict: bool = False) -> None:
        with self.sessions() as session:
            wanted = sorted(self._in_use(session).values())
        nixstore.profile_set(self.config.profile_link, wanted)
        self._publish_substitution(strict=strict)

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
        self._publish_substitution()
        for name in changed:
            self._emit("counters", package=name)
            self._emit("package", package=name, event="rolled-back", detail="")

    def reset(self, name: str) -> None:
        """Forget a package's profile and counters (its optimized build stays in the profile)."""
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            if row.state == "building":
                raise OperationError(f"{name} is building; wait for it to finish")
            row.profile_path = None
            row.raw_bytes = row.files = 0
            row.build_due = False
            row.build_failures = 0
            row.next_build_at = 0.0
            row.last_error = None
            if row.state in ("failed", "stale"):
                row.state = "profiling"
        log.info("package.reset", package=name)
        self._emit("counters", package=name)

    def _set_error(self, name: str, error: str) -> None:
        with self.sessions.begin() as session:
            session.get(Package, name).last_error = error
        log.error("package.error", package=name, error=error)
        self._emit("package", package=name, event="failed", detail=error)
