"""The daemon's durable state: SQLite through SQLAlchemy 2, in WAL mode with full fsync.

The database is the single source of truth for "what has been counted". Files on disk
(staging copies, profile generations) are followers: after a crash the daemon makes the
filesystem agree with the database, never the other way round (see recovery.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

SCHEMA_VERSION = 6


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the database itself, such as the schema version."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class Package(Base):
    """A watched package and its counters toward the next optimized build."""

    __tablename__ = "packages"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    state: Mapped[str] = mapped_column(String, default="profiling")
    # Counters since the last optimized build started (what the threshold compares against).
    raw_bytes: Mapped[int] = mapped_column(Integer, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    # Counters over the package's whole life, never reset.
    total_raw_bytes: Mapped[int] = mapped_column(Integer, default=0)
    total_files: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    threshold_bytes: Mapped[int] = mapped_column(Integer, default=0)
    build_due: Mapped[bool] = mapped_column(Boolean, default=False)
    profile_generation: Mapped[int] = mapped_column(Integer, default=0)
    profile_path: Mapped[str | None] = mapped_column(String, nullable=True)
    optimized: Mapped[str | None] = mapped_column(String, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_activity: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The profile_build paths the counters and profile belong to; a change means an upgrade.
    profile_build_key: Mapped[str] = mapped_column(Text, default="")
    build_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_build_at: Mapped[float] = mapped_column(Float, default=0.0)  # backoff after a failure
    # The instrumentation kind of the working profile ("fe", "ir"; null: recorded before schema
    # 4, when every profile was front-end): profiles of two kinds are never mixed.
    profile_kind: Mapped[str | None] = mapped_column(String, nullable=True)
    # "first": profiles come from profile_build; "cs": from the context-sensitive build
    # `stage_build`, in use in its place (stages.py).
    stage: Mapped[str] = mapped_column(String, default="first")
    stage_build: Mapped[str | None] = mapped_column(String, nullable=True)
    # The profile_build_key `optimized` was built for: after an upgrade it is the old version's
    # build, which must not be put in use again (null: recorded before schema 4).
    optimized_for: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Growth of live runs recorded for this package over its life (intake/live.py): the bytes
    # of the growth parts and how many there were.
    live_bytes: Mapped[int] = mapped_column(Integer, default=0)
    live_snapshots: Mapped[int] = mapped_column(Integer, default=0)
    # Maturity (schedule/maturity.py), as of the last checkpoint: the profile generation and
    # total_raw_bytes it was taken at, what the profiles were (profile_build_key and stage: a new
    # one starts the checkpoints over), the change over the last step and since the profile the
    # build in use was made from (percent, the larger of the levels; null: nothing to compare),
    # the profile's count sum (where the machine spends time: the build order) and why a
    # package past its threshold does not build yet (null: it is not waiting for its profile).
    checkpoint_generation: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_bytes: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_key: Mapped[str] = mapped_column(Text, default="")
    step_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    settled_steps: Mapped[int] = mapped_column(Integer, default=0)  # steps in a row at most settled_percent
    since_build_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    checkpoint_build: Mapped[str | None] = mapped_column(Text, nullable=True)  # the build profile compared with
    count_sum: Mapped[int] = mapped_column(Integer, default=0)
    maturity_wait: Mapped[str | None] = mapped_column(Text, nullable=True)


class Checkpoint(Base):
    """The profile of a package measured at one point (schedule/maturity.py): the maturity
    figures over time, which status, show and the report's chart read."""

    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package: Mapped[str] = mapped_column(String, index=True)
    at: Mapped[float] = mapped_column(Float)
    generation: Mapped[int] = mapped_column(Integer)
    total_raw_bytes: Mapped[int] = mapped_column(Integer)
    step_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    since_build_changed: Mapped[float | None] = mapped_column(Float, nullable=True)
    count_sum: Mapped[int] = mapped_column(Integer, default=0)
    functions: Mapped[int] = mapped_column(Integer, default=0)
    functions_run: Mapped[int] = mapped_column(Integer, default=0)


class Build(Base):
    """One optimized rebuild of a package, from the profile snapshot it used to its result."""

    __tablename__ = "builds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package: Mapped[str] = mapped_column(String, index=True)
    profile_store_path: Mapped[str] = mapped_column(String)
    profile_generation: Mapped[int] = mapped_column(Integer)
    log_path: Mapped[str] = mapped_column(String)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # running, benchmarking, succeeded, failed, rejected (slower than min_speedup on the benchmark)
    status: Mapped[str] = mapped_column(String, default="running")
    out_path: Mapped[str | None] = mapped_column(String, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "optimize": the final variant; "cs-profile": the context-sensitive stage's instrumented one.
    stage: Mapped[str] = mapped_column(String, default="optimize")
    # The benchmark gate's figures (gate.GateResult.figures(), JSON) and the speedup they gave;
    # null: no benchmark ran ("unmeasured").
    benchmark: Mapped[str | None] = mapped_column(Text, nullable=True)
    speedup: Mapped[float | None] = mapped_column(Float, nullable=True)


class SpoolFile(Base):
    """A raw file claimed from the spool into staging; done once every part is settled."""

    __tablename__ = "spool_files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staging_name: Mapped[str] = mapped_column(String, unique=True)
    original_name: Mapped[str] = mapped_column(String)
    owner_uid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[float] = mapped_column(Float)
    done: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class Part(Base):
    """One raw profile inside a spool file, and where it went.

    status: "pending" (waiting for a merge), "merged", "quarantined", "unattributed".
    """

    __tablename__ = "parts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("spool_files.id"), index=True)
    part_index: Mapped[int] = mapped_column(Integer)
    package: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    binary_ids: Mapped[str] = mapped_column(String, default="")
    size: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, index=True)
    merge_id: Mapped[int | None] = mapped_column(ForeignKey("merges.id"), nullable=True)
    # SHA-256 (128 bits) of the bytes checked at ingest; the merge hands llvm-profdata only those
    # (null for parts recorded before schema 2, which are merged as they are).
    digest: Mapped[str | None] = mapped_column(String, nullable=True)


class Merge(Base):
    """One llvm-profdata call that produced a new profile generation of a package."""

    __tablename__ = "merges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package: Mapped[str] = mapped_column(String, index=True)
    generation: Mapped[int] = mapped_column(Integer)
    files: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)
    # Of `bytes`, those of live runs' growth parts (intake/live.py); the report's growth chart
    # shows them apart.
    live_bytes: Mapped[int] = mapped_column(Integer, default=0)


class Quarantine(Base):
    """A rejected spool file or part, with the reason a person can read."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    original_name: Mapped[str] = mapped_column(String)
    package: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    owner_uid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String)
    detail: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str | None] = mapped_column(String, nullable=True)
    at: Mapped[float] = mapped_column(Float)


class Contribution(Base):
    """What one uid's raw profiles put into a package's profile, over the package's life: the
    rows of the files themselves are pruned once they are done (see prune_done)."""

    __tablename__ = "contributions"
    package: Mapped[str] = mapped_column(String, primary_key=True)
    uid: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1: not known (an old row)
    files: Mapped[int] = mapped_column(Integer, default=0)  # raw profiles (parts) merged
    bytes: Mapped[int] = mapped_column(Integer, default=0)


class LiveRun(Base):
    """One live run (a process's module reporting while it runs, intake/live.py): the snapshot
    last counted, which the next one's growth is computed against (intake/growth.py).

    The baseline moves in the same transaction that records the growth as a pending part, so a
    snapshot's growth is recorded once; the merge then counts that part exactly once like any
    other. A run's row outlives its file until the file is gone (see LiveRuns.finish)."""

    __tablename__ = "live_runs"
    name: Mapped[str] = mapped_column(String, primary_key=True)  # the spool name: live-<pid>-<random>.profraw
    owner_uid: Mapped[int] = mapped_column(Integer)
    package: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    baseline: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # zlib of the part's bytes
    snapshots: Mapped[int] = mapped_column(Integer, default=0)  # snapshots whose growth was recorded
    bytes_counted: Mapped[int] = mapped_column(Integer, default=0)  # bytes of those growth parts
    counts: Mapped[int] = mapped_column(Integer, default=0)  # sum of the counter growth, capped at 2^62
    first_at: Mapped[float] = mapped_column(Float)
    last_at: Mapped[float] = mapped_column(Float)
    ended: Mapped[bool] = mapped_column(Boolean, default=False)
    # The kernel's boot id when the baseline moved: a snapshot of an earlier boot that is below
    # the baseline is the writer's last rename lost with the page cache (a power cut), not a
    # program that reset its counters (intake/live.py).
    boot_id: Mapped[str] = mapped_column(String, default="")


class Tally(Base):
    """A counter over the daemon's life whose rows are pruned, such as every file ever rejected."""

    __tablename__ = "tallies"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed merge survives power loss, which the exactly-once promise needs.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def among(column, values: Iterable[int | str]) -> ColumnElement[bool]:
    """``column IN (values)`` with the values bound as ONE JSON parameter, read by json_each.

    A plain ``in_()`` binds one parameter per value, which SQLAlchemy expands and SQLite parses
    anew each time: for the 2,000-file batches of the ingest hot path that cost more than the
    queries themselves, and it meets SQLite's variable limit on bigger ones."""
    table = func.json_each(json.dumps(list(values))).table_valued("value")
    return column.in_(select(table.c.value))


def insert_many(session: Session, table_name: str, rows: list[dict]) -> None:
    """INSERT rows (dicts with the same keys: column names) by one executemany handed straight
    to the driver. SQLAlchemy's own executemany processes each row's parameters in Python first,
    which doubled the cost of recording a 2,000-file batch; these rows are plain column values."""
    if not rows:
        return
    columns = list(rows[0])
    sql = f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    session.connection().exec_driver_sql(sql, [tuple(row[column] for column in columns) for row in rows])


# From schema N to N+1, in the transaction that records the new version (new tables are made
# by create_all before).
_MIGRATIONS = {
    1: ["ALTER TABLE parts ADD COLUMN digest VARCHAR"],
    2: [
        "INSERT INTO contributions (package, uid, files, bytes) SELECT p.package, COALESCE(f.owner_uid, -1),"
        " COUNT(*), SUM(p.size) FROM parts p JOIN spool_files f ON f.id = p.file_id WHERE p.status = 'merged'"
        " GROUP BY p.package, COALESCE(f.owner_uid, -1)",
        "INSERT INTO tallies (name, value) SELECT 'rejected_files', COUNT(*) FROM quarantine",
        "INSERT INTO tallies (name, value) SELECT 'rejected_bytes', COALESCE(SUM(size), 0) FROM quarantine",
        "INSERT INTO tallies (name, value) SELECT 'unattributed_files', COUNT(*) FROM parts WHERE status = 'unattributed'",
        "INSERT INTO tallies (name, value) SELECT 'unattributed_bytes', COALESCE(SUM(size), 0) FROM parts"
        " WHERE status = 'unattributed'",
    ],
    3: [
        "ALTER TABLE packages ADD COLUMN profile_kind VARCHAR",
        "ALTER TABLE packages ADD COLUMN stage VARCHAR NOT NULL DEFAULT 'first'",
        "ALTER TABLE packages ADD COLUMN stage_build VARCHAR",
        "ALTER TABLE packages ADD COLUMN optimized_for TEXT",
        "ALTER TABLE builds ADD COLUMN stage VARCHAR NOT NULL DEFAULT 'optimize'",
        "ALTER TABLE builds ADD COLUMN benchmark TEXT",
        "ALTER TABLE builds ADD COLUMN speedup FLOAT",
    ],
    4: [  # live_runs is a new table (create_all)
        "ALTER TABLE packages ADD COLUMN live_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE packages ADD COLUMN live_snapshots INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE merges ADD COLUMN live_bytes INTEGER NOT NULL DEFAULT 0",
    ],
    5: [  # checkpoints is a new table (create_all)
        "ALTER TABLE packages ADD COLUMN checkpoint_generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE packages ADD COLUMN checkpoint_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE packages ADD COLUMN checkpoint_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE packages ADD COLUMN step_changed FLOAT",
        "ALTER TABLE packages ADD COLUMN settled_steps INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE packages ADD COLUMN since_build_changed FLOAT",
        "ALTER TABLE packages ADD COLUMN checkpoint_build TEXT",
        "ALTER TABLE packages ADD COLUMN count_sum INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE packages ADD COLUMN maturity_wait TEXT",
    ],
}


class SchemaError(RuntimeError):
    """The database was written by an incompatible pgod."""


def open_database(path: Path) -> sessionmaker[Session]:
    """Open (creating if needed) the state database and return a session factory."""
    engine: Engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        stored = session.scalar(select(Meta.value).where(Meta.key == "schema_version"))
        if stored is None:
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            session.add(Meta(key="created_at", value=str(time.time())))
        elif int(stored) in _MIGRATIONS:
            for version in range(int(stored), SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    session.connection().exec_driver_sql(statement)
            session.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        elif int(stored) != SCHEMA_VERSION:
            raise SchemaError(f"{path}: schema version {stored}, this pgod knows {SCHEMA_VERSION}")
    return factory
