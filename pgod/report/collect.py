"""The figures of `pgoctl report`, as one plain document (report.json), from the state folder.

Everything is read, nothing written: the database is opened read-only (and, when no daemon has
it open, as immutable, so not even SQLite's -wal and -shm files appear), the merged profile and
the profile a build was made from are handed to llvm-profdata (the package's own, chosen as the
daemon chooses it) through descriptors, so a merge that replaces the generation meanwhile does
not pull the file away. Figures come from llvm-profdata's own output (`show --all-functions
--counts`, `overlap`) and the records pgod and the stdenv adapters keep (merges, builds,
nix-support/pgo-warnings.json, the Nix profile's generation links).

The daemon need not run; when it does, this reads the same folder beside it (SQLite's WAL lets
a reader in beside the writer), so the report needs read access to state_dir (root) and no bus.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgod import __version__
from pgod.config import (
    DEFAULT_MERGE_USER,
    DEFAULT_REBUILD_CHANGE_PERCENT,
    DEFAULT_SETTLED_PERCENT,
    Config,
    PackageConfig,
)
from pgod.confine import ConfineError, Identity, memfd_holding, read_own
from pgod.manifest import profdata_for
from pgod.profiles.overlap import level_overlap
from pgod.profiles.tool import ToolError, parse_overlap, parse_show, run_tool, show_levels
from pgod.report.figures import (
    MERGE_HISTORY_KEPT,
    build_records,
    coverage,
    growth,
    hot_functions,
    summary_numbers,
)

REPORT_VERSION = 1
DEFAULT_TOP = 20
WARNINGS_FILE = Path("nix-support/pgo-warnings.json")
OPEN_RETRIES = 5  # a merge may replace the generation between reading its path and opening it


class ReportError(Exception):
    """The report cannot be made; the message says why (exit 1)."""


class StateDenied(ReportError):
    """The state folder cannot be read by this user (exit 4)."""


class NoState(ReportError):
    """No pgod database where the state should be."""


@dataclass(frozen=True)
class Sources:
    """Where a report reads from: the state folder, and the configuration when there is one."""

    state_dir: Path
    config: Config | None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "pgod.sqlite"


# ---- the database, read-only -------------------------------------------------------------------
def open_state(db_path: Path) -> sqlite3.Connection:
    """The state database, read-only. Without a -wal file no daemon has it open, so it is opened
    immutable: a plain read-only open would still create -wal and -shm beside it. (A daemon that
    starts during such a read is not seen; should its first checkpoint rewrite pages under the
    reader, SQLite reports an error and the report fails: run it again.)"""
    try:
        os.stat(db_path)
    except FileNotFoundError:
        raise NoState(f"no pgod database at {db_path}: has the daemon run with this state_dir?") from None
    except PermissionError:
        raise StateDenied(f"cannot read {db_path.parent}: permission denied (the state folder is root's)") from None
    if not os.access(db_path, os.R_OK):
        raise StateDenied(f"cannot read {db_path}: permission denied (the state folder is root's)")
    live = os.path.exists(f"{db_path}-wal")
    uri = f"file:{quote(str(db_path))}?mode=ro" + ("" if live else "&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        connection.execute("SELECT 1 FROM packages LIMIT 1").fetchall()
    except sqlite3.Error as err:
        raise ReportError(f"cannot read the database {db_path}: {err}") from None
    return connection


def _rows(connection: sqlite3.Connection, sql: str, *args) -> list[dict]:
    return [dict(row) for row in connection.execute(sql, args)]


# ---- llvm-profdata on pgod's files --------------------------------------------------------------
def tool_user(sources: Sources) -> Identity | None:
    """Whom llvm-profdata runs as: the daemon's merge user when the report runs as root (a
    merged profile is still what the tool made of files any user wrote), else whoever runs it."""
    try:
        return Identity.for_user(sources.config.merge_user if sources.config else DEFAULT_MERGE_USER)
    except ConfineError as err:
        raise ReportError(str(err)) from None


def _open_profile(path: str) -> int:
    """A memfd holding the profile: the tool, run as another user, reads it through its
    descriptor, which a reopening of the root-only file itself would refuse."""
    return memfd_holding("pgod-report-profile", read_own(Path(path)))


def show_profile(profdata: str, fd: int, identity: Identity | None = None):
    """Every function's counts (`show --all-functions --counts`: the IR or front-end level)."""
    argv = [profdata, "show", "--all-functions", "--counts", f"/proc/self/fd/{fd}"]
    return parse_show(run_tool(argv, pass_fds=[fd], identity=identity))


def overlap_profiles(profdata: str, base_fd: int, test_fd: int, identity: Identity | None = None) -> dict[str, str]:
    argv = [profdata, "overlap", f"/proc/self/fd/{base_fd}", f"/proc/self/fd/{test_fd}"]
    return parse_overlap(run_tool(argv, pass_fds=[base_fd, test_fd], identity=identity))


def profile_match(out_path: str | None) -> dict | None:
    """What the optimize adapter counted of clang's profile warnings for this build."""
    if not out_path:
        return None
    path = Path(out_path) / WARNINGS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"file": str(path), "unavailable": f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"}
    if not isinstance(data, dict):
        return {"file": str(path), "unavailable": "not a JSON object"}
    keys = ("profile", "profile_functions", "translation_units_warned", "functions_in_warned_units",
            "mismatched_functions", "missing_functions", "unprofiled_files")
    return {"file": str(path), **{key: data.get(key) for key in keys}}


def generations(profile_link: Path | None) -> dict:
    """The Nix profile's generations, read from its links (`<name>-<N>-link`), not nix-env."""
    if profile_link is None:
        return {"profile_link": None, "current": None, "generations": []}
    try:
        target = os.readlink(profile_link)
    except OSError:
        target = None
    name = profile_link.name
    pattern = re.compile(re.escape(name) + r"-(\d+)-link")
    current = None
    if target is not None and (match := pattern.fullmatch(os.path.basename(target))):
        current = int(match.group(1))
    listed = []
    try:
        entries = os.listdir(profile_link.parent)
    except OSError:
        entries = []
    for entry in entries:
        if match := pattern.fullmatch(entry):
            link = profile_link.parent / entry
            try:
                listed.append({"generation": int(match.group(1)), "at": os.lstat(link).st_mtime,
                               "store_path": os.readlink(link)})
            except OSError:
                continue
    listed.sort(key=lambda g: g["generation"])
    previous = [g["generation"] for g in listed if current is not None and g["generation"] < current]
    return {"profile_link": str(profile_link), "current": current, "previous": previous[-1] if previous else None,
            "generations": listed}


def _profdata(sources: Sources, name: str) -> str:
    package: PackageConfig | None = sources.config.packages.get(name) if sources.config else None
    if package is not None:
        return profdata_for(package)
    import shutil

    return shutil.which("llvm-profdata") or "llvm-profdata"


def _read_package(connection: sqlite3.Connection, name: str) -> tuple[dict, int | None]:
    """The package row, with its current profile opened (a descriptor, or None without one).
    A merge may commit a new generation and delete the old between the read and the open: then
    the row is read again."""
    for _attempt in range(OPEN_RETRIES):
        rows = _rows(connection, "SELECT * FROM packages WHERE name = ?", name)
        if not rows:
            raise ReportError(f"{name}: no record in the state database yet")
        row = rows[0]
        if not row["profile_path"]:
            return row, None
        try:
            return row, _open_profile(row["profile_path"])
        except FileNotFoundError:
            continue
        except PermissionError:
            raise StateDenied(f"cannot read {row['profile_path']}: permission denied") from None
    raise ReportError(f"{name}: its profile kept changing while being opened")


def maturity(connection: sqlite3.Connection, row: dict, config: Config | None) -> dict:
    """How settled the profile is, checkpoint by checkpoint (schedule/maturity.py), and the
    settings the daemon decides with (its defaults without a configuration)."""
    try:
        points = list(reversed(_rows(connection, "SELECT * FROM checkpoints WHERE package = ? ORDER BY id DESC LIMIT ?",
                                     row["name"], MERGE_HISTORY_KEPT)))
    except sqlite3.OperationalError:  # a state of a pgod from before checkpoints
        points = []
    settled = config.settled_percent if config else DEFAULT_SETTLED_PERCENT
    rebuild = config.rebuild_change_percent if config else DEFAULT_REBUILD_CHANGE_PERCENT
    return {"points": [{key: point[key] for key in ("at", "generation", "total_raw_bytes", "step_changed",
                                                     "since_build_changed", "count_sum", "functions", "functions_run")}
                       for point in points],
            "settled_percent": settled, "rebuild_change_percent": rebuild, "waiting": row.get("maturity_wait")}


def package_report(connection: sqlite3.Connection, sources: Sources, name: str, top: int) -> dict:
    identity = tool_user(sources)  # first: a refusal must not leave the profile's memfd open
    row, profile_fd = _read_package(connection, name)
    profdata = _profdata(sources, name)
    merges = list(reversed(_rows(connection, "SELECT * FROM merges WHERE package = ? ORDER BY id DESC LIMIT ?", name,
                                 MERGE_HISTORY_KEPT)))
    builds = _rows(connection, "SELECT * FROM builds WHERE package = ? ORDER BY id DESC", name)
    document = {
        "name": name,
        "state": row["state"],
        "active": bool(row["active"]),
        "optimized": row["optimized"],
        "llvm_profdata": profdata,
        "profile": {"path": row["profile_path"], "generation": row["profile_generation"],
                    "raw_bytes_since_build": row["raw_bytes"], "files_since_build": row["files"],
                    "threshold_bytes": row["threshold_bytes"]},
        "hot_functions": None,
        "coverage": None,
        "growth": growth(row, merges, builds),
        "change_since_build": None,
        "maturity": maturity(connection, row, sources.config),
        "profile_match": None,
        "builds": build_records(builds),
        "activation": None,
    }
    try:
        if profile_fd is not None:
            shown = show_profile(profdata, profile_fd, identity)
            document["profile"].update(summary_numbers(shown.summary))
            document["profile"]["bytes"] = os.fstat(profile_fd).st_size
            document["hot_functions"] = hot_functions(shown.functions, top)
            document["coverage"] = coverage(shown.functions, shown.summary)
        in_use = next((b for b in builds if b["status"] == "succeeded" and b.get("out_path") == row["optimized"]), None)
        document["in_use_build"] = in_use["id"] if in_use else None
        document["change_since_build"] = _change(profdata, in_use, profile_fd, row, identity)
        document["profile_match"] = profile_match(in_use.get("out_path") if in_use else None)
    except ToolError as err:
        raise ReportError(f"{name}: {err}") from None
    finally:
        if profile_fd is not None:
            os.close(profile_fd)
    return document


def _change(profdata: str, build: dict | None, profile_fd: int | None, row: dict, identity: Identity | None) -> dict:
    """How far the current profile has moved from the one the build in use was made from:
    `llvm-profdata overlap BUILD_PROFILE CURRENT` (100 % overlap: nothing changed)."""
    if build is None:
        return {"unavailable": "no optimized build yet"}
    base = build["profile_store_path"]
    result = {"build": build["id"], "base_profile": base, "base_generation": build["profile_generation"],
              "current_generation": row["profile_generation"]}
    if profile_fd is None:
        return {**result, "unavailable": "no current profile"}
    try:
        base_fd = _open_profile(base)
    except OSError as err:
        return {**result, "unavailable": f"{base}: {err.strerror} (collected as garbage?)"}
    try:
        # Each level on its own, from the per-function counts (figures.level_overlap: the tool's
        # own overlap line is wrong for profiles with a context-sensitive level).
        base_levels = show_levels(profdata, base_fd, identity)
        current_levels = show_levels(profdata, profile_fd, identity)
        levels = {level: level_overlap(base_levels[level], current_levels[level]) for level in ("main", "cs")
                  if level == "main" or base_levels[level] or current_levels[level]}  # "cs": where there is one
        figures = overlap_profiles(profdata, base_fd, profile_fd, identity)
    finally:
        os.close(base_fd)
    main = levels["main"]
    return {
        **result,
        **main,
        "context_sensitive": levels.get("cs"),
        "llvm_profdata_overlap": figures,  # the tool's own lines, for reference
    }


def _maybe_int(text: str | None) -> int | None:
    match = re.match(r"\d+", text or "")
    return int(match.group()) if match else None


def collect(sources: Sources, names: list[str] | None = None, top: int = DEFAULT_TOP) -> dict:
    """The whole report document: every package asked for (all when ``names`` is None)."""
    connection = open_state(sources.db_path)
    try:
        if names is None:
            names = known_packages(sources)
        packages = [package_report(connection, sources, name, top) for name in names]
        profile_link = sources.config.profile_link if sources.config else None
        activation = generations(profile_link)
    finally:
        connection.close()
    for package in packages:
        package["activation"] = {
            **{k: activation[k] for k in ("profile_link", "current", "previous")},
            "in_use": package["active"],
            "rollback": "pgoctl rollback",
            "deactivate": f"pgoctl deactivate {package['name']}",
        }
    return {
        "version": REPORT_VERSION,
        "generated_at": time.time(),
        "pgod_version": __version__,
        "state_dir": str(sources.state_dir),
        "config": str(sources.config.path) if sources.config else None,
        "generations": activation,
        "packages": packages,
    }


def known_packages(sources: Sources) -> list[str]:
    """Package names a report can be made for: configured ones, then any others recorded."""
    connection = open_state(sources.db_path)
    try:
        recorded = [r["name"] for r in _rows(connection, "SELECT name FROM packages ORDER BY name")]
    finally:
        connection.close()
    configured = list(sources.config.packages) if sources.config else []
    return [n for n in configured if n in recorded] + [n for n in recorded if n not in configured]
