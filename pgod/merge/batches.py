"""Which merges are due, and the llvm-profdata runs that fold pending raw parts into profiles.

Runs on the engine thread. The parts waiting for each package are merged in batches, one run
at a time (each may use a core), a trickle of files grouped so each run is worth its start-up.
A run (MergeJob) merges a batch into generation N+1 from generation N on a thread of its own;
its outcome comes back to the engine (MergeDone) and is committed by commit.py, the one
transaction that counts a raw profile. A batch that fails as a whole is narrowed down by halves
when its inputs caused it (a crash, a limit, a timeout: confined.py), until each culprit fails
alone and is quarantined with the reason, and the rest is merged; a package never waits behind
one file. A batch that fails because of the environment (disk full, missing tool) is retried
later with a growing delay, and nothing in it is counted. The bytes ingest checked come from
checked.py, and are read again only when not kept there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.durable import unlink_if_present
from pgod.merge.checked import CheckedBytes
from pgod.merge.commit import MergeCommitter
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
from pgod.state.db import Package, Part, SpoolFile
from pgod.state.layout import Layout

log = structlog.get_logger(__name__)

MERGE_BATCH = 5000  # raw parts per llvm-profdata call
MERGE_BATCH_BYTES = 64 << 20  # and their bytes, read into memory for it (confined.py), its limits scaled to them
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
    """Schedules the merges: which packages are due, their next batch, the run in flight, the
    halves still to merge, the retries; hands a finished run to the commit (MergeCommitter) and
    takes the bytes ingest checked from CheckedBytes, handed in by the engine."""

    def __init__(
        self,
        config: Config,
        layout: Layout,
        sessions: sessionmaker[Session],
        profdata: dict[str, str],
        emit: Callable[..., None],
        sandbox: MergeSandbox,
        post: Callable[[object], None],
        checked: CheckedBytes,
    ) -> None:
        self.config = config
        self.layout = layout
        self.sessions = sessions
        self.checked = checked  # the bytes ingest checked (and keeps there), for the merges
        self.committer = MergeCommitter(layout, sessions, emit)
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
        if unkept := [p.size for p in parts if p.path not in self.checked]:
            self.checked.make_room(max(unkept), spare={p.path for p in parts})  # each is read again, one at a time
        gathered = gather_inputs([MergeInput(p.path, p.size, p.digest) for p in parts], self.checked.held, kind)
        for part in parts:
            self.checked.forget(part.path)
        self._job = MergeJob(name, parts, generation, base, output, more)
        self._job.start(self._profdata[name], gathered, self._sandbox, self._post)

    def on_merge_done(self, done: MergeDone) -> None:
        """A run ended (engine thread): have what it did committed, or narrow down its culprits.

        When the inputs made the run fail, each half is merged on its own, down to single
        parts, which are quarantined with the failure's reason: the halves keep the id order,
        so every commit still counts exactly the package's pending parts up to its last id."""
        job, outcome = done.job, done.outcome
        self._job = None
        name, parts = job.package, job.parts
        failure = outcome.failure
        if not self.committer.is_current(job):  # reset while it ran: its parts are still pending, for the new profile
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
            self.committer.commit(job, outcome)
            if name in self._segments:
                pass  # more halves to merge first
            elif job.more:
                self._ready.appendleft(name)  # a full batch, or the last half: more may wait
            else:
                self._forced.discard(name)
        self._start_next()

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


def _within_bytes(parts: list, limit: int) -> list:
    """The longest prefix of ``parts`` within ``limit`` bytes, and at least the first part."""
    total = 0
    for count, part in enumerate(parts):
        total += part.size
        if total > limit and count:
            return parts[:count]
    return parts
