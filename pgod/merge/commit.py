"""The commit of a finished merge: the one transaction that counts a raw profile.

Exactly once (DESIGN.md, "Exactly once", steps 3 to 5), in brief:

- A run merged the package's first pending parts by id (a batch, or a half of one: the halves
  keep the id order) from generation N into generation N+1, a new file, fsynced. Nothing is
  counted yet: a stop here leaves N current, recovery deletes N+1, and the parts are merged again.
- Its outcome is committed only if N is still the package's profile (``is_current``): after a
  reset while it ran, its output is dropped and its parts stay pending, for the new profile.
- One transaction (``commit``) marks the rejected parts quarantined and every other pending part
  of the package up to the batch's last id merged (by the first point, exactly the batch's other
  parts: later arrivals have higher ids), and records generation N+1, the counters, the users'
  shares, the tallies and the files none of whose parts wait any more. Before it nothing of the
  batch is counted; after it all of it is, and a merged part is never pending again.
- Only then are the merged raw files deleted, the rejected ones moved to quarantine and
  generation N removed (recovery.finish_files); after a stop in between, the database says what
  is due and recovery at start does it again (each step is safe to repeat).

The failpoints "after-merge" and "after-merge-commit" (and "mid-cleanup" in finish_files) stop
the daemon at these seams for tests/test_exactly_once.py. Engine thread only, and one run at a
time (batches.py), so no two commits interleave.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from pgod.durable import unlink_if_present
from pgod.merge.confined import MergeOutcome
from pgod.state.db import Merge, Package, Part, Quarantine, SpoolFile, among
from pgod.state.failpoints import failpoint
from pgod.state.history import add_contributions, add_tallies
from pgod.state.layout import GROWTH_STAGING_PREFIX, Layout
from pgod.state.recovery import finish_files

if TYPE_CHECKING:
    from pgod.merge.batches import MergeJob

log = structlog.get_logger(__name__)


class MergeCommitter:
    """Counts what a finished run merged, quarantines what it rejected, and tells the engine."""

    def __init__(self, layout: Layout, sessions: sessionmaker[Session], emit: Callable[..., None]) -> None:
        self.layout = layout
        self.sessions = sessions
        self._emit = emit

    def is_current(self, job: MergeJob) -> bool:
        """Is the run's base still the package's profile, and its generation the next one? Not
        after a reset while it ran: then its output means nothing and its parts stay pending."""
        with self.sessions() as session:
            package = session.get(Package, job.package)
            current = Path(package.profile_path) if package.profile_path else None
            return package.profile_generation + 1 == job.generation and current == job.base

    def commit(self, job: MergeJob, outcome: MergeOutcome) -> None:
        """Count the run's merged parts and quarantine its rejected ones in one transaction,
        then finish the files it made due and tell the engine (see the module's docstring)."""
        failpoint("after-merge")
        name, parts, generation, output, base = job.package, job.parts, job.generation, job.output, job.base
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
                    live_bytes=sum(p.size for p in merged if os.path.basename(p.path).startswith(GROWTH_STAGING_PREFIX)),
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
                # The threshold is the floor; whether a build is due is the schedule's decision
                # (schedule/maturity.py), which the engine makes after this commit.
                crossed = package.raw_bytes - merged_bytes < package.threshold_bytes <= package.raw_bytes
            done_names = _mark_done(session, {p.file_id for p in parts})
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


def _shares_by_uid(parts: list) -> dict[int, tuple[int, int]]:
    """(parts, bytes) of a merged batch per owner uid of their files (-1: not known)."""
    shares: dict[int, tuple[int, int]] = {}
    for part in parts:
        uid = -1 if part.owner_uid is None else part.owner_uid
        files, size = shares.get(uid, (0, 0))
        shares[uid] = (files + 1, size + part.size)
    return shares
