"""Build the status documents of docs/interfaces.md §7 (`pgoctl status --json`, `pgoctl show`) from state.

Pure reads: safe from any thread, since SQLite in WAL mode lets readers run beside the writer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pgod import __version__
from pgod.config import Config, PackageConfig
from pgod.optimize import stages
from pgod.state.db import Build, Checkpoint, Contribution, LiveRun, Merge, Package, Quarantine
from pgod.state.history import REJECTED_BYTES, REJECTED_FILES, UNATTRIBUTED_BYTES, UNATTRIBUTED_FILES, tallies
from pgod.state.layout import Layout

STATES = ("profiling", "building", "ready", "active", "failed", "stale", "rejected")


def _gate_figures(build: Build | None) -> dict | None:
    """The benchmark gate's record of a build, or None when none ran (unmeasured)."""
    if build is None or not build.benchmark:
        return None
    try:
        return json.loads(build.benchmark)
    except ValueError:
        return None


def _latest_final_build(session: Session, name: str, statuses: tuple[str, ...]) -> Build | None:
    return session.scalar(
        select(Build).where(Build.package == name, Build.stage == stages.OPTIMIZE,
                            Build.status.in_(statuses)).order_by(Build.id.desc()).limit(1)
    )


def _package_summary(row: Package, running=None, package: PackageConfig | None = None,
                     session: Session | None = None, gating=None, schedule: dict | None = None) -> dict:
    summary = {
        "name": row.name,
        "state": row.state,
        "raw_bytes": row.raw_bytes,
        "threshold_bytes": row.threshold_bytes,
        "files": row.files,
        "quarantined": row.quarantined,
        "profile": row.profile_path,
        "optimized": row.optimized,
        "active": row.active,
        "last_error": row.last_error,
        # Additions beyond the contract's keys (allowed: "further keys may be added").
        "build_due": row.build_due,
        "total_raw_bytes": row.total_raw_bytes,
        "total_files": row.total_files,
        "profile_generation": row.profile_generation,
        "last_activity": row.last_activity,
        "instrumentation": row.profile_kind or "fe",
        "build": None,
        "benchmark": None,
        "speedup": None,
    }
    if package is not None:
        summary.update(stages.describe(package, row))
    # When it builds (pgod/schedule): how settled its profile is at the last checkpoint, its
    # place among the due packages, and why a build past the threshold does not start yet.
    queue = (schedule or {}).get("queue") or []
    summary["maturity"] = {"step_changed_percent": row.step_changed,
                           "changed_since_build_percent": row.since_build_changed,
                           "count_sum": row.count_sum or 0, "checkpoint_generation": row.checkpoint_generation or 0}
    summary["queue_position"] = queue.index(row.name) + 1 if row.name in queue else None
    summary["waiting"] = (row.maturity_wait if not row.build_due
                          else (schedule or {}).get("waiting") if row.name in queue else None)
    if session is not None:
        # Programs that keep running (intake/live.py): runs reporting now, what their growth
        # added over the package's life, and when a run of it was last read with growth.
        reporting, last, counts = session.execute(
            select(func.count(LiveRun.name), func.max(LiveRun.last_at), func.coalesce(func.sum(LiveRun.counts), 0))
            .where(LiveRun.package == row.name, LiveRun.ended.is_(False))
        ).one()
        # "counts": the counter increments the running ones have reported so far (rising while they run).
        summary["live"] = {"processes": reporting, "bytes": row.live_bytes or 0, "counts": counts,
                           "snapshots": row.live_snapshots or 0, "last_read": last}
        # "benchmark": the latest measured final build's figures (a refused candidate's too);
        # "speedup": what the optimized build, the one that may be used, measured.
        summary["benchmark"] = _gate_figures(_latest_final_build(session, row.name, ("succeeded", "rejected", "failed")))
        accepted = _gate_figures(_latest_final_build(session, row.name, ("succeeded",)))
        summary["speedup"] = accepted.get("speedup") if accepted and row.optimized else None
    if gating is not None and gating.package.name == row.name:
        summary["benchmark_running"] = {
            "started_at": gating.started, "rounds_done": gating.rounds_done,
            "rounds": gating.package.benchmark_rounds, "candidate": gating.candidate,
        }
    if running is not None and running.package == row.name:
        summary["build"] = {
            "started_at": running.started,
            "elapsed_seconds": round(time.time() - running.started, 1),
            "last_line": running.last_line,
            "log": str(running.log_path),
            # As Nix reports it (build_progress.py): "format" ("nix", or "plain" for other
            # build commands), "derivation", "phase", "done", "total", "running", "failed",
            # "building" and "log_tail"; None where the build has not said.
            **running.progress(),
        }
    return summary


def _kept(folder: Path) -> dict:
    """Files and bytes a bounded folder holds now (at most unattributed_max_files entries), so
    the figure costs the same however long the history."""
    files = size = 0
    try:
        with os.scandir(folder) as scan:
            for entry in scan:
                try:
                    if entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return {"files": files, "bytes": size}


def _counts(session: Session, layout: Layout | None) -> dict:
    """Every file ever rejected and every profile no package claimed (life-long tallies, as
    cheap after a million files as after one), and what of them is still kept to look at."""
    counted = tallies(session)
    empty = {"files": 0, "bytes": 0}
    return {
        "unattributed": {
            "files": counted.get(UNATTRIBUTED_FILES, 0),
            "bytes": counted.get(UNATTRIBUTED_BYTES, 0),
            "kept": _kept(layout.unattributed) if layout else empty,
        },
        "quarantine": {
            "files": counted.get(REJECTED_FILES, 0),
            "bytes": counted.get(REJECTED_BYTES, 0),
            "kept": _kept(layout.quarantine) if layout else empty,
        },
    }


def _database(config: Config) -> dict:
    size = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            size += os.stat(f"{config.db_path}{suffix}").st_size
        except FileNotFoundError:
            pass
    return {"bytes": size}


def status_document(
    config: Config, sessions: sessionmaker[Session], spool_backlog: int, running=None, disk: dict | None = None,
    layout: Layout | None = None, intake: list[dict] | None = None, gating=None, starting: bool = False,
    live: dict | None = None, schedule: dict | None = None,
) -> dict:
    """The whole-daemon status: every configured package, in configuration order. ``disk``:
    whether intake waits for room ({"state": "ok"} or {"state": "full", "detail": …}).
    ``starting``: the engine's start-up (recovery, upgrades, the first spool scan) is not over,
    so the packages may not yet show what it will settle."""
    with sessions() as session:
        rows = {row.name: row for row in session.scalars(select(Package))}
        packages = [
            _package_summary(rows[name], running, config.packages[name], session, gating, schedule)
            for name in config.packages if name in rows
        ]
        counts = _counts(session, layout)
    return {
        "daemon": {
            "version": __version__,
            "spool_backlog": spool_backlog,
            "starting": starting,
            "activation": config.activation,
            "disk": disk or {"state": "ok"},
            "database": _database(config),
            # Per uid: names waiting, files claimed and not yet merged, and the bounds reached.
            "intake": intake or [],
            # Live runs followed, names not followed (a uid at its bound), the last poll.
            "live": live or {"followed": 0, "over_limit": 0, "last_poll": None, "interval_s": config.live_interval_s},
            # Due packages in build order, why the first waits, and what the machine looked like.
            "build_queue": (schedule or {}).get("queue") or [],
            "build_waiting": (schedule or {}).get("waiting"),
            "conditions": (schedule or {}).get("conditions"),
        },
        "packages": packages,
        **counts,
    }


class UnknownPackage(KeyError):
    """A name that is not among the configured packages."""


def package_summary(config: Config, sessions: sessionmaker[Session], name: str, running=None, gating=None,
                    schedule: dict | None = None) -> dict:
    """One package's entry of the status document's "packages" list (the PackageChanged payload)."""
    if name not in config.packages:
        raise UnknownPackage(name)
    with sessions() as session:
        row = session.get(Package, name)
        if row is None:
            raise UnknownPackage(name)
        return _package_summary(row, running, config.packages[name], session, gating, schedule)


def package_document(
    config: Config, sessions: sessionmaker[Session], name: str, history: int = 20, running=None, gating=None,
    schedule: dict | None = None,
) -> dict:
    """One package in detail: the summary plus its merge history and recent rejections."""
    if name not in config.packages:
        raise UnknownPackage(name)
    package = config.packages[name]
    with sessions() as session:
        row = session.get(Package, name)
        if row is None:
            raise UnknownPackage(name)
        document = _package_summary(row, running, package, session, gating, schedule)
        document["checkpoints"] = [
            {"at": c.at, "generation": c.generation, "total_raw_bytes": c.total_raw_bytes,
             "step_changed_percent": c.step_changed, "changed_since_build_percent": c.since_build_changed,
             "count_sum": c.count_sum, "functions": c.functions, "functions_run": c.functions_run}
            for c in session.scalars(
                select(Checkpoint).where(Checkpoint.package == name).order_by(Checkpoint.id.desc()).limit(history))
        ]
        document["profile_build"] = [str(p) for p in package.profile_build]
        document["build_command"] = list(package.build)
        document["cs_build_command"] = list(package.cs_build) if package.cs_build else None
        document["benchmark_command"] = list(package.benchmark) if package.benchmark else None
        document["baseline_build"] = str(package.baseline_build) if package.baseline_build else None
        document["min_speedup"] = package.min_speedup
        document["merges"] = [
            {"generation": m.generation, "files": m.files, "bytes": m.bytes, "seconds": m.seconds, "at": m.at}
            for m in session.scalars(
                select(Merge).where(Merge.package == name).order_by(Merge.id.desc()).limit(history)
            )
        ]
        builds = list(
            session.scalars(select(Build).where(Build.package == name).order_by(Build.id.desc()).limit(max(history, 1)))
        )
        document["build_log"] = builds[0].log_path if builds else None
        document["builds"] = [
            {
                "id": b.id,
                "status": b.status,
                "started_at": b.started_at,
                "finished_at": b.finished_at,
                "profile": b.profile_store_path,
                "profile_generation": b.profile_generation,
                "out_path": b.out_path,
                "error": b.error,
                "stage": b.stage,
                # None: no benchmark ran for it (unmeasured).
                "speedup": b.speedup,
                "benchmark": _gate_figures(b),
            }
            for b in builds[:history]
        ]
        document["contributions"] = [
            {"uid": c.uid, "files": c.files, "bytes": c.bytes}
            for c in session.scalars(
                select(Contribution).where(Contribution.package == name).order_by(Contribution.bytes.desc()).limit(history)
            )
        ]
        document["quarantine"] = [
            {"file": q.original_name, "owner_uid": q.owner_uid, "reason": q.reason, "detail": q.detail,
             "size": q.size, "at": q.at}
            for q in session.scalars(
                select(Quarantine).where(Quarantine.package == name).order_by(Quarantine.id.desc()).limit(history)
            )
        ]
    return document
