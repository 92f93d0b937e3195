"""Make the staging folders agree with the database: after each commit, and after any stop.

The database says what is counted; these functions only finish the file operations a commit
made due (delete what was merged, move what was rejected), so each is safe to run again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pgod.durable import move_if_present, unlink_if_present
from pgod.state.db import Package, Part, Quarantine, SpoolFile, among
from pgod.state.failpoints import failpoint
from pgod.state.layout import GROWTH_STAGING_PREFIX, Layout

log = structlog.get_logger(__name__)

def settle_files(layout: Layout, sessions: sessionmaker[Session], staging_names: list[str]) -> None:
    """Finish the files of spool entries whose every part is settled: merged copies are deleted,
    rejected ones moved to quarantine (unattributed copies live elsewhere and are kept)."""
    if not staging_names:
        return
    with sessions() as session:
        rows = session.execute(
            select(SpoolFile.id, SpoolFile.staging_name).where(
                among(SpoolFile.staging_name, staging_names), SpoolFile.done.is_(True)
            )
        ).all()
        if not rows:
            return
        parts = session.execute(
            select(Part.path, Part.status).where(
                among(Part.file_id, [row.id for row in rows]), Part.status.in_(("merged", "quarantined"))
            )
        ).all()
    finish_files(layout, [(part.path, part.status) for part in parts], [row.staging_name for row in rows])


def finish_files(layout: Layout, settled_parts: list[tuple[str, str]], done_names: list[str]) -> None:
    """The file operations a commit made due, safe to repeat: each settled part (path, status)
    deleted if merged or moved to quarantine if rejected, then the claimed copy of each done
    file deleted, unless it was one of those parts (a lone part is the claimed file itself)."""
    settled = set()
    for index, (path, status) in enumerate(settled_parts):
        if status == "quarantined":
            move_if_present(path, os.path.join(layout.quarantine, os.path.basename(path)))
        else:
            unlink_if_present(path)
        settled.add(path)
        if index == len(settled_parts) // 2:
            failpoint("mid-cleanup")
    incoming = os.fsdecode(layout.incoming)
    for name in done_names:
        staged = f"{incoming}/{name}"
        if staged not in settled:
            unlink_if_present(staged)


def recover(layout: Layout, sessions: sessionmaker[Session], reingest: Callable[[list[tuple[str, str]]], None]) -> None:
    """After any kind of stop: settle what was committed, re-examine what was not."""
    incoming = sorted(os.listdir(layout.incoming))
    with sessions() as session:
        known: dict[str, bool] = dict(  # staging name → done
            session.execute(
                select(SpoolFile.staging_name, SpoolFile.done).where(among(SpoolFile.staging_name, incoming))
            )
            .tuples()
            .all()
        )
        current_profiles = {
            name: path for name, path in session.execute(select(Package.name, Package.profile_path)) if path
        }
    settled = [name for name, done in known.items() if done]
    settle_files(layout, sessions, settled)
    for entry in os.listdir(layout.parts):
        owner = entry.split(".", 1)[0]
        if known.get(owner, True):
            # Its file is done (already counted), or will be examined again and re-split.
            unlink_if_present(layout.parts / entry)
    unseen = [(name, name) for name in incoming if name not in known]  # original names are lost
    for name, _ in unseen:
        if name.startswith(GROWTH_STAGING_PREFIX):
            unlink_if_present(layout.incoming / name)  # a live run's growth never recorded
    unseen = [(name, original) for name, original in unseen if not name.startswith(GROWTH_STAGING_PREFIX)]
    unseen = _finish_quarantine_moves(layout, sessions, unseen)
    if unseen:
        log.info("recovery.reingest", files=len(unseen))
        reingest(unseen)
    uncommitted = 0
    for name, current in current_profiles.items():
        directory = layout.package_profiles(name)
        if directory.is_dir():
            for entry in os.listdir(directory):
                if str(directory / entry) != current:
                    unlink_if_present(directory / entry)  # a generation never committed, or superseded
                    uncommitted += 1
    # One line an admin (and the power-loss test) reads after a crash: what the stop left.
    log.info("recovery.summary", settled=len(settled), reexamined=len(unseen), uncommitted_generations=uncommitted,
             claimed_pending=len(known) - len(settled))


def _finish_quarantine_moves(layout: Layout, sessions: sessionmaker[Session], unseen: list[tuple[str, str]]) -> list:
    """Rejected files whose quarantine row was committed but which were not moved yet (the move
    follows the commit): move them now; the others are examined again."""
    if not unseen:
        return unseen
    prefix = f"{layout.quarantine}/"
    left = []
    with sessions() as session:
        for name, original in unseen:
            target = session.scalar(select(Quarantine.path).where(Quarantine.path.startswith(f"{prefix}{name}-", autoescape=True)).limit(1))
            if target is None:
                left.append((name, original))
            else:
                move_if_present(layout.incoming / name, target)
    return left
