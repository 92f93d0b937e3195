"""The intake step of the engine's cycle: from spool names to rows, a claim batch at a time.

    names (events, scan steps, deferrals) ──offer──▶ FairIntake (per owner uid)
    ──take (a claim batch, a light user's few first)──▶ not yet? (young, unfinished, a folder)
    ──claim──▶ staging ──ingest (one transaction)──▶ rows (parts pending), born-done copies gone

`IntakeCycle` holds what intake keeps between cycles: the spool scan under way (a step of
SCAN_STEP entries per cycle, so a huge spool holds nothing up), the names deferred until their
writer is probably done, each uid's pending files (from the database), and whether intake waits
for room. It runs on the engine's thread and is driven by it (pgod.daemon.engine): the engine
decides when to claim, when to merge, and when to redo start-up while the disk is short of room;
this class only does the intake's part. Its collaborators are handed in: the merger's `keep`
and `make_room` (as callables, no import: merging is a layer above), the history to tell of
born-done rows, the engine's `emit` for listeners and its count of names still queued.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import fsync_dir, move_if_present, unlink_if_present
from pgod.intake.attribution import Attributor
from pgod.intake.claim import Claimer
from pgod.intake.fair import LIGHT_USER_FILES, NAMES_PER_UID, UNKNOWN_UID, FairIntake
from pgod.intake.ingest import REJECTIONS_LOGGED_PER_BATCH, Ingestor
from pgod.intake.live import LiveRuns, is_live_name, is_writer_temp
from pgod.intake.profraw import ProfrawError, parse_profraw
from pgod.intake.room import Shortage, shortage
from pgod.intake.sparse import too_sparse
from pgod.intake.spool import Arrival
from pgod.intake.squatting import (
    EMPTY_FILE_GRACE_SECONDS,
    OWNER_RECHECK_SECONDS,
    owners_process,
    settle_left,
    squat_candidate,
    squatter,
)
from pgod.state.db import Package, SpoolFile
from pgod.state.failpoints import failpoint
from pgod.state.history import History
from pgod.state.layout import Layout, prune_oldest

log = structlog.get_logger(__name__)

CLAIM_BATCH = 2000  # spool names claimed per cycle: bounds memory on a large backlog
SCAN_STEP = 5000  # spool entries a scan looks at per cycle, so a huge spool holds nothing up
YOUNG_FILE_SECONDS = 5.0  # at start, a file this fresh may still be open by its writer
ARRIVAL_SETTLE_SECONDS = 60.0  # how long an entry that never sees a close event may settle
DISK_RETRY_SECONDS = 5.0  # while the disk is full, look again for room this often

Entry = tuple[str, bool, os.stat_result]  # a name to claim, found by a scan rather than an event, its lstat


class IntakeCycle:
    """Spool names in, rows out: the engine's intake; see the module docstring."""

    def __init__(
        self, config: Config, layout: Layout, sessions: sessionmaker[Session], attributor: Attributor,
        history: History, *, keep: Callable, make_room: Callable[[int], None], emit: Callable[..., None],
        queued: Callable[[], int],
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self._history = history
        self._make_room = make_room
        self._emit = emit
        self._queued = queued  # spool names the engine has yet to hand over, for spool_backlog
        self._claimer = Claimer(layout.spool, layout.incoming)
        self._ingestor = Ingestor(
            layout, attributor, config.max_file_bytes, keep=keep, make_room=make_room,
            max_counter=config.max_counter, accept_uids=config.accept_uids,
        )
        self._spool = os.fsdecode(layout.spool)
        self._incoming = os.fsdecode(layout.incoming)
        self._deferred: dict[str, float] = {}  # spool name → when to look at it again
        self._scan_remaining = 0
        self._scan: Iterator[os.DirEntry] | None = None  # a spool scan under way, a step per cycle
        self._fair = FairIntake(self._spool)  # names waiting, per owner uid
        self._report: list[dict] = []  # its report, made on the engine thread for the others
        # Staging may live inside the spool (see state/layout.py): never claim our own folder.
        self._own_name = layout.staging.name if layout.staging.parent == layout.spool else None
        # While intake waits for room: {"state": "full" or "low", "detail": why, …figures}.
        self._disk: dict | None = None
        # Programs that keep running: their names are read every live_interval_s, never claimed.
        self.live = LiveRuns(config, layout, sessions, attributor, ingest=self._record_live, refuse=self._refuse_live)

    # ---- for status (any thread) ---------------------------------------------------------
    @property
    def disk(self) -> dict:
        """{"state": "ok"}; "full" with what failed, or "low" (less free than the margin,
        room.py) with what intake waits for, while intake waits for room."""
        return self._disk or {"state": "ok"}

    @property
    def spool_backlog(self) -> int:
        return self._scan_remaining + self._queued() + len(self._deferred) + len(self._fair)

    @property
    def report(self) -> list[dict]:
        """The uids with names waiting or files pending, and the bounds they are at, as of the
        end of the last cycle."""
        return self._report

    # ---- the cycle (engine thread) -------------------------------------------------------
    def offer(self, names: list[str]) -> None:
        """Queue the names that came this cycle under their owners, and a step of a scan."""
        self._fair.offer(self._exit_files(names))
        self._scan_step()

    def _exit_files(self, names: list[str]) -> list[str]:
        """The names to claim; live names go to the live runs, a live writer's temp files (renamed
        over a live name once whole) are nobody's to take."""
        live = [name for name in names if is_live_name(name)]
        if live:
            self.live.follow(live)
            names = [name for name in names if not is_live_name(name)]
        return [name for name in names if not is_writer_temp(name)]

    def poll_live(self) -> None:
        """Read the live runs that are due and record what grew (intake/live.py)."""
        self.live.poll()

    def _record_live(self, staged: list[tuple[str, str]], extra: Callable[[Session], None]) -> None:
        if staged:
            self._ingest_staged(staged, extra=extra)
            self.count_pending()
        else:
            with self.sessions.begin() as session:
                extra(session)

    def _refuse_live(self, names: list[str]) -> None:
        """Live names that are no live writer's file: claimed like any file, which checks them
        and refuses what is no raw profile, with the reason."""
        entries = []
        for name in names:
            try:
                entries.append((name, False, os.lstat(f"{self._spool}/{name}")))
            except FileNotFoundError:
                continue
        self.claim(entries)

    def take(self) -> tuple[list[Entry], list[Entry]]:
        """A claim batch from every uid's queue in turn, split by few_first."""
        return few_first(self._fair.take(CLAIM_BATCH))

    def light_user_waiting(self) -> bool:
        return self._fair.light_user_waiting()

    def cycle_done(self) -> None:
        self._report = self._fair.report()
        self._fair.cycle_done()

    def next_deadline(self) -> float | None:
        """The monotonic time intake has something to do without an event: a deferred name's,
        or now while a scan is under way or names wait."""
        deadlines = list(self._deferred.values())
        if (live_at := self.live.next_deadline()) is not None:
            deadlines.append(live_at)
        if self._scan is not None or self._fair.waiting():
            deadlines.append(time.monotonic())  # more to claim now: no waiting for an event
        return min(deadlines, default=None)

    def due(self, now: float) -> list[str]:
        """The deferred names whose wait is over (no longer deferred)."""
        names = [name for name, when in self._deferred.items() if when <= now]
        for name in names:
            del self._deferred[name]
        return names

    def scan_spool(self) -> None:
        """Look at the whole spool (at start, after lost events, after dropped names): a step of
        SCAN_STEP entries per cycle, each queued under its owner like any other name."""
        if self._scan is not None:
            self._fair.rescan_owed = True  # this one may have passed names already: another after
            return
        own = self._own_name
        with os.scandir(self.layout.spool) as scan:
            self._scan_remaining = sum(1 for entry in scan if entry.name != own)
        log.info("spool.scan", backlog=self._scan_remaining)
        self._fair.rescan_started()
        self._scan = os.scandir(self.layout.spool)

    def _scan_step(self) -> None:
        if self._scan is None:
            if self._fair.rescan_owed and len(self._fair) < NAMES_PER_UID // 2:
                self.scan_spool()  # names were dropped: now that the queues have room
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
        self._fair.offer(self._exit_files(names), at_start=True)
        self._scan_remaining = max(0, self._scan_remaining - len(names))  # queued: counted as waiting
        self._emit("backlog", remaining=self.spool_backlog)

    def count_pending(self) -> None:
        """Each uid's files claimed but not yet merged, from the database (the intake's bounds)."""
        with self.sessions() as session:
            rows = session.execute(
                select(SpoolFile.owner_uid, func.count(SpoolFile.id), func.coalesce(func.sum(SpoolFile.size), 0))
                .where(SpoolFile.done.is_(False))
                .group_by(SpoolFile.owner_uid)
            ).all()
        self._fair.pending = {(UNKNOWN_UID if uid is None else uid): (files, size) for uid, files, size in rows}

    # ---- room ----------------------------------------------------------------------------
    @property
    def waits_for_room(self) -> bool:
        return self._disk is not None

    def short_of_room(self) -> Shortage | None:
        """Where free space is below the margin (room.py), or None: the copies, rows and
        profiles intake makes must not fill the disk for everyone else."""
        return shortage((self.layout.staging, self.layout.state), self.config.keep_free_bytes)

    def wait_for_room(self, state: str, detail: str, **figures) -> None:
        """Intake waits for room ("full": a step failed for it; "low": less free than the
        margin); the engine looks again every DISK_RETRY_SECONDS. Logged when the state changes,
        not at each retry: status carries the latest figures."""
        if self._disk is None or self._disk["state"] != state:
            log.warning(f"disk.{state}", detail=detail, retry_every=DISK_RETRY_SECONDS)
        self._disk = {"state": state, "detail": detail, **figures}

    def room_again(self) -> None:
        if self._disk is not None:
            log.info("disk.room_again", was=self._disk["detail"])
            self._disk = None

    # ---- claim and ingest ----------------------------------------------------------------
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
                _clear_squatted_folder(self._spool, name)
            return 0.0
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        held = owners_process(name, info.st_uid) if info.st_size == 0 else None  # one look in /proc
        if held:
            # Its program still runs (however long: a service's file waits for its exit write,
            # whose close event brings it back), and is looked at again now and then in case
            # that process is not its writer (squatting.OWNER_RECHECK_SECONDS).
            return OWNER_RECHECK_SECONDS
        if info.st_size == 0 and time.time() - info.st_mtime < EMPTY_FILE_GRACE_SECONDS:
            if held is None:
                # Not a name the runtime gives (or /proc cannot tell): a program may still be
                # writing it; its close event brings it back.
                return 0.0
            # It names no running process of its owner: someone took the name before the
            # program that will get that pid, so it is claimed (refused as squatted-name) and
            # that program can write its own. Unless it is filled meanwhile: a forked child's or
            # another pid namespace's exit write looks the same for a moment (squatting.py).
            return settle_left(info) or None
        if info.st_size > 0 and isinstance(name, Arrival) and not _parses_whole(
            path, self.config.max_file_bytes, self._make_room
        ):
            # Linked in, or written without a close yet: if it is a complete profile it is
            # done; if not, give its writer time, then take it whatever it holds.
            return ARRIVAL_SETTLE_SECONDS
        if at_start and (age := time.time() - info.st_mtime) < YOUNG_FILE_SECONDS:
            # Found by the scan, not by a close event: its writer may not be done. Its close
            # event, or this deadline, brings it back.
            return YOUNG_FILE_SECONDS - age
        return None

    def claim(self, names: list[Entry]) -> None:
        """Claim and record spool names: (name, found by a scan rather than an event, lstat).
        The engine has checked for room first."""
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
            self.count_pending()

    def reingest(self, staged: list[tuple[str, str]]) -> None:
        """Examine staging files again that were claimed but never recorded (recovery)."""
        for start in range(0, len(staged), CLAIM_BATCH):
            self._ingest_staged(staged[start : start + CLAIM_BATCH])

    def _ingest_staged(
        self, staged: list[tuple[str, str]], squatted: set[str] = frozenset(), extra: Callable[[Session], None] | None = None,
    ) -> None:
        """Record claimed files (staging name, spool name): one transaction for the batch.
        `squatted`: spool names that were empty and named for a pid no process of their owner
        has (squatting.squatter), refused as squatted-name rather than merely empty. `extra`
        runs in the same transaction (a live run's baseline moves with its growth's rows)."""
        if not staged:
            return
        fsync_dir(self.layout.incoming)  # the renames must be durable before rows name them
        failpoint("after-claim")
        with self.sessions.begin() as session:
            report = self._ingestor.ingest(session, staged, squatted)
            if extra is not None:
                extra(session)
            now = time.time()
            for name in report.parts_pending:
                session.execute(update(Package).where(Package.name == name).values(last_activity=now))
        failpoint("after-ingest-commit")
        self.room_again()
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


def few_first(taken: list[Entry]) -> tuple[list, list]:
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


def _clear_squatted_folder(spool: str, name: str) -> None:
    """Free a program's file name taken by a folder: removed if empty, else renamed aside
    within the spool (a rename in place needs no right over the folder itself)."""
    path = f"{spool}/{name}"
    try:
        os.rmdir(path)
        log.warning("spool.squatted_name_freed", name=name, how="removed the empty folder")
        return
    except OSError:
        pass
    aside = f"{spool}/.pgod-aside-{secrets.token_hex(8)}"
    try:
        os.rename(path, aside)
        log.warning("spool.squatted_name_freed", name=name, how=f"moved the folder to {os.path.basename(aside)}")
    except OSError as err:
        log.warning("spool.squatted_name_kept", name=name, error=err.strerror)


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
