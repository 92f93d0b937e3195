"""Fold pending raw parts into each package's profile, one generation per llvm-profdata call.

Runs on the engine thread. A batch is merged into generation N+1 from generation N; one
transaction then records the new generation, the counters and the parts as merged (the moment
they are counted); only after it are the raw files deleted and generation N removed. A batch
that fails as a whole is narrowed down by halves when its inputs caused it (a crash, a limit,
a timeout: merge.py), until each culprit fails alone and is quarantined with the reason, and the
rest is merged; a package never waits behind one file. A batch that fails because of the
environment (disk full, missing tool) is retried later with a growing delay, and nothing in it
is counted.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import unlink_if_present
from pgod.merge.confined import (
    DISK_FULL,
    Gathered,
    MergeFailure,
    MergeInput,
    MergeOutcome,
    MergeSandbox,
    gather_inputs,
    instrumentation_family,
    merge_batch,
)
from pgod.optimize import stages
from pgod.osthread import name_os_thread
from pgod.state.db import Merge, Package, Part, Quarantine, SpoolFile, among
from pgod.state.failpoints import failpoint
from pgod.state.history import add_contributions, add_tallies
from pgod.state.layout import Layout
from pgod.state.recovery import finish_files

log = structlog.get_logger(__name__)

MERGE_BATCH = 5000  # raw parts per llvm-profdata call
# Raw-profile bytes pgod holds in memory at once: those ingest checked and keeps for their merge,
# and the one file or part being read (make_room). With the per-file cap at most this, the
# daemon's RSS stays about this much above its idle size, whatever the spool holds.
CHECKED_CACHE_BYTES = 64 << 20
MERGE_BATCH_BYTES = 64 << 20  # and their bytes, read into memory for it (merge.py), its limits scaled to them
# Every llvm-profdata call costs ~26 ms of CPU just to start, so a trickle of files is merged
# in groups: at once when this many parts wait, else when the first has waited this long.
MERGE_MIN_PARTS = MERGE_BATCH
MERGE_DELAY_SECONDS = 1.0
# ...or at once when a burst has ended (the spool went quiet) and left this many.
MERGE_BURST_PARTS = 100
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0


@dataclass
class MergeJob:
    """One llvm-profdata run, on a thread of its own: the engine goes on claiming, ingesting and
    answering while it runs, and commits its outcome when it is posted back (MergeDone)."""

    package: str
    parts: list  # the package's pending parts it merges, a prefix by id
    generation: int
    base: Path | None
    output: Path
    more: bool  # more pending parts may wait behind these (a full batch, or a half)

    def start(self, profdata: str, gathered: Gathered, sandbox: MergeSandbox, post: Callable[[object], None]) -> None:
        def run() -> None:
            name_os_thread()
            try:
                outcome = merge_batch(profdata, self.base, gathered, self.output, sandbox)
            except Exception as err:  # the thread's boundary: the engine must hear back
                log.exception("profile.merge_crashed", package=self.package)
                outcome = MergeOutcome(False, failure=MergeFailure("merge-io", f"{type(err).__name__}: {err}", False))
            post(MergeDone(self, outcome))

        threading.Thread(target=run, name=f"pgod-merge-{self.package}"[:15], daemon=True).start()


@dataclass(frozen=True)
class MergeDone:
    """A finished run, for the engine's queue."""

    job: MergeJob
    outcome: MergeOutcome


class ProfileMerger:
    def __init__(
        self,
        config: Config,
        layout: Layout,
        sessions: sessionmaker[Session],
        profdata: dict[str, str],
        emit: Callable[..., None],
        sandbox: MergeSandbox,
        post: Callable[[object], None],
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self._profdata = profdata  # package → the llvm-profdata matching its compiler
        self._sandbox = sandbox
        self._post = post  # hands a finished run to the engine thread
        self._emit = emit
        self._retry: dict[str, tuple[float, float]] = {}  # package → (when, current delay)
        self._merge_at: float | None = None  # when the parts now waiting get merged
        self._job: MergeJob | None = None  # the llvm-profdata run in flight
        self._ready: deque[str] = deque()  # packages due for a batch, in turn
        self._segments: dict[str, deque[list]] = {}  # package → halves still to merge, in id order
        self._forced: set[str] = set()  # packages whose waiting parts a build must wait for
        self._checked: dict[str, bytes] = {}  # part path → the bytes ingest checked (see remember)
        self._checked_bytes = 0

    @property
    def parts_waiting(self) -> bool:
        """Are parts waiting to be merged (as of the last look)?"""
        return self._merge_at is not None

    def next_deadline(self) -> float | None:
        """Monotonic time of the next merge (waiting parts, or a batch retry), if any."""
        times = [when for when, _ in self._retry.values()] + [self._merge_at]
        return min((t for t in times if t is not None), default=None)

    def merge_when_due(self, force: bool = False, quiet: bool = False, light: bool = False) -> None:
        """Merge waiting parts if enough wait, or the first has waited long enough, or a burst
        has just ended (``quiet``: no spool file arrived for a moment), or ``force``, or ``light``:
        another user's few files wait beside a flood (intake.light_user_waiting), merged now
        whatever their number (a flood of files never merged, unattributed or junk, leaves them
        alone in the batch, below a burst's 100 parts, and the spool is never quiet meanwhile)."""
        now = time.monotonic()
        with self.sessions() as session:
            waiting = dict(
                session.execute(select(Part.package, func.count(Part.id)).where(Part.status == "pending").group_by(Part.package))
                .tuples()
                .all()
            )
        ready = {
            name: count
            for name, count in waiting.items()
            if name in self.config.packages and self._retry.get(name, (0.0, 0.0))[0] <= now
        }
        if not ready:
            self._merge_at = None
            return
        if self._merge_at is None:
            self._merge_at = now + MERGE_DELAY_SECONDS
        waiting_parts = sum(ready.values())
        burst_over = quiet and waiting_parts >= MERGE_BURST_PARTS
        if force or light or waiting_parts >= MERGE_MIN_PARTS or burst_over or now >= self._merge_at:
            self._merge_at = None
            if force:
                self._forced.update(ready)
            self._ready.extend(name for name in ready if name not in self._ready)
        self._start_next()

    def busy(self, name: str) -> bool:
        """Is a merge of ``name`` running or owed before its next build may take the profile?"""
        return (self._job is not None and self._job.package == name) or bool(self._segments.get(name)) or name in self._forced

    def _start_next(self) -> None:
        """Start the next llvm-profdata run, if none is running: a bisection step first, else a
        new batch of the next package that is due (one run at a time: each may use a core)."""
        while self._job is None and (self._segments or self._ready):
            if self._segments:
                name = next(iter(self._segments))
                parts, more = self._segments[name].popleft(), True
                if not self._segments[name]:
                    del self._segments[name]
            else:
                name = self._ready.popleft()
                if self._retry.get(name, (0.0, 0.0))[0] > time.monotonic():
                    continue  # backing off after a failure: merge_when_due brings it back
                parts, more = self._next_batch(name)
            if parts:
                self._start_job(name, parts, more)
            else:
                self._forced.discard(name)

    def _next_batch(self, name: str) -> tuple[list, bool]:
        """The package's first pending parts by id, within the batch's count and bytes, and
        whether more may wait behind them. Each carries its file's owner uid, for the users'
        shares the merge's commit records (history.add_contributions), and the name its program
        wrote, which a culprit is quarantined under (pgod's staging name means nothing to anyone)."""
        with self.sessions() as session:
            parts = session.execute(
                select(Part.id, Part.path, Part.size, Part.file_id, Part.digest, Part.part_index,
                       SpoolFile.owner_uid, SpoolFile.original_name)
                .outerjoin(SpoolFile, SpoolFile.id == Part.file_id)
                .where(Part.package == name, Part.status == "pending")
                .order_by(Part.id)
                .limit(MERGE_BATCH)
            ).all()
        batch = _within_bytes(parts, MERGE_BATCH_BYTES)
        return batch, len(parts) == MERGE_BATCH or len(batch) < len(parts)

    def _start_job(self, name: str, parts: list, more: bool) -> None:
        with self.sessions() as session:
            package = session.get(Package, name)
            generation = package.profile_generation + 1
            base = Path(package.profile_path) if package.profile_path else None
        directory = self.layout.package_profiles(name)
        directory.mkdir(mode=0o700, exist_ok=True)
        output = directory / f"{generation:08d}.profdata"
        unlink_if_present(output)  # a generation never committed (recovery removes these too)
        kind = instrumentation_family(package.profile_kind) if package.profile_kind else None
        if kind == "ir" and package.stage == stages.CONTEXT_SENSITIVE:
            kind = "cs-ir"  # the stage's own profiles only (optimizer._enter_context_sensitive)
        if unkept := [p.size for p in parts if p.path not in self._checked]:
            self.make_room(max(unkept), spare={p.path for p in parts})  # each is read again, one at a time
        gathered = gather_inputs([MergeInput(p.path, p.size, p.digest) for p in parts], self._checked, kind)
        for part in parts:
            self._forget(part.path)
        self._job = MergeJob(name, parts, generation, base, output, more)
        self._job.start(self._profdata[name], gathered, self._sandbox, self._post)

    def remember(self, path: str, data: bytes) -> None:
        """Keep the bytes ingest just checked for the merge of their part (engine thread), so
        it need not read and hash them again; within CHECKED_CACHE_BYTES, else they are read."""
        if self._checked_bytes + len(data) <= CHECKED_CACHE_BYTES:
            self._forget(path)
            self._checked[path] = data
            self._checked_bytes += len(data)

    def make_room(self, size: int, spare: Collection[str] = ()) -> None:
        """Drop kept bytes, oldest first (those in ``spare`` last), until ``size`` more bytes fit
        beside them within CHECKED_CACHE_BYTES (engine thread). Called before any whole file or
        part is read into memory, so what pgod holds of raw profiles stays within that budget,
        whatever the spool holds; a dropped part is read again for its merge and matched to its
        digest, as after a restart."""
        if self._checked_bytes + size <= CHECKED_CACHE_BYTES:
            return
        order = [path for path in self._checked if path not in spare] + [path for path in self._checked if path in spare]
        for path in order:
            self._forget(path)
            if self._checked_bytes + size <= CHECKED_CACHE_BYTES:
                return

    def _forget(self, path: str) -> None:
        data = self._checked.pop(path, None)
        if data is not None:
            self._checked_bytes -= len(data)

    def on_merge_done(self, done: MergeDone) -> None:
        """A run ended (engine thread): commit what it did, or narrow down its culprits.

        When the inputs made the run fail, each half is merged on its own, down to single
        parts, which are quarantined with the failure's reason: the halves keep the id order,
        so every commit still counts exactly the package's pending parts up to its last id."""
        job, outcome = done.job, done.outcome
        self._job = None
        name, parts = job.package, job.parts
        with self.sessions() as session:
            package = session.get(Package, name)
            current = Path(package.profile_path) if package.profile_path else None
            moved_on = package.profile_generation + 1 != job.generation or current != job.base
        failure = outcome.failure
        if moved_on:  # reset while it ran: its parts are still pending, for the new profile
            log.info("profile.merge_discarded", package=name, parts=len(parts))
            unlink_if_present(job.output)
            self._segments.pop(name, None)
        elif failure is not None and not failure.inputs_at_fault:
            self._merge_failed(name, failure.detail, soon=failure.reason == DISK_FULL)
            unlink_if_present(job.output)
            self._segments.pop(name, None)
            self._forced.discard(name)
        elif failure is not None and len(parts) > 1:
            log.warning("profile.merge_narrowing", package=name, parts=len(parts), reason=failure.reason, detail=failure.detail[:300])
            half = len(parts) // 2
            self._segments.setdefault(name, deque()).extendleft([parts[half:], parts[:half]])
        else:
            if failure is not None:  # this one part alone makes llvm-profdata fail
                outcome = MergeOutcome(False, rejected={parts[0].path: (failure.reason, failure.detail)})
            self._retry.pop(name, None)
            failpoint("after-merge")
            self._commit_merge(name, parts, outcome, job.generation, job.output, job.base)
            if name in self._segments:
                pass  # more halves to merge first
            elif job.more:
                self._ready.appendleft(name)  # a full batch, or the last half: more may wait
            else:
                self._forced.discard(name)
        self._start_next()

    def _commit_merge(self, name, parts, outcome, generation: int, output: Path, base: Path | None) -> None:
        rejected = [p for p in parts if p.path in outcome.rejected] if outcome.rejected else []
        merged = [p for p in parts if p.path not in outcome.rejected] if outcome.rejected else list(parts)
        merged_bytes = sum(p.size for p in merged)
        now = time.time()
        crossed = False
        with self.sessions.begin() as session:
            package = session.get(Package, name)
            if rejected:
                session.execute(update(Part).where(among(Part.id, [p.id for p in rejected])).values(status="quarantined"))
                session.add_all(
                    Quarantine(
                        original_name=self._culprit_name(p),
                        package=name,
                        owner_uid=p.owner_uid,
                        size=p.size,
                        reason=outcome.rejected[p.path][0],
                        detail=outcome.rejected[p.path][1],
                        path=str(self.layout.quarantine / Path(p.path).name),
                        at=now,
                    )
                    for p in rejected
                )
                package.quarantined += len(rejected)
                add_tallies(session, rejected_files=len(rejected), rejected_bytes=sum(p.size for p in rejected))
            advanced = outcome.merged and bool(merged)
            if advanced:
                merge = Merge(
                    package=name,
                    generation=generation,
                    files=len(merged),
                    bytes=merged_bytes,
                    seconds=outcome.seconds,
                    at=now,
                )
                session.add(merge)
                session.flush()
                # The batch was the package's first pending parts by id: those left pending up
                # to the last one (the rejected ones are marked above) are the merged ones.
                session.execute(
                    update(Part)
                    .where(Part.package == name, Part.status == "pending", Part.id <= parts[-1].id)
                    .values(status="merged", merge_id=merge.id)
                )
                add_contributions(session, name, _shares_by_uid(merged))
                package.profile_generation = generation
                package.profile_path = str(output)
                package.raw_bytes += merged_bytes
                package.files += len(merged)
                package.total_raw_bytes += merged_bytes
                package.total_files += len(merged)
                package.last_activity = now
                if not package.build_due and package.raw_bytes >= package.threshold_bytes:
                    package.build_due = True
                    crossed = True
            done_names = self._mark_done(session, {p.file_id for p in parts})
            snapshot = dict(raw_bytes=package.raw_bytes, files=package.files, state=package.state)
        # After the commit: the clean-ups recovery would otherwise finish; no query needed here.
        failpoint("after-merge-commit")
        settled = [(p.path, "quarantined") for p in rejected]
        settled += [(p.path, "merged") for p in (merged if advanced else [])]
        finish_files(self.layout, settled, done_names)
        if advanced and base is not None and base != output:
            unlink_if_present(base)
        elif not advanced:
            unlink_if_present(output)
        log.info(
            "profile.merged",
            package=name,
            generation=generation if advanced else generation - 1,
            files=len(merged),
            bytes=merged_bytes,
            rejected=len(rejected),
            seconds=round(outcome.seconds, 3),
        )
        for part in rejected:
            reason, detail = outcome.rejected[part.path]
            shown = self._culprit_name(part)
            log.warning("profile.rejected", package=name, file=shown, staged=Path(part.path).name, uid=part.owner_uid,
                        reason=reason, detail=detail)
            self._emit("quarantined", file=shown, reason=reason, package=name)
        self._emit("counters", package=name, **snapshot)
        if crossed:
            log.info("package.threshold_reached", package=name, raw_bytes=snapshot["raw_bytes"])
            self._emit("threshold", package=name, raw_bytes=snapshot["raw_bytes"])

    def _culprit_name(self, part) -> str:
        """The spool name a rejected part came in as; a part split out of a file with several
        profiles (an executable's and its libraries') says which one. A row without the file's
        name (its file row pruned, which no pending part allows) keeps the staging name."""
        if part.original_name is None:
            return Path(part.path).name
        if os.path.dirname(part.path) == os.fsdecode(self.layout.parts):
            return f"{part.original_name} (part {part.part_index + 1})"
        return part.original_name

    @staticmethod
    def _mark_done(session: Session, file_ids: set[int]) -> list[str]:
        """Mark done the files none of whose parts wait any more; returns their staging names."""
        # NOT IN over one list of the pending parts' files, not a correlated NOT EXISTS: for
        # that SQLite picks the status index and scans every pending part once per file.
        still_pending = select(Part.file_id).where(Part.status == "pending", among(Part.file_id, file_ids))
        return list(
            session.scalars(
                update(SpoolFile)
                .where(among(SpoolFile.id, file_ids), SpoolFile.id.not_in(still_pending))
                .values(done=True)
                .returning(SpoolFile.staging_name)
            ).all()
        )

    def _merge_failed(self, name: str, error: str, soon: bool = False) -> None:
        """Retry later, with a growing delay; ``soon`` (a full disk, which passes by itself):
        every few seconds, so the work resumes by itself when there is room."""
        _when, delay = self._retry.get(name, (0.0, RETRY_BASE_SECONDS / 2))
        delay = RETRY_BASE_SECONDS if soon else min(delay * 2, RETRY_MAX_SECONDS)
        self._retry[name] = (time.monotonic() + delay, delay)
        log.error("profile.merge_failed", package=name, error=error, retry_in=delay)
        with self.sessions.begin() as session:
            session.execute(update(Package).where(Package.name == name).values(last_error=f"merge: {error}"))
        self._emit("error", package=name, message=error)


def _shares_by_uid(parts: list) -> dict[int, tuple[int, int]]:
    """(parts, bytes) of a merged batch per owner uid of their files (-1: not known)."""
    shares: dict[int, tuple[int, int]] = {}
    for part in parts:
        uid = -1 if part.owner_uid is None else part.owner_uid
        files, size = shares.get(uid, (0, 0))
        shares[uid] = (files + 1, size + part.size)
    return shares


def _within_bytes(parts: list, limit: int) -> list:
    """The longest prefix of ``parts`` within ``limit`` bytes, and at least the first part."""
    total = 0
    for count, part in enumerate(parts):
        total += part.size
        if total > limit and count:
            return parts[:count]
    return parts
