"""The one worker that changes state: claim, ingest, merge, count, in that order.

Watcher threads, D-Bus calls, builds and merges only enqueue; this thread does every state
change, so there is no locking around the database or the staging folders. The slow parts (an
llvm-profdata run, a build) run on threads of their own and post their outcome back, so the
engine goes on claiming and answering while they run. Its cycle:

    names from the spool ──claim──▶ staging ──ingest──▶ rows (parts pending)
    pending parts ──merge (one llvm-profdata per package batch, on a thread of its own)──▶
    MergeDone ──commit──▶ new profile generation ──▶ delete what the commit made redundant
    ──▶ tell listeners

The commit is the moment a raw profile is counted. Every file operation before it can be
redone; every one after it is a clean-up that recovery finishes if the daemon dies first.
"""

from __future__ import annotations

import os
import queue
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import fsync_dir, is_disk_full, move_if_present, unlink_if_present
from pgod.intake.attribution import Attributor
from pgod.intake.claim import Claimer
from pgod.intake.fair import LIGHT_USER_FILES, NAMES_PER_UID, UNKNOWN_UID, FairIntake
from pgod.intake.ingest import REJECTIONS_LOGGED_PER_BATCH, Ingestor
from pgod.intake.profraw import ProfrawError, parse_profraw
from pgod.intake.room import Shortage, shortage
from pgod.intake.sparse import too_sparse
from pgod.intake.spool import Arrival
from pgod.intake.squatting import EMPTY_FILE_GRACE_SECONDS, settle_left, squat_candidate, squatter
from pgod.manifest import resolve_profdata
from pgod.merge.confined import MergeSandbox
from pgod.merge.merger import MergeDone, ProfileMerger
from pgod.optimize.activation import Activation
from pgod.optimize.adoption import Adoption
from pgod.optimize.builds import BuildProgressed, BuildResult
from pgod.optimize.gate import GateResult
from pgod.optimize.gcroots import GCRoots
from pgod.optimize.optimizer import Optimizer
from pgod.osthread import name_os_thread
from pgod.state.db import Package, SpoolFile
from pgod.state.failpoints import failpoint
from pgod.state.history import History
from pgod.state.layout import Layout, prune_oldest
from pgod.state.recovery import recover

log = structlog.get_logger(__name__)

CLAIM_BATCH = 2000  # spool names claimed per cycle: bounds memory on a large backlog
SCAN_STEP = 5000  # spool entries a scan looks at per cycle, so a huge spool holds nothing up
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
YOUNG_FILE_SECONDS = 5.0  # at start, a file this fresh may still be open by its writer
ARRIVAL_SETTLE_SECONDS = 60.0  # how long an entry that never sees a close event may settle
RETRY_BASE_SECONDS = 5.0  # after an unexpected failure, redo start-up this much later
DISK_RETRY_SECONDS = 5.0  # while the disk is full, look again for room this often

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
            list[str] | Rescan | BuildResult | BuildProgressed | GateResult | MergeDone | Command | None
        ] = queue.SimpleQueue()
        self._names_queued = 0  # spool names in the queue, for spool_backlog
        self._names_lock = threading.Lock()
        self._names_dropped = False  # the watcher dropped names: a Rescan is queued
        self._claimer = Claimer(layout.spool, layout.incoming)
        self._spool = os.fsdecode(layout.spool)
        self._incoming = os.fsdecode(layout.incoming)
        profdata = {
            name: resolve_profdata(package, attributor.builds.get(name)) for name, package in config.packages.items()
        }
        self.merger = ProfileMerger(config, layout, sessions, profdata, self._emit, sandbox, self._queue.put)
        self._ingestor = Ingestor(
            layout, attributor, config.max_file_bytes, keep=self.merger.remember, make_room=self.merger.make_room,
            max_counter=config.max_counter, accept_uids=config.accept_uids,
        )
        self._deferred: dict[str, float] = {}  # spool name → when to look at it again
        self._scan_remaining = 0
        self._scan: Iterator[os.DirEntry] | None = None  # a spool scan under way, a step per cycle
        self._intake = FairIntake(os.fsdecode(layout.spool))  # names waiting, per owner uid
        self._intake_report: list[dict] = []  # its report, made on this thread for the others
        # Staging may live inside the spool (see staging.py): never claim our own folder.
        self._own_name = layout.staging.name if layout.staging.parent == layout.spool else None
        self._restart_at: float | None = None  # set when a step failed: redo start-up then
        self._names_at = float("-inf")  # monotonic time spool names last came
        self._thread: threading.Thread | None = None
        # While intake waits for room: {"state": "full" or "low", "detail": why, …figures}.
        self._disk: dict | None = None
        roots = GCRoots(layout.state / "gcroots")
        self.activation = Activation(config, sessions, self._emit)
        self.optimizer = Optimizer(
            config, layout, sessions, self._emit, self._queue.put, self.activation, roots, merging=self.merger.busy,
            attributor=attributor, bench_identity=sandbox.identity,
        )
        self.adoption = Adoption(config, self.activation, roots, attributor, in_flight=self.optimizer.in_flight)
        self._history = History(layout, sessions)

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

    @property
    def disk(self) -> dict:
        """For status: {"state": "ok"}; "full" with what failed, or "low" (less free than the
        margin, room.py) with what intake waits for, while intake waits for room."""
        return self._disk or {"state": "ok"}

    @property
    def spool_backlog(self) -> int:
        return self._scan_remaining + self._names_queued + len(self._deferred) + len(self._intake)

    @property
    def intake(self) -> list[dict]:
        """For status (any thread): the uids with names waiting or files pending, and the bounds
        they are at, as of the end of the last cycle."""
        return self._intake_report

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

    def _handle(self, event: Rescan | BuildResult | BuildProgressed | GateResult | MergeDone | Command) -> None:
        if isinstance(event, Rescan):
            with self._names_lock:
                self._names_dropped = False
            self._scan_spool()
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
            self._count_pending()
            return
        try:
            event.future.set_result(event.function(*event.args))
        except Exception as err:  # handed to the caller, who turns it into a D-Bus error
            event.future.set_exception(err)

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
        """The disk is full: nothing is rejected for it. Whatever the failed step did was rolled
        back with its transaction (claimed files stay in staging); intake pauses, and start-up
        (recovery, then a spool scan) is redone every few seconds until there is room. Logged
        when the state changes, not at each retry: status carries the latest figures."""
        if self._disk is None or self._disk["state"] != state:
            log.warning(f"disk.{state}", detail=detail, retry_every=DISK_RETRY_SECONDS)
        self._disk = {"state": state, "detail": detail, **figures}
        self._restart_at = time.monotonic() + DISK_RETRY_SECONDS

    def _short_of_room(self) -> Shortage | None:
        """Where free space is below the margin (room.py), or None: the copies, rows and
        profiles intake makes must not fill the disk for everyone else."""
        return shortage((self.layout.staging, self.layout.state), self.config.keep_free_bytes)

    def _room_again(self) -> None:
        if self._disk is not None:
            log.info("disk.room_again", was=self._disk["detail"])
            self._disk = None

    def _start_up(self) -> None:
        self.sync_packages()
        recover(self.layout, self.sessions, self._reingest)
        self._count_pending()
        self.merger.merge_when_due(force=True)
        self.adoption.finish_start_up()
        self._scan_spool()
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
        for name, when in list(self._deferred.items()):
            if when <= now:
                del self._deferred[name]
                names.setdefault(name, name)
        return list(names.values()), events

    def _next_deadline(self) -> float | None:
        deadlines = list(self._deferred.values())
        if (merge_at := self.merger.next_deadline()) is not None:
            deadlines.append(merge_at)
        if self._restart_at is not None:
            deadlines.append(self._restart_at)
        if (prune_at := self._history.next_deadline()) is not None:
            deadlines.append(prune_at)
        if self._scan is not None or self._intake.waiting():
            deadlines.append(time.monotonic())  # more to claim now: no waiting for an event
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
            if self._restart_at is None and self._short_of_room() is None:
                self._room_again()
        self._intake.offer(names)
        self._scan_step()
        few, many = few_first(self._intake.take(CLAIM_BATCH))
        if few and many:
            # Another user's few files beside a flood's many: recorded in a transaction of their
            # own, and their merge started, before the flood's batch is worked through.
            self._ingest_names(few)
            self.merger.merge_when_due(light=True)
        self._ingest_names(many or few)
        # Another user's few files beside a flood are merged without waiting to gather more.
        self.merger.merge_when_due(quiet=self._spool_quiet(), light=self._intake.light_user_waiting())
        self.optimizer.maybe_start_build()
        self._history.prune_if_due()
        self._intake_report = self._intake.report()
        self._intake.cycle_done()

    def _scan_spool(self) -> None:
        """Look at the whole spool (at start, after lost events, after dropped names): a step of
        SCAN_STEP entries per cycle, each queued under its owner like any other name."""
        if self._scan is not None:
            self._intake.rescan_owed = True  # this one may have passed names already: another after
            return
        own = self._own_name
        with os.scandir(self.layout.spool) as scan:
            self._scan_remaining = sum(1 for entry in scan if entry.name != own)
        log.info("spool.scan", backlog=self._scan_remaining)
        self._intake.rescan_started()
        self._scan = os.scandir(self.layout.spool)

    def _scan_step(self) -> None:
        if self._scan is None:
            if self._intake.rescan_owed and len(self._intake) < NAMES_PER_UID // 2:
                self._scan_spool()  # names were dropped: now that the queues have room
            return
        names = []
        for entry in self._scan:
            if entry.name != self._own_name:
                names.append(entry.name)
            if len(names) >= SCAN_STEP:
                break
        else:
            self._scan.close()
            self._scan = None
        self._intake.offer(names, at_start=True)
        self._scan_remaining = max(0, self._scan_remaining - len(names))  # queued: counted as waiting
        self._emit("backlog", remaining=self.spool_backlog)

    def _count_pending(self) -> None:
        """Each uid's files claimed but not yet merged, from the database (the intake's bounds)."""
        with self.sessions() as session:
            rows = session.execute(
                select(SpoolFile.owner_uid, func.count(SpoolFile.id), func.coalesce(func.sum(SpoolFile.size), 0))
                .where(SpoolFile.done.is_(False))
                .group_by(SpoolFile.owner_uid)
            ).all()
        self._intake.pending = {(UNKNOWN_UID if uid is None else uid): (files, size) for uid, files, size in rows}

    # ---- ingest --------------------------------------------------------------------------
    def _not_yet(self, name: str, at_start: bool, info: os.stat_result) -> float | None:
        """Seconds to wait before claiming a spool entry that is probably still being written;
        0 to leave it alone altogether (an event will bring it back), None to claim it now.

        `info` is the entry's lstat from when the intake last saw the name (every sighting, by an
        event or a scan, refreshes it), and the claim checks the file again itself, so an old
        lstat can only make the entry wait, never let a wrong file through."""
        path = f"{self._spool}/{name}"
        if stat.S_ISDIR(info.st_mode):
            # Never claimed: a folder cannot hold a profile, and moving another user's folder
            # needs a right the service does not keep (its ".." would change). One squatting a
            # program's file name is put out of its way, though.
            if squatter(name, info.st_uid):
                self._clear_squatted_folder(name)
            return 0.0
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        if info.st_size == 0 and time.time() - info.st_mtime < EMPTY_FILE_GRACE_SECONDS:
            if not squatter(name, info.st_uid):
                # A program still running; its exit write closes the file again and brings it
                # back.
                return 0.0
            # It names no running process of its owner: someone took the name before the
            # program that will get that pid, so it is claimed (refused as squatted-name) and
            # that program can write its own. Unless it is filled meanwhile: a forked child's or
            # another pid namespace's exit write looks the same for a moment (squatting.py).
            return settle_left(info) or None
        if info.st_size > 0 and isinstance(name, Arrival) and not _parses_whole(
            path, self.config.max_file_bytes, self.merger.make_room
        ):
            # Linked in, or written without a close yet: if it is a complete profile it is
            # done; if not, give its writer time, then take it whatever it holds.
            return ARRIVAL_SETTLE_SECONDS
        if at_start and (age := time.time() - info.st_mtime) < YOUNG_FILE_SECONDS:
            # Found by the scan, not by a close event: its writer may not be done. Its close
            # event, or this deadline, brings it back.
            return YOUNG_FILE_SECONDS - age
        return None

    def _clear_squatted_folder(self, name: str) -> None:
        """Free a program's file name taken by a folder: removed if empty, else renamed aside
        within the spool (a rename in place needs no right over the folder itself)."""
        path = f"{self._spool}/{name}"
        try:
            os.rmdir(path)
            log.warning("spool.squatted_name_freed", name=name, how="removed the empty folder")
            return
        except OSError:
            pass
        aside = f"{self._spool}/.pgod-aside-{secrets.token_hex(8)}"
        try:
            os.rename(path, aside)
            log.warning("spool.squatted_name_freed", name=name, how=f"moved the folder to {os.path.basename(aside)}")
        except OSError as err:
            log.warning("spool.squatted_name_kept", name=name, error=err.strerror)

    def _ingest_names(self, names: list[tuple[str, bool, os.stat_result]]) -> None:
        """Claim and record spool names: (name, found by a scan rather than an event, lstat)."""
        if self._disk is not None and self._restart_at is not None:
            return  # waiting for room: left in the spool, the scan of the next start-up takes them
        if (low := self._short_of_room()) is not None:
            self._wait_for_room("low", low.detail(), **low.document())
            return
        staged = []
        squatted: set[str] = set()  # empty files made ahead of the program their name is for
        for name, at_start, info in names:
            if "/" in name or name in (".", "..", self._own_name):
                continue
            self._deferred.pop(name, None)
            wait = self._not_yet(name, at_start, info)
            if wait is not None:
                if wait > 0:
                    self._deferred[str(name)] = time.monotonic() + wait
                continue
            staging_name = self._claimer.claim(name)
            if staging_name is not None:
                staged.append((staging_name, str(name)))
                if info.st_size == 0 and squat_candidate(name, info):  # as _not_yet judged it
                    squatted.add(str(name))
        self._ingest_staged(staged, squatted)
        if names:
            # The intake counted every name it handed out as pending; only the claimed ones
            # are (a young file waits, a vanished one is gone): the database says which.
            self._count_pending()

    def _reingest(self, staged: list[tuple[str, str]]) -> None:
        """Examine staging files again that were claimed but never recorded."""
        for start in range(0, len(staged), CLAIM_BATCH):
            self._ingest_staged(staged[start : start + CLAIM_BATCH])

    def _ingest_staged(self, staged: list[tuple[str, str]], squatted: set[str] = frozenset()) -> None:
        """Record claimed files (staging name, spool name): one transaction for the batch.
        `squatted`: spool names that were empty and named for a pid no process of their owner
        has (squatting.squatter), refused as squatted-name rather than merely empty."""
        if not staged:
            return
        fsync_dir(self.layout.incoming)  # the renames must be durable before rows name them
        failpoint("after-claim")
        with self.sessions.begin() as session:
            report = self._ingestor.ingest(session, staged, squatted)
            now = time.time()
            for name in report.parts_pending:
                session.execute(update(Package).where(Package.name == name).values(last_activity=now))
        failpoint("after-ingest-commit")
        self._room_again()
        # Rows for entirely-unattributed files are born done; their staging copies can go, or,
        # a whole file that is one unattributed profile, be the copy kept to look at: a rename,
        # where writing a copy cost a flood of such files a file creation each (a crash before
        # the move leaves it in staging, where recovery deletes it, as any born-done file's).
        incoming = self._incoming
        for staging_name in report.born_done:
            unlink_if_present(f"{incoming}/{staging_name}")
        keep = self.config.unattributed_max_files
        for moves in (report.to_quarantine, report.to_unattributed):
            # Past the number kept, the oldest would be pruned right after: deleted where they are.
            excess = max(0, len(moves) - keep)
            for staging_name, _target in moves[:excess]:
                unlink_if_present(f"{incoming}/{staging_name}")
            for staging_name, target in moves[excess:]:
                move_if_present(f"{incoming}/{staging_name}", target)
        if report.born_done or report.to_unattributed or report.quarantined:
            self._history.owe()
        if report.unattributed:
            prune_oldest(self.layout.unattributed, self.config.unattributed_max_files, self.config.kept_max_bytes)
        if report.quarantined:
            prune_oldest(self.layout.quarantine, self.config.unattributed_max_files, self.config.kept_max_bytes)
        log.info(
            "spool.ingested",
            files=report.files,
            pending=report.parts_pending,
            unattributed=report.unattributed,
            quarantined=len(report.quarantined),
        )
        # A FileRejected signal (and a StatusChanged) each, as many as are logged one by one: a
        # flood of junk once made a signal storm of every file, and the main loop sending it
        # answered GetStatus in up to 2.7 s. The rest are in status's counts and pgoctl show.
        for original_name, reason in report.quarantined[:REJECTIONS_LOGGED_PER_BATCH]:
            self._emit("quarantined", file=original_name, reason=reason, package="")

    # ---- start-up ------------------------------------------------------------------------
    def sync_packages(self) -> None:
        """Make the packages table agree with the configuration (thresholds may have changed)."""
        with self.sessions.begin() as session:
            for name, package in self.config.packages.items():
                row = session.get(Package, name)
                if row is None:
                    row = Package(name=name, state="profiling", raw_bytes=0, files=0, total_raw_bytes=0,
                                  total_files=0, quarantined=0, build_due=False, profile_generation=0, active=False)
                    session.add(row)
                self.adoption.adopt(session, row)  # sets the threshold of the package's stage
                if not row.build_due and row.raw_bytes >= row.threshold_bytes and row.files > 0:
                    row.build_due = True

    # ---- events --------------------------------------------------------------------------
    def _emit(self, kind: str, **data) -> None:
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:  # a listener's bug must not stop the engine
                log.exception("engine.listener_failed", kind=kind)


def few_first(taken: list[tuple[str, bool, os.stat_result]]) -> tuple[list, list]:
    """A claim batch split in two: the entries of uids with fewer than LIGHT_USER_FILES in it,
    when another uid has at least that many (else none), and the rest."""
    counts: dict[int, int] = {}
    for _name, _at_start, info in taken:
        counts[info.st_uid] = counts.get(info.st_uid, 0) + 1
    if not counts or max(counts.values()) < LIGHT_USER_FILES:
        return [], taken
    light = {uid for uid, count in counts.items() if count < LIGHT_USER_FILES}
    if not light:
        return [], taken
    return [e for e in taken if e[2].st_uid in light], [e for e in taken if e[2].st_uid not in light]


def _parses_whole(path: str, max_bytes: int, make_room: Callable[[int], None]) -> bool:
    """Is the spool file, as it is now, one or more complete raw profiles? A readiness hint
    only: the claimed copy is checked again from scratch (a file too large or too sparse to read
    is let through at once, for the claim to refuse). ``make_room``: as ingest's, before reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # let the claim find out and say why
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes or too_sparse(fd, info) is not None:
            return True
        make_room(info.st_size)
        parse_profraw(os.read(fd, info.st_size))
        return True
    except ProfrawError:
        return False
    finally:
        os.close(fd)


