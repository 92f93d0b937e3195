"""Turn claimed staging files into database rows: check, parse, split, attribute.

This is the step between "a file is ours" and "its parts wait to be merged". Everything here is
recorded in one transaction per batch, after the files it refers to are durable, so a crash at
any point either leaves a staging file with no row (processed again at start) or a row whose
files exist.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pgod.config import DEFAULT_MAX_COUNTER
from pgod.durable import fsync_dir, is_disk_full, sync_filesystem, write_file
from pgod.intake.attribution import Attributor
from pgod.intake.claim import Rejected, check_staged, display_name
from pgod.intake.profraw import ProfrawError, RawProfile, counter_over, parse_profraw, part_bytes, part_digest
from pgod.state.db import Part, Quarantine, SpoolFile, insert_many
from pgod.state.history import add_tallies
from pgod.state.layout import Layout, safe_component

log = structlog.get_logger(__name__)

# Rejections logged one by one in a batch; past that, one line counts the rest by reason (a flood
# of junk once wrote a log line per file, an eighth of the time its batches took).
REJECTIONS_LOGGED_PER_BATCH = 20


@dataclass
class IngestReport:
    """What one batch did, for logs and signals."""

    files: int = 0
    parts_pending: dict[str, int] = field(default_factory=dict)
    unattributed: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (original name, reason)
    born_done: list[str] = field(default_factory=list)  # staging names with no part to merge
    # (staging name, unattributed path): a whole file that is one unattributed profile, moved
    # there once its rows are committed (the copy to look at, made by a rename, not a write)
    to_unattributed: list[tuple[str, str]] = field(default_factory=list)
    # (staging name, quarantine path): moved once the rows that say so are committed
    to_quarantine: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Row:
    """A file's rows, prepared before the transaction."""

    staging_name: str
    original_name: str
    owner_uid: int | None
    size: int
    parts: list[dict]
    copied: bool  # some part to merge was written to a file of its own (a part of a several-profile file)
    keep_as: str | None = None  # where the whole file goes when it is one unattributed profile


class Ingestor:
    """Checks and records claimed files; owns nothing but its collaborators."""

    def __init__(
        self,
        layout: Layout,
        attributor: Attributor,
        max_file_bytes: int,
        keep: Callable[[str, bytes], None] = lambda _p, _d: None,
        make_room: Callable[[int], None] = lambda _size: None,
        max_counter: int = DEFAULT_MAX_COUNTER,
        accept_uids: frozenset[int] | None = None,
    ) -> None:
        self.layout = layout
        self.max_counter = max_counter
        self.accept_uids = accept_uids
        self._keep = keep  # hands a pending part's checked bytes on to its merge
        self._make_room = make_room  # drops kept bytes so a file this size fits beside them
        self.attributor = attributor
        self.max_file_bytes = max_file_bytes
        # Per-file paths are built as strings (see claim.py for why).
        self._incoming = os.fsdecode(layout.incoming)
        self._parts = os.fsdecode(layout.parts)
        self._unattributed = os.fsdecode(layout.unattributed)
        self._quarantine = os.fsdecode(layout.quarantine)

    def ingest(self, session: Session, staged: list[tuple[str, str]], squatted: Set[str] = frozenset()) -> IngestReport:
        """Record a batch of staging files (staging name, original spool name) in the caller's
        transaction. An empty file whose spool name is in `squatted` is refused as
        squatted-name: it took a program's name ahead of it, which an admin should see as such.

        Rejected files are moved to quarantine before their rows are written; accepted files
        stay where they are until their parts are merged.
        """
        report = IngestReport()
        rows: list[_Row] = []
        quarantine_rows: list[dict] = []
        unlogged: dict[str, int] = {}  # reason → rejections past REJECTIONS_LOGGED_PER_BATCH
        for staging_name, spool_name in staged:
            report.files += 1
            original_name = display_name(spool_name)
            try:
                rows.append(self._examine(staging_name, original_name))
                continue
            except Rejected as err:
                rejection = err
                if err.reason == "empty" and spool_name in squatted:
                    rejection = Rejected(
                        "squatted-name",
                        "empty and new, named for a pid that was no running process of its owner: made ahead of"
                        " the program that gets that pid (or left by one that died at once)",
                        err.owner_uid,
                    )
            except Exception as err:  # a file must never stop the daemon: park it, with the error
                if is_disk_full(err):
                    raise  # not the file's fault: the batch waits for room (engine.py)
                log.exception("spool.examine_failed", file=original_name)
                rejection = Rejected("internal-error", f"{type(err).__name__}: {err}")
            quarantine_rows.append(self._quarantine_file(staging_name, original_name, rejection))
            if len(quarantine_rows) <= REJECTIONS_LOGGED_PER_BATCH:
                log.warning("spool.rejected", file=original_name, reason=rejection.reason, detail=rejection.detail,
                            uid=rejection.owner_uid)
            else:
                unlogged[rejection.reason] = unlogged.get(rejection.reason, 0) + 1
            report.quarantined.append((original_name, rejection.reason))
            report.to_quarantine.append((staging_name, quarantine_rows[-1]["path"]))
        if unlogged:
            log.warning("spool.rejected_more", reasons=unlogged, hint="each is in pgoctl show and the quarantine table")
        if rows:
            if any(row.copied for row in rows):
                # Copies of parts are written unsynced; one syncfs makes the batch's durable
                # before any row names them (staging, parts and unattributed share a filesystem).
                sync_filesystem(self.layout.parts)
                fsync_dir(self.layout.parts)
                fsync_dir(self.layout.unattributed)
            self._insert_rows(session, rows, report)
        if quarantine_rows:
            now = time.time()
            for q in quarantine_rows:
                q["at"] = now
            insert_many(session, Quarantine.__tablename__, quarantine_rows)
            add_tallies(session, rejected_files=len(quarantine_rows), rejected_bytes=sum(q["size"] for q in quarantine_rows))
        return report

    def _insert_rows(self, session: Session, rows: list[_Row], report: IngestReport) -> None:
        """One executemany for the files, one for their parts (see insert_many).

        The file ids are given, not read back: this thread is the database's only writer, and
        SQLite would otherwise return them row by row."""
        now = time.time()
        first_id = (session.scalar(select(func.max(SpoolFile.id))) or 0) + 1
        file_rows = []
        part_rows = []
        for file_id, row in enumerate(rows, start=first_id):
            done = True
            for part in row.parts:
                part["file_id"] = file_id
                status = part["status"]
                if status == "pending":
                    done = False
                    report.parts_pending[part["package"]] = report.parts_pending.get(part["package"], 0) + 1
                elif status == "unattributed":
                    report.unattributed += 1
                part_rows.append(part)
            if done and row.keep_as is not None:
                report.to_unattributed.append((row.staging_name, row.keep_as))
            elif done:
                report.born_done.append(row.staging_name)
            file_rows.append(
                dict(
                    id=file_id,
                    staging_name=row.staging_name,
                    original_name=row.original_name,
                    owner_uid=row.owner_uid,
                    size=row.size,
                    claimed_at=now,
                    done=done,
                )
            )
        insert_many(session, SpoolFile.__tablename__, file_rows)
        insert_many(session, Part.__tablename__, part_rows)
        unattributed = [part["size"] for part in part_rows if part["status"] == "unattributed"]
        add_tallies(session, unattributed_files=len(unattributed), unattributed_bytes=sum(unattributed))

    def _examine(self, staging_name: str, original_name: str) -> _Row:
        path = f"{self._incoming}/{staging_name}"
        checked, fd = check_staged(path, original_name, self.max_file_bytes)
        if self.accept_uids is not None and checked.owner_uid not in self.accept_uids:
            os.close(fd)
            raise Rejected(
                "uid-not-accepted", f"owned by uid {checked.owner_uid}, which accept_uids does not list",
                checked.owner_uid, checked.size,
            )
        try:
            # Read, never mmap: the owner may still hold the file open and truncate it, and a
            # mapped page past the new end would kill the daemon with SIGBUS. What ingest holds
            # and what it kept for merges stay within one budget (merge.checked.CHECKED_CACHE_BYTES).
            self._make_room(checked.size)
            data = _read_bounded(fd, checked.size, self.max_file_bytes)
        finally:
            os.close(fd)
        try:
            profiles = parse_profraw(data)
        except ProfrawError as err:
            raise Rejected(f"profraw-{err.reason}", str(err), checked.owner_uid, len(data)) from None
        for index, profile in enumerate(profiles):
            if (over := counter_over(data, profile, self.max_counter)) is not None:
                counter, value = over
                raise Rejected(
                    "implausible-count",
                    f"raw profile {index}: counter {counter} holds {value}, more than max_counter = {self.max_counter}"
                    " (no run counts that high)", checked.owner_uid, len(data),
                )
        parts = self._split(staging_name, path, data, profiles)
        # Unattributed copies are kept to be looked at, never merged: no sync for them (a flood of
        # unattributed files once cost a syncfs of the spool's whole file system per batch).
        copied = any(part["path"] != path and part["status"] == "pending" for part in parts)
        keep_as = parts[0]["path"] if len(parts) == 1 and parts[0]["status"] == "unattributed" else None
        return _Row(staging_name, original_name, checked.owner_uid, len(data), parts, copied, keep_as)

    def _split(self, staging_name: str, path: str, data: bytes, profiles: list[RawProfile]) -> list[dict]:
        """One part row per raw profile; a lone, attributed profile is merged from the file itself.
        The parts of a several-profile file are written to files of pgod's own from views of the
        bytes read (no copy in memory), and read again for their merge: only a lone profile's
        bytes are kept for it (a kept view would hold the whole file while counting one part).

        Each part records the digest of the bytes checked here: a lone part stays in the claimed
        file, whose writer may still hold it open and rewrite it, so the merge reads it again
        and hands llvm-profdata those bytes only if they are still the ones checked (merge/confined.py)."""
        parts = []
        whole_file = len(profiles) == 1
        for index, profile in enumerate(profiles):
            package = self.attributor.package_for(profile.binary_ids)
            content = data if whole_file else part_bytes(data, profile)
            if package is None:
                if not profile.binary_ids:
                    log.warning("profile.no_binary_id", file=staging_name, version=profile.version,
                                hint="raw profile names no build-id (clang 13 or older, or linked without --build-id)")
                status = "unattributed"
                part_path = f"{self._unattributed}/{staging_name}.{index}.profraw"
                if not whole_file:  # a whole file is moved there after the commit (to_unattributed)
                    write_file(part_path, content)
            else:
                status = "pending"
                if whole_file:
                    part_path = path
                else:
                    part_path = f"{self._parts}/{staging_name}.{index}.profraw"
                    write_file(part_path, content)
                if whole_file:
                    self._keep(part_path, content)
            parts.append(
                dict(
                    part_index=index,
                    package=package,
                    binary_ids=",".join(profile.binary_ids),
                    size=profile.length,
                    path=part_path,
                    status=status,
                    digest=part_digest(content),
                )
            )
        return parts

    def _quarantine_file(self, staging_name: str, original_name: str, rejection: Rejected) -> dict:
        """The quarantine row of a rejected file. The file itself is moved only after the row is
        committed (a full disk may roll it back: the file must then still be in staging)."""
        target = quarantine_path(self._quarantine, staging_name, original_name)
        return dict(
            original_name=original_name,
            package=None,
            owner_uid=rejection.owner_uid,
            size=rejection.size,
            reason=rejection.reason,
            detail=rejection.detail,
            path=target,
        )


def quarantine_path(quarantine: str, staging_name: str, original_name: str) -> str:
    """Where a rejected file goes in the ``quarantine`` folder: its staging name first, so
    recovery can match it again. Plain strings: this runs once per rejected file."""
    return f"{quarantine}/{staging_name}-{safe_component(original_name)}"


def _read_bounded(fd: int, size: int, limit: int) -> bytes:
    """The whole file behind ``fd`` (``size`` bytes when checked), refusing one that grew past
    ``limit`` since. A read shorter than asked is the end of a regular file, so a file that kept
    its size takes one read."""
    first = os.read(fd, min(size + 1, limit + 1))
    if len(first) <= size:
        return first
    chunks = [first]
    total = len(first)
    while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise Rejected("oversized", f"grew past the cap of {limit} bytes while being read")
    return b"".join(chunks)
