"""Bounded history: rows of finished files pruned, totals kept in counters.

Every claimed file leaves rows (its spool_files row and one per part, about 300 bytes); kept
forever, a flood of small files grows the database without bound and slows every query that
counts them. Once a file is done (every part merged or rejected) and its files are gone from
staging, its rows say nothing the filesystem could contradict, so they go. What they added up to
lives on in counters: the package's totals, `contributions` (per package and uid) and the
tallies of rejected and unattributed files. Rejections keep their newest rows, for `pgoctl show`; merge records the newest
per package.

The exactly-once rule is what makes this careful: a staging file without a row is examined again
at start (recovery.py), so a row is deleted only after the deletion of its staging files is
durable (fsync of their folders), and never while one of them is still there.
"""

from __future__ import annotations

import os
import time

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from pgod.durable import fsync_dir
from pgod.state.db import Contribution, Merge, Part, Quarantine, SpoolFile, Tally, among
from pgod.state.layout import Layout

log = structlog.get_logger(__name__)

PRUNE_BATCH = 5000  # done files whose rows one pruning step deletes at most
PRUNE_EVERY_SECONDS = 10.0
KEEP_REJECTION_ROWS = 1000  # the newest rejections keep their rows (reason, detail)
KEEP_MERGE_ROWS = 200  # merge records kept per package
# Life-long tallies (keyword names for add_tallies): every file or part ever rejected, and every
# raw profile no package claimed, with their bytes.
REJECTED_FILES, REJECTED_BYTES = "rejected_files", "rejected_bytes"
UNATTRIBUTED_FILES, UNATTRIBUTED_BYTES = "unattributed_files", "unattributed_bytes"


def add_contributions(session: Session, package: str, shares: dict[int, tuple[int, int]]) -> None:
    """Add (files, bytes) per uid to what the package's profile holds from each uid."""
    for uid, (files, size) in shares.items():
        statement = sqlite_insert(Contribution).values(package=package, uid=uid, files=files, bytes=size)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[Contribution.package, Contribution.uid],
                set_={"files": Contribution.files + files, "bytes": Contribution.bytes + size},
            )
        )


def add_tallies(session: Session, **counts: int) -> None:
    """Add to life-long counters by name (REJECTED_FILES, UNATTRIBUTED_BYTES, ...)."""
    for name, count in counts.items():
        if count:
            statement = sqlite_insert(Tally).values(name=name, value=count)
            session.execute(
                statement.on_conflict_do_update(index_elements=[Tally.name], set_={"value": Tally.value + count})
            )


def tallies(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Tally.name, Tally.value)).tuples().all())


class History:
    """Prunes on the engine thread, a bounded step at a time."""

    def __init__(self, layout: Layout, sessions: sessionmaker[Session]) -> None:
        self.layout = layout
        self.sessions = sessions
        self._last = float("-inf")
        self._owed = True  # rows may wait to be pruned (at start: from before)

    def owe(self) -> None:
        """Files became done (a merge was committed, or a file born done): a step is owed."""
        self._owed = True

    def next_deadline(self) -> float | None:
        """Monotonic time of the next pruning step, if one is owed."""
        return self._last + PRUNE_EVERY_SECONDS if self._owed else None

    def prune_if_due(self) -> None:
        now = time.monotonic()
        if not self._owed or now - self._last < PRUNE_EVERY_SECONDS:
            return
        self._last = now
        self._owed = False
        self.prune()

    def prune(self) -> int:
        """One step: rows of up to PRUNE_BATCH done files, old rejections, old merge records."""
        with self.sessions() as session:
            done = session.execute(
                select(SpoolFile.id, SpoolFile.staging_name).where(SpoolFile.done.is_(True)).order_by(SpoolFile.id).limit(PRUNE_BATCH)
            ).all()
            copies = (
                session.scalars(select(Part.path).where(among(Part.file_id, [row.id for row in done]), Part.status == "merged")).all()
                if done
                else []
            )
        incoming = os.fsdecode(self.layout.incoming)
        # Still in staging (a clean-up not finished yet): left for the next step or recovery.
        lingering = {os.path.basename(path).split(".", 1)[0] for path in copies if os.path.lexists(path)}
        gone = [row.id for row in done if row.staging_name not in lingering and not os.path.lexists(f"{incoming}/{row.staging_name}")]
        if len(done) == PRUNE_BATCH or len(gone) < len(done):
            self._owed = True  # more than one step's worth, or clean-ups still to finish
        if gone:
            # The unlinks those rows vouch for must survive a crash before the rows go.
            for folder in (self.layout.incoming, self.layout.parts, self.layout.quarantine):
                fsync_dir(folder)
        with self.sessions.begin() as session:
            if gone:
                session.execute(delete(Part).where(among(Part.file_id, gone)))
                session.execute(delete(SpoolFile).where(among(SpoolFile.id, gone)))
            newest = session.scalar(select(func.max(Quarantine.id))) or 0
            session.execute(delete(Quarantine).where(Quarantine.id <= newest - KEEP_REJECTION_ROWS))
            referenced = select(Part.merge_id).where(Part.merge_id.is_not(None))
            for package in session.scalars(select(Merge.package).distinct()).all():
                session.execute(
                    delete(Merge).where(
                        Merge.package == package,
                        Merge.id.in_(
                            select(Merge.id)
                            .where(Merge.package == package, Merge.id.not_in(referenced))
                            .order_by(Merge.id.desc())
                            .offset(KEEP_MERGE_ROWS)
                        ),
                    )
                )
        if gone:
            log.info("history.pruned", files=len(gone))
        return len(gone)
