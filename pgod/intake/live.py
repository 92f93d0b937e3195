"""Live runs: programs that keep running report cumulative snapshots; pgod counts their growth.

The writer side (stdenv-adapters/live/pgod-live.c) and the file protocol are in
docs/design/live-protocol.md. In short: `live-<pid>-<random>.profraw` in the spool always names
a complete cumulative raw profile of one module (or an empty file before the first snapshot),
and the inode it names is held by an OFD write lock for as long as its writer lives. So:

- a live name is never claimed like an exit file (that would take it from its writer, and the
  counts after the claim would be lost); it is *read* every `live_interval_s`;
- locked: a snapshot of a run still going; unlocked while the name still points at the inode
  read: the run ended (exit, exec, SIGKILL, OOM, a crash, a power cut) and this is its last
  snapshot; unlocked but the name moved: a new snapshot came meanwhile, read again;
- what a snapshot gained since the one last counted (growth.py) is written as a raw part of
  pgod's own and recorded, pending, in the same transaction that moves the run's baseline
  (state.db.LiveRun); the merge pipeline counts it exactly once, like any exit file. A stop
  before that transaction leaves the baseline where it was, and recovery deletes the growth
  file (state/recovery.py), so the next poll computes it again; after it, the part is pending.
- after a run's last growth is recorded it is marked ended, then its file is deleted.

When: every run already read at ticks of `live_interval_s`, all together (one batch of reads,
transactions and merges per interval); a run not yet read soon after an event for its name (its
first snapshot renamed in), but not more often than every EVENT_SPACING_SECONDS: a short run is
counted within seconds of its exit (and its file deleted at the next tick), a service once per
interval.

Bounds, per owner uid (the spool is hostile): at most `live_max_runs_per_uid` runs followed
(more names wait, counted in status, until one ends), at most `live_max_mb_per_poll` read per
interval (the rest of that uid's due runs wait for the next), LIVE_STEP_RUNS runs read per engine
cycle (the engine answers between steps). A file larger than max_file_mb, not a regular file,
hard-linked, or locked but never a raw profile of one module for LIVE_UNSTABLE_POLLS polls is
handed to the claim path, which refuses it with its reason as for any other file. An unchanged
live file (same inode, size and mtime) costs an lstat, an open and a lock probe per poll.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import sync_filesystem, unlink_if_present
from pgod.intake.attribution import Attributor
from pgod.intake.growth import growth
from pgod.intake.profraw import ProfrawError, parse_profraw, part_bytes
from pgod.state.db import LiveRun, Package, among
from pgod.state.failpoints import failpoint
from pgod.state.layout import GROWTH_STAGING_PREFIX, Layout

log = structlog.get_logger(__name__)

LIVE_PREFIX = "live-"
LIVE_SUFFIX = ".profraw"
WRITER_TEMP_PREFIX = ".live-"  # the writer's temp files, renamed over the live name when whole
LIVE_STEP_RUNS = 128  # live files read per engine cycle: the engine answers between steps
LIVE_UNSTABLE_POLLS = 3  # a locked file that is no one-module raw profile this often is refused
# An event for a followed name (a snapshot renamed in, the writer's close at exit) makes it due
# this long after its last read at the earliest: a short run's last snapshot and end are taken
# within seconds, and a writer renaming in a loop costs at most a read this often.
EVENT_SPACING_SECONDS = 2.0
# After an event for a run already read, its lock is probed this long after (the writer's rename
# of its last snapshot comes a moment before its exit).
PROBE_DELAY_SECONDS = 0.5
OVER_LIMIT_NAMES = 4096  # names remembered per uid as waiting for a free slot (for status only)
READ_ATTEMPTS = 3  # a name moved while it was read (a new snapshot): read again at once, this often
_F_OFD_GETLK = 36
_FLOCK = struct.Struct("hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
COUNTS_CAP = 1 << 62  # LiveRun.counts is for people: kept inside SQLite's integer range


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


def is_live_name(name: str) -> bool:
    return name.startswith(LIVE_PREFIX) and name.endswith(LIVE_SUFFIX) and "/" not in name


def is_writer_temp(name: str) -> bool:
    return name.startswith(WRITER_TEMP_PREFIX)


def locked(fd: int) -> bool:
    """Does anyone hold a lock on the file open at ``fd`` (F_OFD_GETLK asking for a write lock)?
    OFD locks belong to the open file description: released when its last descriptor closes, at
    exit, SIGKILL or exec (O_CLOEXEC), in any pid namespace."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    l_type = _FLOCK.unpack(fcntl.fcntl(fd, _F_OFD_GETLK, probe))[0]
    return l_type != fcntl.F_UNLCK


@dataclass(frozen=True)
class LiveRead:
    """One look at a live name. state: "live" (locked: a snapshot of a running run), "ended"
    (unlocked, the name still at the inode read: the last snapshot), "moved" (a new snapshot came
    while reading), "gone", or "odd" (not a regular file, hard-linked, or larger than the bound:
    for the claim path to refuse)."""

    state: str
    data: bytes = b""
    info: os.stat_result | None = None


def read_live(spool: str, name: str, max_bytes: int) -> LiveRead:
    """Read a live name by the protocol: see the module docstring. Never mmap (a writer could
    truncate under it), never follow a link, never block on a FIFO."""
    path = f"{spool}/{name}"
    for _ in range(READ_ATTEMPTS):
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return LiveRead("gone")
        if not stat.S_ISREG(before.st_mode) or before.st_nlink != 1 or before.st_size > max_bytes:
            return LiveRead("odd", info=before)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # renamed over between the lstat and the open
        except OSError:
            return LiveRead("odd", info=before)
        try:
            info = os.fstat(fd)
            if (info.st_ino, info.st_dev) != (before.st_ino, before.st_dev):
                continue
            size = min(info.st_size, max_bytes)
            chunks, offset = [], 0
            while offset < size:
                chunk = os.pread(fd, size - offset, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
            held = locked(fd)
        finally:
            os.close(fd)
        if held:
            return LiveRead("live", data, info)
        try:
            after = os.lstat(path)
        except FileNotFoundError:
            return LiveRead("gone")
        if (after.st_ino, after.st_dev) == (info.st_ino, info.st_dev):
            return LiveRead("ended", data, info)
    return LiveRead("moved")


@dataclass
class _Run:
    """What the tracker keeps of a live name between polls (the durable part is its LiveRun row)."""

    name: str
    uid: int
    due: float  # monotonic time of its next read
    last_read: float = float("-inf")  # monotonic time of its last read
    probe_at: float | None = None  # a lock probe owed (an event came): has it ended?
    last_probe: float = float("-inf")
    seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read, unchanged → skipped
    unstable: int = 0  # consecutive reads of a locked file that was no one-module raw profile


@dataclass
class _Taken:
    """A snapshot whose growth is recorded this poll: the staging file and the row's new values."""

    run: _Run
    staging_name: str | None  # None: nothing grew (the baseline may still move, e.g. a new structure)
    baseline: bytes | None  # zlib of the snapshot; None: the baseline stays (older than the one counted)
    package: str | None
    grown_bytes: int
    counts: int
    ended: bool
    info: os.stat_result
    seen: tuple[int, int, int]  # the run's `seen` once this is recorded (not before: a failed
    # transaction must leave the file to be read again)


@dataclass
class LiveStatus:
    """The tracker's figures for status (per package figures come from the database: status.py)."""

    last_poll: float | None = None  # wall-clock time of the last poll that read anything
    followed: int = 0
    over_limit: int = 0
    interval_s: float = 60.0

    def daemon_figures(self) -> dict:
        return {"followed": self.followed, "over_limit": self.over_limit, "last_poll": self.last_poll,
                "interval_s": self.interval_s}


class LiveRuns:
    """Follows the live names of the spool and records their growth (engine thread only).

    Its collaborators are handed in by the intake cycle: ``ingest(staged, extra)`` records staged
    growth files in one transaction and runs ``extra(session)`` in it (the baselines move there),
    ``refuse(names)`` hands names to the claim path."""

    def __init__(
        self, config: Config, layout: Layout, sessions: sessionmaker[Session], attributor: Attributor, *,
        ingest: Callable[[list[tuple[str, str]], Callable[[Session], None]], None], refuse: Callable[[list[str]], None],
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self.attributor = attributor
        self._ingest = ingest
        self._refuse = refuse
        self._spool = os.fsdecode(layout.spool)
        self._incoming = os.fsdecode(layout.incoming)
        self._runs: dict[str, _Run] = {}
        self._per_uid: dict[int, int] = {}
        # uid → names not followed (its limit reached) since the last scan; at most OVER_LIMIT_NAMES
        # each are remembered (the count is for status; the names are looked for again by a scan).
        self._over_limit: dict[int, set[str]] = {}
        self._rescan_owed = False
        self._window_start = float("-inf")  # the current interval's window of per-uid read bytes
        self._spent: dict[int, int] = {}
        self._counter = 0
        self._prefix = f"{GROWTH_STAGING_PREFIX}{time.time_ns():x}"
        self.status = LiveStatus(interval_s=config.live_interval_s)

    # ---- names in ----------------------------------------------------------------------------
    def follow(self, names: list[str]) -> None:
        """Start following live names (from events or a scan); known ones are left as they are."""
        now = time.monotonic()
        limit = self.config.live_max_runs_per_uid
        for name in names:
            if (known := self._runs.get(name)) is not None:
                if known.seen is None:
                    # An event for a run not yet read with a snapshot: its first one came (for a
                    # short program, its last too). Read it soon, not at the next tick, but no
                    # more often than every EVENT_SPACING_SECONDS whatever the writer does: a
                    # short run is counted and ended within seconds of its exit. A run already
                    # read waits for its tick: a service is read once per interval, all of them
                    # together (one transaction, few merges).
                    spacing = min(self.config.live_interval_s, EVENT_SPACING_SECONDS)
                    known.due = min(known.due, max(now, known.last_read + spacing))
                elif known.probe_at is None:
                    # One already read: an event may be its exit (the kernel closes the fd), so a
                    # lock probe soon (not a read: a service's snapshots wait for the tick): an
                    # ended run is then taken at once, not at the next tick.
                    known.probe_at = max(now + PROBE_DELAY_SECONDS, known.last_probe + EVENT_SPACING_SECONDS)
                continue
            try:
                uid = os.lstat(f"{self._spool}/{name}").st_uid
            except OSError:
                continue
            if self._per_uid.get(uid, 0) >= limit:
                waiting = self._over_limit.setdefault(uid, set())
                if len(waiting) < OVER_LIMIT_NAMES:
                    waiting.add(name)
                self._rescan_owed = True
                continue
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
            # A new name is read at once: a run that ended before pgod saw it, or its first
            # snapshot, need not wait a whole interval.
            self._runs[name] = _Run(name, uid, now)
        self.status.followed = len(self._runs)
        self.status.over_limit = sum(map(len, self._over_limit.values()))

    def _drop(self, run: _Run) -> None:
        del self._runs[run.name]
        self._per_uid[run.uid] -= 1
        if not self._per_uid[run.uid]:
            del self._per_uid[run.uid]
        if self._rescan_owed:
            self._rescan_owed = False
            self._over_limit.clear()
            with os.scandir(self._spool) as scan:
                self.follow([entry.name for entry in scan if is_live_name(entry.name)])

    def next_deadline(self) -> float | None:
        return min((min(run.due, run.probe_at or run.due) for run in self._runs.values()), default=None)

    def start_up(self) -> None:
        """Forget rows of runs whose file is gone (ended and deleted, or removed by someone)."""
        with self.sessions.begin() as session:
            names = session.scalars(select(LiveRun.name)).all()
            gone = [name for name in names if not os.path.lexists(f"{self._spool}/{name}")]
            if gone:
                session.execute(delete(LiveRun).where(LiveRun.name.in_(gone)))
        self._refresh_status()

    # ---- the poll ----------------------------------------------------------------------------
    def poll(self) -> None:
        """Read the runs that are due (at most LIVE_STEP_RUNS, uids in turn, each within its
        bytes per poll) and record what grew, in one transaction."""
        now = time.monotonic()
        due = sorted((run for run in self._runs.values() if run.due <= now or self._ended_now(run, now)),
                     key=lambda run: run.due)
        if not due:
            return
        if now - self._window_start >= self.config.live_interval_s:
            self._window_start, self._spent = now, {}
        budget = self._spent  # bytes read per uid in this interval's window
        taken: list[_Taken] = []
        reads: list[tuple[_Run, LiveRead]] = []
        to_refuse: list[str] = []
        finished: list[_Run] = []
        tick = self._next_tick(now)
        for run in _uids_in_turn(due)[:LIVE_STEP_RUNS]:
            run.due = tick
            run.last_read = now
            try:
                before = os.lstat(f"{self._spool}/{run.name}")
            except FileNotFoundError:
                finished.append(run)
                continue
            if run.seen == (before.st_ino, before.st_size, before.st_mtime_ns):
                # Unchanged since the last read; whether it still runs is a lock probe away.
                if self._still_locked(run.name, before):
                    continue
            spent = budget.get(run.uid, 0)
            if spent and spent + before.st_size > self.config.live_max_bytes_per_poll:
                # This uid's bytes for the interval are used up: at the next window, after the others.
                run.due = self._window_start + self.config.live_interval_s
                continue
            budget[run.uid] = spent + before.st_size
            reads.append((run, read_live(self._spool, run.name, self.config.max_file_bytes)))
        # One query for the baselines of every run read with a snapshot (not one a run).
        baselines = self._baselines([run.name for run, read in reads if read.data])
        for run, read in reads:
            outcome = self._take(run, read, baselines.get(run.name), to_refuse, finished)
            if outcome is not None:
                taken.append(outcome)
        self._record(taken)
        for run in finished:
            self._finish(run)
        if to_refuse:
            self._refuse(to_refuse)
        self.status.last_poll = time.time()
        self._refresh_status()

    def _ended_now(self, run: _Run, now: float) -> bool:
        """A probe owed after an event, if due: has the run ended (unlocked)? Then it is read now."""
        if run.probe_at is None or run.probe_at > now:
            return False
        run.probe_at, run.last_probe = None, now
        try:
            before = os.lstat(f"{self._spool}/{run.name}")
        except FileNotFoundError:
            return True
        return not self._still_locked(run.name, before)

    def _next_tick(self, now: float) -> float:
        """The next multiple of live_interval_s (monotonic clock): every run read at a tick is due
        at the next one together, so a poll is one batch of reads, transactions and merges."""
        interval = self.config.live_interval_s
        return (now // interval + 1) * interval

    def _still_locked(self, name: str, before: os.stat_result) -> bool:
        try:
            fd = os.open(f"{self._spool}/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.fstat(fd).st_ino == before.st_ino and locked(fd)
        finally:
            os.close(fd)

    def _take(self, run: _Run, read: LiveRead, baseline: tuple[bytes, str] | None, to_refuse: list[str],
              finished: list[_Run]) -> _Taken | None:
        """What one read gives: a growth to record, a name to refuse, a run ended, or nothing."""
        if read.state == "gone":
            finished.append(run)
            return None
        if read.state == "moved":
            run.due = time.monotonic()  # a new snapshot is there: next cycle
            return None
        if read.state == "odd":
            self._forget(run)
            to_refuse.append(run.name)
            return None
        ended = read.state == "ended"
        if not read.data:
            if ended:  # it ended before its first snapshot: nothing to count
                finished.append(run)
            return None
        try:
            parts = parse_profraw(read.data, max_parts=2)
            if len(parts) != 1:
                raise ProfrawError("live-several-parts", "a live file holds one module's raw profile")
        except ProfrawError as err:
            run.unstable += 1
            if ended or run.unstable >= LIVE_UNSTABLE_POLLS:
                # Not what a live writer publishes: an ordinary file for the claim path, which
                # refuses it (or, several whole parts, takes it as any exit file, once).
                log.warning("live.not_a_snapshot", name=run.name, uid=run.uid, reason=err.reason,
                            detail=str(err)[:200])
                self._forget(run)
                to_refuse.append(run.name)
            return None
        run.unstable = 0
        seen = (read.info.st_ino, read.info.st_size, read.info.st_mtime_ns)
        part = parts[0]
        base, base_boot = baseline if baseline is not None else (None, "")
        base_part = parse_profraw(base)[0] if base is not None else None
        grown = growth(base, base_part, read.data, part)
        if grown.why == "decreased" and base_boot != BOOT_ID:
            # Below what was counted, and written before this boot: a power cut lost the writer's
            # last renames (it never syncs), so the name holds an older snapshot of what was
            # counted. Nothing new in it; counting it as a new run would count it twice.
            log.warning("live.older_than_counted", name=run.name, uid=run.uid,
                        hint="a snapshot older than the one counted, left by a power cut: nothing to count")
            if not ended:
                run.seen = seen
                return None
            return _Taken(run, None, None, None, 0, 0, True, read.info, seen)
        package = self.attributor.package_for(part.binary_ids)
        if grown.data is None and not ended and not grown.new_run:
            run.seen = seen  # nothing grew: the same file is not read again until it changes
            return None
        staging_name = None
        if grown.data is not None:
            staging_name = f"{self._prefix}-{self._counter:06d}"
            self._counter += 1
            path = f"{self._incoming}/{staging_name}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, grown.data)
                # The part is the run owner's, as an exit file is: the per-uid bounds and shares hold.
                try:
                    os.fchown(fd, read.info.st_uid, -1)
                except PermissionError:
                    pass  # no CAP_CHOWN (a daemon run by hand): pgod's own, counted under its uid
            finally:
                os.close(fd)
        return _Taken(run, staging_name, zlib.compress(part_bytes(read.data, part), 1), package,
                      len(grown.data or b""), grown.counts, ended, read.info, seen)

    def _baselines(self, names: list[str]) -> dict[str, tuple[bytes, str]]:
        """name → (the snapshot last counted, the boot it was counted in), for those that have one."""
        if not names:
            return {}
        with self.sessions() as session:
            rows = session.execute(
                select(LiveRun.name, LiveRun.baseline, LiveRun.boot_id).where(among(LiveRun.name, names))
            ).all()
        return {row.name: (zlib.decompress(row.baseline), row.boot_id) for row in rows if row.baseline is not None}

    def _record(self, taken: list[_Taken]) -> None:
        """One transaction: the growth parts pending (through the intake's ingest, which checks
        them as any file) and every run's baseline moved. Then the ended runs' files go."""
        if not taken:
            return
        staged = [(t.staging_name, t.run.name) for t in taken if t.staging_name is not None]
        if staged:
            sync_filesystem(self.layout.incoming)  # the growth files are durable before rows name them
        failpoint("after-live-growth")
        now = time.time()

        def move_baselines(session: Session) -> None:
            names = [t.run.name for t in taken]
            rows = {row.name: row for row in session.scalars(select(LiveRun).where(among(LiveRun.name, names)))}
            grown_by_package: dict[str, tuple[int, int]] = {}
            for t in taken:
                row = rows.get(t.run.name)
                if row is None or row.owner_uid != t.info.st_uid:
                    if row is not None:
                        session.delete(row)
                        session.flush()
                    row = LiveRun(name=t.run.name, owner_uid=t.info.st_uid, first_at=now, snapshots=0,
                                  bytes_counted=0, counts=0, ended=False)
                    session.add(row)
                if t.baseline is not None:  # None: nothing newer than the baseline (it stays)
                    row.baseline = t.baseline
                    row.package = t.package
                    row.boot_id = BOOT_ID
                row.last_at = now
                if t.staging_name is not None:
                    row.snapshots += 1
                    row.bytes_counted += t.grown_bytes
                    row.counts = min(COUNTS_CAP, row.counts + t.counts)
                row.ended = t.ended
                if t.staging_name is not None and t.package is not None:
                    size, count = grown_by_package.get(t.package, (0, 0))
                    grown_by_package[t.package] = (size + t.grown_bytes, count + 1)
            for name, (size, count) in grown_by_package.items():
                session.execute(update(Package).where(Package.name == name).values(
                    live_bytes=Package.live_bytes + size, live_snapshots=Package.live_snapshots + count))

        self._ingest(staged, move_baselines)
        failpoint("after-live-record")
        for t in taken:
            t.run.seen = t.seen
            if t.grown_bytes:
                log.info("live.grew", name=t.run.name, package=t.package, uid=t.run.uid, bytes=t.grown_bytes,
                         counts=t.counts, ended=t.ended)
            if t.ended:
                self._finish(t.run, t.info)

    def _finish(self, run: _Run, info: os.stat_result | None = None) -> None:
        """A run is over and counted: its file goes (if it is still the one read), then its row."""
        path = f"{self._spool}/{run.name}"
        if info is not None:
            try:
                now = os.lstat(path)
                if (now.st_ino, now.st_dev) == (info.st_ino, info.st_dev):
                    unlink_if_present(path)
            except FileNotFoundError:
                pass
        failpoint("after-live-end")
        if not os.path.lexists(path):
            with self.sessions.begin() as session:
                session.execute(delete(LiveRun).where(LiveRun.name == run.name, LiveRun.ended.is_(True)))
        self._forget(run)
        log.info("live.ended", name=run.name, uid=run.uid)

    def _forget(self, run: _Run) -> None:
        if run.name in self._runs:
            self._drop(run)

    def _refresh_status(self) -> None:
        self.status.followed = len(self._runs)
        self.status.over_limit = sum(map(len, self._over_limit.values()))


def _uids_in_turn(runs: list[_Run]) -> list[_Run]:
    """The due runs, one of each uid in turn (a uid with thousands cannot starve another's)."""
    by_uid: dict[int, list[_Run]] = {}
    for run in runs:
        by_uid.setdefault(run.uid, []).append(run)
    ordered: list[_Run] = []
    queues = list(by_uid.values())
    index = 0
    while queues:
        queues = [q for q in queues if len(q) > index]
        ordered.extend(q[index] for q in queues)
        index += 1
    return ordered
