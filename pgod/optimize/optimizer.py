"""The build lifecycle of the closed loop: when a package builds, its build and benchmark gate
running, and what their outcome makes of the package.

Runs on the engine thread only (the engine calls it), so, like the merge, every state change
happens in one place. Builds themselves run in a BuildRun thread, benchmarks in a GateRun
thread (gate.py), both reporting back through the engine's queue. What is in use on the system
is the activation's (activation.py), handed over to the optimizer with the GC roots
(gcroots.py); start-up adoption of the package rows is adoption.py's.

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
from pgod.durable import replace_file
from pgod.intake.attribution import Attributor
from pgod.optimize import nixstore, stages
from pgod.optimize.adoption import index_stage_build
from pgod.optimize.builds import BuildProgressed, BuildResult, BuildRun, expand_argv
from pgod.optimize.gate import GateResult, GateRun
from pgod.optimize.operations import BUILD_RETRY_MAX_SECONDS, OperationError
from pgod.schedule.conditions import Conditions
from pgod.schedule.order import build_order
from pgod.state.db import Build, Package
from pgod.state.layout import Layout

log = structlog.get_logger(__name__)


class Optimizer:
    """Starts builds (one at a time) and gates, and takes in their outcomes; see the module's docstring."""

    def __init__(
        self,
        config: Config,
        layout: Layout,
        sessions: sessionmaker[Session],
        emit: Callable[..., None],
        report_build: Callable[[BuildResult | BuildProgressed], None],
        activation,  # activation.Activation: puts accepted builds and stage builds in use
        roots,  # gcroots.GCRoots
        merging: Callable[[str], bool] = lambda _name: False,
        attributor: Attributor | None = None,
        bench_identity: Identity | None = None,
        conditions: Conditions | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self._emit = emit
        self._report_build = report_build
        self._activation = activation
        self._roots = roots
        self._merging = merging  # a merge of this package runs or is owed: its build waits
        self.attributor = attributor  # learns the CS build's ids
        self._bench_identity = bench_identity  # whom benchmarks run as (the merge user)
        self.running: BuildRun | None = None
        self.gating: GateRun | None = None
        self._conditions = conditions if conditions is not None else Conditions(config)
        self._conditions_at = 0.0  # wall-clock time the conditions may be looked at again
        self._forced: set[str] = set()  # `pgoctl rebuild`: builds without waiting for conditions
        self.queue: list[str] = []  # the due packages in build order (status shows it)
        self.waiting: str | None = None  # why the first of them does not build now

    def in_flight(self) -> set[str]:
        """The packages whose build or benchmark gate runs now."""
        return {run.package if isinstance(run, BuildRun) else run.package.name
                for run in (self.running, self.gating) if run is not None}

    # ---- builds ----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """Wall-clock time of the next build retry, stage placement or look at the machine's
        conditions (a due build waits for AC or idle), if one is waiting."""
        placing = self._activation.placing_deadline()
        if self.running is not None or self.gating is not None:
            return placing
        with self.sessions() as session:
            retry = session.scalar(
                select(Package.next_build_at).where(Package.build_due.is_(True), Package.next_build_at > time.time())
                .order_by(Package.next_build_at)
                .limit(1)
            )
        conditions = None
        if self.waiting is not None:
            conditions = time.time() + max(0.0, self._conditions.next_check() - time.monotonic())
        return min((at for at in (placing, retry, conditions) if at is not None), default=None)

    def maybe_start_build(self) -> None:
        """Start the first due package's build, if none is running (one build at a time) and
        the machine is fit for one (schedule/conditions.py; `pgoctl rebuild` does not wait).
        The first is the one the machine spends most time in (schedule/order.py)."""
        self._activation.retry_placing()
        if self.running is not None or self.gating is not None:
            return
        now = time.time()
        with self.sessions() as session:
            due = session.scalars(
                select(Package).where(Package.build_due.is_(True), Package.next_build_at <= now)
            ).all()
        ready = [row.name for row in build_order(due, list(self.config.packages))
                 if row.name in self.config.packages and row.profile_path and not self._merging(row.name)]
        self.queue = ready
        if not ready:
            self._set_waiting(None)
            return
        forced = [name for name in ready if name in self._forced]
        if forced:
            self._start_build(forced[0])
            return
        if self.waiting is not None and now < self._conditions_at:
            return  # waiting, and looked less than CHECK_SECONDS ago: next_deadline wakes the engine then
        reading = self._conditions.check()
        self._conditions_at = time.time() + max(0.0, self._conditions.next_check() - time.monotonic())
        self._set_waiting(reading.waiting)
        if reading.waiting is None:
            self._start_build(ready[0])

    def schedule(self) -> dict:
        """What status shows of the schedule (read from D-Bus's thread: copies)."""
        reading = self._conditions.last
        return {"queue": list(self.queue), "waiting": self.waiting,
                "conditions": reading.document() if reading is not None else None}

    def _set_waiting(self, waiting: str | None) -> None:
        if waiting != self.waiting:
            self.waiting = waiting
            for name in self.queue:
                self._emit("counters", package=name)
            if not self.queue:
                self._emit("status")

    def request_build(self, name: str) -> None:
        """`pgoctl rebuild`: build now, whatever the threshold, the profile's maturity and the
        machine's conditions."""
        with self.sessions.begin() as session:
            row = session.get(Package, name)
            if row.profile_path is None:
                raise OperationError(f"{name} has no merged profile yet: run the profiling build first")
            if row.state == "building":
                raise OperationError(f"{name} is already building")
            row.build_due = True
            row.next_build_at = 0.0
        self._forced.add(name)
        self.maybe_start_build()

    def _start_build(self, name: str) -> None:
        package = self.config.packages[name]
        with self.sessions() as session:
            row = session.get(Package, name)
            profile_path, generation = Path(row.profile_path), row.profile_generation
            stage, command = stages.next_build(package, row)
        try:
            snapshot = nixstore.add_file(profile_path, f"pgo-{name}-{generation}.profdata")
            self._roots.add_profile(name, snapshot)
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
            row.maturity_wait = None
            row.raw_bytes = 0  # counters restart: they measure data since this build started
            row.files = 0
            build_id, log_path = build.id, Path(build.log_path)
        self._forced.discard(name)
        if name in self.queue:
            self.queue.remove(name)
        self.waiting = None
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
                self._roots.add(name, result.out_path, root)
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
        self._roots.remove(name, candidate, "candidate")
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
        index_stage_build(self.attributor, name, result.out_path)
        log.info("stage.context_sensitive", package=name, build=result.out_path, profile=snapshot,
                 seconds=round(result.seconds, 1))
        self._activation.put_stage_build_in_place(name)
        self._emit("package", package=name, event="stage", detail=result.out_path)
        self._emit("counters", package=name)

    def _accept(self, name: str, build_id: int, out_path: str, figures: dict | None) -> None:
        """A final build that passed (or had no) benchmark: it is the package's optimized build."""
        try:
            self._roots.add(name, out_path, "optimized")
        except nixstore.NixError as err:
            with self.sessions.begin() as session:
                build = session.get(Build, build_id)
                build.finished_at, build.status, build.error = time.time(), "failed", f"GC root: {err}"
                self._record_failure(session.get(Package, name), build.error)
            self._emit("package", package=name, event="failed", detail=f"GC root: {err}")
            return
        self._roots.remove(name, out_path, "candidate")
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
            self._activation.activate_accepted(name)
        self._emit("counters", package=name)

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
            # Its maturity starts over with the next profile (schedule/maturity.py).
            row.checkpoint_key, row.step_changed, row.settled_steps, row.maturity_wait = "", None, 0, None
            if row.state in ("failed", "stale"):
                row.state = "profiling"
        log.info("package.reset", package=name)
        self._emit("counters", package=name)
