"""The one worker that changes state: claim, ingest, merge, count, in that order.

Watcher threads, D-Bus calls, builds and merges only enqueue; this thread does every state
change, so there is no locking around the database or the staging folders. The slow parts (an
llvm-profdata run, a build) run on threads of their own and post their outcome back, so the
engine goes on claiming and answering while they run. Its cycle (the intake step, from spool
names to rows, is pgod.intake.cycle's IntakeCycle, which the engine drives):

    names from the spool ──claim──▶ staging ──ingest──▶ rows (parts pending)
    pending parts ──merge (one llvm-profdata per package batch, on a thread of its own)──▶
    MergeDone ──commit──▶ new profile generation ──▶ delete what the commit made redundant
    ──▶ tell listeners

The commit is the moment a raw profile is counted. Every file operation before it can be
redone; every one after it is a clean-up that recovery finishes if the daemon dies first.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import is_disk_full
from pgod.intake.attribution import Attributor
from pgod.intake.cycle import CLAIM_BATCH, DISK_RETRY_SECONDS, Entry, IntakeCycle
from pgod.intake.spool import Arrival
from pgod.manifest import resolve_profdata
from pgod.merge.batches import MergeDone, ProfileMerger
from pgod.merge.checked import CheckedBytes
from pgod.merge.confined import MergeSandbox
from pgod.optimize.activation import Activation
from pgod.optimize.adoption import Adoption
from pgod.optimize.builds import BuildProgressed, BuildResult
from pgod.optimize.gate import GateResult
from pgod.optimize.gcroots import GCRoots
from pgod.optimize.optimizer import Optimizer
from pgod.osthread import name_os_thread
from pgod.schedule.maturity import CheckpointDone, Maturity, apply_decisions
from pgod.state.db import Package
from pgod.state.history import History
from pgod.state.layout import Layout
from pgod.state.recovery import recover

log = structlog.get_logger(__name__)

# Names the watcher may queue for the engine; past that they are dropped and the spool is
# scanned again instead (a flood costs a rescan, not memory).
MAX_QUEUED_NAMES = 50_000
# Once a spool name arrives, gather the names that follow until the spool is quiet this long
# (or GATHER_MAX_SECONDS pass, or CLAIM_BATCH names wait). A burst of exits then costs one
# cycle (a transaction, a few fsyncs) instead of one per file, and the claims (renames out of
# the spool) no longer contend with the writers for the spool folder's lock, which the kernel
# spins on: measured, that contention alone could cost 0.2 s of CPU per 2,000 files.
GATHER_QUIET_SECONDS = 0.05
GATHER_MAX_SECONDS = 1.0
RETRY_BASE_SECONDS = 5.0  # after an unexpected failure, redo start-up this much later

Listener = Callable[[str, dict], None]


class Rescan:
    """Events were lost (inotify queue overflow): look at the whole spool again."""


@dataclass
class Command:
    """Work asked of the engine by another thread (a D-Bus method), with its answer."""

    function: Callable
    args: tuple
    future: Future


class Engine:
    """Owns the state-changing work of the daemon; see the module docstring."""

    def __init__(
        self, config: Config, layout: Layout, sessions: sessionmaker[Session], attributor: Attributor, sandbox: MergeSandbox
    ) -> None:
        self.config = config
        self.started_up = False  # the start-up (recovery, upgrades, first scan) is over; status says so
        self.layout = layout
        self.sessions = sessions
        self.attributor = attributor
        self.listeners: list[Listener] = []
        self._queue: queue.SimpleQueue[
            list[str] | Rescan | BuildResult | BuildProgressed | GateResult | MergeDone | CheckpointDone | Command | None
        ] = queue.SimpleQueue()
        self._names_queued = 0  # spool names in the queue, for the intake's spool_backlog
        self._names_lock = threading.Lock()
        self._names_dropped = False  # the watcher dropped names: a Rescan is queued
        profdata = {
            name: resolve_profdata(package, attributor.builds.get(name)) for name, package in config.packages.items()
        }
        # The bytes ingest checked, kept for their merge: one budget that both make room in.
        checked = CheckedBytes()
        self.merger = ProfileMerger(config, layout, sessions, profdata, self._emit, sandbox, self._queue.put, checked)
        self._history = History(layout, sessions)
        # Spool names to rows; D-Bus reads its status (backlog, disk, per-uid report) from it.
        self.intake = IntakeCycle(
            config, layout, sessions, attributor, self._history, keep=checked.remember,
            make_room=checked.make_room, emit=self._emit, queued=lambda: self._names_queued,
        )
        self._restart_at: float | None = None  # set when a step failed: redo start-up then
        self._names_at = float("-inf")  # monotonic time spool names last came
        self._thread: threading.Thread | None = None
        roots = GCRoots(layout.state / "gcroots")
        self.activation = Activation(config, sessions, self._emit)
        self.optimizer = Optimizer(
            config, layout, sessions, self._emit, self._queue.put, self.activation, roots, merging=self.merger.busy,
            attributor=attributor, bench_identity=sandbox.identity,
        )
        self.adoption = Adoption(config, self.activation, roots, attributor, in_flight=self.optimizer.in_flight)
        # How settled each profile is, measured at checkpoints on a thread; decides when a
        # package past its threshold is due (schedule/maturity.py).
        self.maturity = Maturity(config, layout, sessions, profdata, sandbox.identity, self._queue.put, self._emit)

    # ---- called from other threads -------------------------------------------------------
    def submit(self, names: list[str]) -> None:
        """Spool entries that may be ready (watcher thread). Past MAX_QUEUED_NAMES they are
        dropped and one rescan queued: the files are in the spool, the scan finds them."""
        with self._names_lock:
            if self._names_queued + len(names) > MAX_QUEUED_NAMES:
                if self._names_dropped:
                    return
                self._names_dropped = True
                log.warning("spool.names_dropped", queued=self._names_queued, hint="the spool will be scanned instead")
                self._queue.put(Rescan())
                return
            self._names_queued += len(names)
        self._queue.put(names)

    def rescan(self) -> None:
        """Spool events were lost: scan the whole spool (watcher thread)."""
        self._queue.put(Rescan())

    def stop(self) -> None:
        self._queue.put(None)

    def command(self, function: Callable, *args) -> Future:
        """Run ``function(*args)`` on the engine thread; its result (or error) comes in the Future."""
        future: Future = Future()
        self._queue.put(Command(function, args, future))
        return future

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgod-engine", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        name_os_thread()
        self._guarded(self._start_up)
        while True:
            work = self._next_work()
            if work is None:
                if self.optimizer.running is not None:
                    self.optimizer.running.cancel()
                if self.optimizer.gating is not None:
                    self.optimizer.gating.cancel()
                log.info("engine.stopped")
                return
            names, events = work
            for event in events:
                self._guarded(self._handle, event)
            self._guarded(self._cycle, names)

    def rebuild(self, name: str) -> None:
        """`pgoctl rebuild` (engine thread): fold in what is waiting, then build."""
        self.merger.merge_when_due(force=True)
        self.optimizer.request_build(name)

    def _handle(self, event: Rescan | BuildResult | BuildProgressed | GateResult | MergeDone | CheckpointDone | Command) -> None:
        if isinstance(event, Rescan):
            with self._names_lock:
                self._names_dropped = False
            self.intake.scan_spool()
            return
        if isinstance(event, BuildResult):
            self.optimizer.on_build_done(event)
            return
        if isinstance(event, GateResult):
            self.optimizer.on_gate_done(event)
            return
        if isinstance(event, BuildProgressed):
            self.optimizer.on_build_progress(event)
            return
        if isinstance(event, MergeDone):
            self.merger.on_merge_done(event)
            self._history.owe()
            self.intake.count_pending()
            self._decided(self.maturity.decide())
            return
        if isinstance(event, CheckpointDone):
            self._decided(self.maturity.on_checkpoint_done(event))
            self.maturity.checkpoint_when_due()
            return
        try:
            event.future.set_result(event.function(*event.args))
        except Exception as err:  # handed to the caller, who turns it into a D-Bus error
            event.future.set_exception(err)

    def _decided(self, changed: list[str]) -> None:
        """Packages whose build became due, or whose reason to wait changed: status reads them
        afresh (the build itself starts at the cycle's maybe_start_build)."""
        for name in changed:
            self._emit("counters", package=name)

    def _guarded(self, step, *args) -> None:
        """The one boundary of the worker: an unexpected failure (database, disk) is logged and
        start-up is redone a little later. Whatever the failed step touched is still in the
        spool or in staging, so nothing is lost, and recovery settles it."""
        try:
            step(*args)
        except Exception as err:
            if is_disk_full(err):
                self._wait_for_room("full", f"{step.__name__}: {err}")
                return
            log.exception("engine.step_failed", step=step.__name__, retry_in=RETRY_BASE_SECONDS)
            self._restart_at = time.monotonic() + RETRY_BASE_SECONDS

    def _wait_for_room(self, state: str, detail: str, **figures) -> None:
        """The disk is full (or short of the margin): nothing is rejected for it. Whatever the
        failed step did was rolled back with its transaction (claimed files stay in staging);
        intake pauses, and start-up (recovery, then a spool scan) is redone every few seconds
        until there is room."""
        self.intake.wait_for_room(state, detail, **figures)
        self._restart_at = time.monotonic() + DISK_RETRY_SECONDS

    def _claim(self, names: list[Entry]) -> None:
        """Claim and record spool names, unless intake waits for room."""
        if self.intake.waits_for_room and self._restart_at is not None:
            return  # waiting for room: left in the spool, the scan of the next start-up takes them
        if (low := self.intake.short_of_room()) is not None:
            self._wait_for_room("low", low.detail(), **low.document())
            return
        self.intake.claim(names)

    def _start_up(self) -> None:
        self.sync_packages()
        recover(self.layout, self.sessions, self.intake.reingest)
        self.intake.count_pending()
        self.merger.merge_when_due(force=True)
        self.adoption.finish_start_up()
        self.maturity.checkpoint_when_due()
        self.intake.live.start_up()
        self.intake.scan_spool()
        self.optimizer.maybe_start_build()
        self.started_up = True
        self._emit("started")  # what status read before this (no package rows yet) is out of date

    def _next_work(self) -> tuple[list[str], list] | None:
        """Block until work arrives (or a deadline passes); then gather what follows (see
        GATHER_QUIET_SECONDS), so that one cycle takes a whole burst.

        Returns spool names (each once: a file seen appearing, then closed, is simply ready)
        and other events (build results, commands), or None to stop."""
        names: dict[str, str] = {}
        events: list = []
        try:
            item = self._queue.get(timeout=self._next_deadline())
        except queue.Empty:
            item = []
        gather_until = time.monotonic() + GATHER_MAX_SECONDS if isinstance(item, list) and item else None
        while True:
            if item is None:
                return None
            if isinstance(item, list):
                with self._names_lock:
                    self._names_queued -= len(item)
                for name in item:
                    if name not in names or not isinstance(name, Arrival):
                        names[str(name)] = name  # a close event outranks an Arrival
            else:
                events.append(item)
                if not isinstance(item, BuildProgressed):  # progress can wait for the burst's end
                    gather_until = None  # a command or build result: answer it now
            if len(names) >= CLAIM_BATCH:
                # Enough for a claim batch: stop waiting, but take every name already queued,
                # so all of them reach the per-uid intake this cycle. Left in this queue, which
                # knows no owners, a flood's names would fill it, and its overflow drops every
                # user's names (another user's then waited for a rescan of the whole spool).
                gather_until = None
                if len(names) >= MAX_QUEUED_NAMES:
                    break
            try:
                if gather_until is None:
                    item = self._queue.get_nowait()
                else:
                    wait = min(GATHER_QUIET_SECONDS, gather_until - time.monotonic())
                    if wait <= 0:
                        break
                    item = self._queue.get(timeout=wait)
            except queue.Empty:
                break
        now = time.monotonic()
        if names:
            self._names_at = now
        for name in self.intake.due(now):
            names.setdefault(name, name)
        return list(names.values()), events

    def _next_deadline(self) -> float | None:
        deadlines = []
        if (intake_at := self.intake.next_deadline()) is not None:
            deadlines.append(intake_at)
        if (merge_at := self.merger.next_deadline()) is not None:
            deadlines.append(merge_at)
        if self._restart_at is not None:
            deadlines.append(self._restart_at)
        if (prune_at := self._history.next_deadline()) is not None:
            deadlines.append(prune_at)
        build_at = self.optimizer.next_deadline()
        if build_at is not None:
            deadlines.append(time.monotonic() + max(0.0, build_at - time.time()))
        quiet_at = self._names_at + GATHER_QUIET_SECONDS
        if self.merger.parts_waiting and quiet_at > time.monotonic():
            deadlines.append(quiet_at)  # the burst may end then: see _spool_quiet
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _spool_quiet(self) -> bool:
        """Has the burst ended: no spool name waiting, none for GATHER_QUIET_SECONDS?"""
        return self._queue.empty() and time.monotonic() - self._names_at >= GATHER_QUIET_SECONDS

    def _cycle(self, names: list[str]) -> None:
        if self._restart_at is not None and time.monotonic() >= self._restart_at:
            self._restart_at = None
            self._start_up()
            # Start-up went through: room again, unless free space is still below the margin
            # (then the state stays as it is, and the claim step below says "low" if it was
            # "full"): a state that did not change is not logged again every retry.
            if self._restart_at is None and self.intake.short_of_room() is None:
                self.intake.room_again()
        self.intake.offer(names)
        few, many = self.intake.take()
        if few and many:
            # Another user's few files beside a flood's many: recorded in a transaction of their
            # own, and their merge started, before the flood's batch is worked through.
            self._claim(few)
            self.merger.merge_when_due(light=True)
        self._claim(many or few)
        if not self.intake.waits_for_room:
            self.intake.poll_live()
        # Another user's few files beside a flood are merged without waiting to gather more.
        self.merger.merge_when_due(quiet=self._spool_quiet(), light=self.intake.light_user_waiting())
        self.optimizer.maybe_start_build()
        self._history.prune_if_due()
        self.intake.cycle_done()

    # ---- start-up ------------------------------------------------------------------------
    def sync_packages(self) -> None:
        """Make the packages table agree with the configuration (thresholds may have changed), and
        decide again which packages are due (schedule/maturity.py)."""
        with self.sessions.begin() as session:
            for name, package in self.config.packages.items():
                row = session.get(Package, name)
                if row is None:
                    row = Package(name=name, state="profiling", raw_bytes=0, files=0, total_raw_bytes=0,
                                  total_files=0, quarantined=0, build_due=False, profile_generation=0, active=False)
                    session.add(row)
                self.adoption.adopt(session, row)  # sets the threshold of the package's stage
            session.flush()
            apply_decisions(session, self.config)  # a threshold may have changed

    # ---- events --------------------------------------------------------------------------
    def _emit(self, kind: str, **data) -> None:
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:  # a listener's bug must not stop the engine
                log.exception("engine.listener_failed", kind=kind)

