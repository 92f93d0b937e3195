"""How settled a package's profile is, and whether it is worth a build (issue 22).

Bytes say little: a program run a thousand times on the same input passes any threshold with a
profile that stopped changing long ago, and every later threshold would start another full
rebuild whether the profile changed or not. So the profile itself is measured:

- A **checkpoint** is taken every quarter of the package's threshold of new raw bytes: the
  profile's per-function counts (`llvm-profdata show --all-functions --counts`, and `--showcs`
  for the context-sensitive level of an IR profile), compared level by
  level with the previous checkpoint's (the **step change**) and with the profile the build in
  use was made from (the **change since the build**), by LLVM's overlap definition computed
  from the counts (pgod.profiles.overlap). A profile's change is its most changed level.
- **The decision**, once `threshold_mb` (the floor) is reached: a package with no build in use
  builds when its last SETTLED_STEPS steps each changed at most `settled_percent`; one with a
  build in use builds again only when the profile changed at least `rebuild_change_percent`
  since that build's profile. A profile still changing at CEILING_THRESHOLDS times the threshold builds anyway
  (a workload that never settles still gets its build). `pgoctl rebuild` builds at once.

A checkpoint runs llvm-profdata (as the merge user, bounded like the report's runs) on a thread
of its own, one at a time, and posts its figures back to the engine (CheckpointDone), which
records them and decides; the tool never runs on the engine thread. The last checkpoint's
profile is kept as state/checkpoints/<package>.profdata (the next step compares against it),
and the counts of it and of the build's profile are cached in memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pgod.config import Config
from pgod.confine import Identity, memfd_holding, read_own
from pgod.durable import replace_file
from pgod.osthread import name_os_thread
from pgod.profiles.overlap import level_overlap
from pgod.profiles.tool import FunctionCounts, ToolError, show_levels
from pgod.state.db import Build, Checkpoint, Package
from pgod.state.layout import Layout

log = structlog.get_logger(__name__)

CHECKPOINTS_PER_THRESHOLD = 4  # a checkpoint every quarter of the threshold's bytes
CEILING_THRESHOLDS = 4  # a profile still changing at 4× the threshold builds anyway
# Steps in a row that must stay at most settled_percent: one small step can be luck (brotli at a
# 2 MB threshold first stepped under 1 % at 4.2 MB, still ~9 % from where its profile ended up;
# benchmarks/README.md, "Maturity").
SETTLED_STEPS = 2
KEEP_CHECKPOINT_ROWS = 200  # per package; older rows are pruned (the report charts these)
RETRY_SECONDS = 60.0  # after a failed checkpoint (llvm-profdata refused the profile, or crashed)

MEASURING = "measuring the profile"  # a checkpoint of the newest profile is owed or running
Levels = dict[str, list[FunctionCounts]]  # "main" (IR or front-end), "cs" (context-sensitive)


def enabled(config: Config) -> bool:
    """Maturity decides anything (else bytes alone do, as before issue 22)."""
    return config.settled_percent < 100 or config.rebuild_change_percent > 0


def checkpoint_key(row: Package) -> str:
    """What the profile belongs to: a new profiling build or stage starts the checkpoints over."""
    return f"{row.stage}:{row.profile_build_key}"


def step_bytes(row: Package) -> int:
    return max(1, row.threshold_bytes // CHECKPOINTS_PER_THRESHOLD)


def checkpoint_due(row: Package) -> bool:
    """A new checkpoint is owed: the first of this profile, or a step of new bytes since the last.
    (Not at every merge past the threshold: a step is a quarter threshold of data, or the step
    change would shrink with the merges' size, not with the profile's settling.)"""
    if row.profile_path is None:
        return False
    if row.checkpoint_key != checkpoint_key(row):
        return True
    return row.profile_generation != row.checkpoint_generation and \
        row.total_raw_bytes - row.checkpoint_bytes >= step_bytes(row)


@dataclass(frozen=True)
class Decision:
    due: bool
    why: str  # what status shows: why it builds, or why it waits


def decide(row: Package, config: Config, build_store: str | None) -> Decision | None:
    """Is the package due for a build, by its profile? None: not past the threshold (or nothing
    to decide). The figures are the last checkpoint's (at most a step of data old); a Decision
    waits for a checkpoint when there is none of this profile, or none against the build in
    use (``build_store``: the profile it was made from)."""
    if row.build_due or row.files == 0 or row.raw_bytes < row.threshold_bytes:
        return None
    if not enabled(config):
        return Decision(True, "threshold reached")
    if row.raw_bytes >= CEILING_THRESHOLDS * row.threshold_bytes:  # also when measuring keeps failing
        return Decision(True, f"still changing at {CEILING_THRESHOLDS}× the threshold: building anyway")
    if row.checkpoint_key != checkpoint_key(row) or row.checkpoint_build != build_store:
        return Decision(False, MEASURING)
    if build_store is None:
        if row.step_changed is None:
            return Decision(False, MEASURING)
        if row.step_changed <= config.settled_percent and (row.settled_steps or 0) >= SETTLED_STEPS:
            return Decision(True, f"settled: {row.step_changed:.2f} % changed over the last step")
        return Decision(False, f"settling: {row.step_changed:.2f} % changed over the last step "
                               f"(builds after {SETTLED_STEPS} steps in a row at most {config.settled_percent:g} %)")
    changed = row.since_build_changed
    if changed is not None and changed >= config.rebuild_change_percent:
        return Decision(True, f"changed {changed:.2f} % since the build in use")
    shown = "?" if changed is None else f"{changed:.2f}"
    return Decision(False, f"unchanged: {shown} % since the build in use (builds at {config.rebuild_change_percent:g} %)")


def apply_decisions(session: Session, config: Config) -> list[str]:
    """Decide for every package past its threshold (engine thread, in its transaction): mark
    the due ones and keep why the others wait. Returns the packages whose state changed."""
    changed = []
    for row in session.scalars(select(Package)):
        if row.build_due or row.files == 0 or row.raw_bytes < row.threshold_bytes:
            if row.maturity_wait is not None:
                row.maturity_wait = None
                changed.append(row.name)
            continue
        decision = decide(row, config, build_profile(session, row))
        if decision is None:
            continue
        if not decision.due and decision.why == MEASURING and row.maturity_wait is not None:
            continue  # a newer profile is being measured: the last reason stands until then
        if decision.due:
            row.build_due = True
            row.maturity_wait = None
            changed.append(row.name)
            log.info("build.due", package=row.name, why=decision.why, raw_bytes=row.raw_bytes)
        elif row.maturity_wait != decision.why:
            row.maturity_wait = decision.why
            changed.append(row.name)
            log.info("build.waits_for_profile", package=row.name, why=decision.why)
    return changed


def build_profile(session: Session, row: Package) -> str | None:
    """The store path of the profile the build in use was made from, if one is in use."""
    if row.optimized is None:
        return None
    return session.scalar(
        select(Build.profile_store_path)
        .where(Build.package == row.name, Build.out_path == row.optimized, Build.stage == "optimize")
        .order_by(Build.id.desc()).limit(1))


@dataclass
class CheckpointDone:
    """A checkpoint's figures, for the engine's queue."""

    package: str
    key: str
    generation: int
    total_raw_bytes: int
    saved: Path | None  # the profile copy, renamed over the package's checkpoint file on record
    build_store: str | None  # the profile of the build in use it was compared with
    step_changed: float | None = None
    since_build_changed: float | None = None
    count_sum: int = 0
    functions: int = 0
    functions_run: int = 0
    seconds: float = 0.0
    error: str | None = None


class Maturity:
    """Takes checkpoints (one at a time, on a thread) and records them; see the module docstring."""

    def __init__(self, config: Config, layout: Layout, sessions: sessionmaker[Session], profdata: dict[str, str],
                 identity: Identity | None, post: Callable[[object], None], emit: Callable[..., None]) -> None:
        self.config = config
        self.sessions = sessions
        self._folder = layout.state / "checkpoints"
        self._profdata = profdata
        self._identity = identity
        self._post = post
        self._emit = emit
        self.running: str | None = None  # the package whose checkpoint runs now
        # Parsed counts, so each profile is shown once: per package, the last checkpoint's (with
        # its key) and its build profile's (with its store path): one of each, however many builds.
        self._last: dict[str, tuple[str, Levels]] = {}
        self._builds: dict[str, tuple[str, Levels]] = {}
        self._retry_at: dict[str, float] = {}  # a failed checkpoint is tried again then (monotonic)

    def checkpoint_when_due(self) -> None:
        """Start the next owed checkpoint, if none runs (engine thread, after merges)."""
        if self.running is not None:  # (taken with maturity off too: the build order uses the counts)
            return
        now = time.monotonic()
        with self.sessions() as session:
            for name in self.config.packages:
                if self._retry_at.get(name, 0.0) > now:
                    continue  # failed a moment ago: not again at every merge
                row = session.get(Package, name)
                if row is not None and checkpoint_due(row):
                    self._start(session, row)
                    return

    def _start(self, session: Session, row: Package) -> None:
        name, key = row.name, checkpoint_key(row)
        try:
            data = read_own(Path(row.profile_path))
        except OSError as err:  # replaced by a newer generation meanwhile: the next merge retries
            log.warning("maturity.unreadable", package=name, error=str(err))
            return
        base_store = build_profile(session, row)
        done = CheckpointDone(name, key, row.profile_generation, row.total_raw_bytes, None, base_store)
        # The last checkpoint is a base only on the same line (profiling build and stage, and
        # not reset since: the row's key says so); else this is the line's first.
        last = self._last.get(name) if row.checkpoint_key == key else None
        previous_file = self._folder / f"{name}.profdata" if row.checkpoint_key == key else None
        self.running = name

        def run() -> None:
            name_os_thread()
            started = time.monotonic()
            try:
                current = self._show(name, data)
                previous = last[1] if last is not None and last[0] == key else None
                if previous is None and last is None and previous_file is not None and previous_file.exists():
                    previous = self._show(name, read_own(previous_file))  # after a restart
                since = None
                if base_store is not None:
                    cached = self._builds.get(name)
                    if cached is None or cached[0] != base_store:
                        cached = self._builds[name] = (base_store, self._show(name, read_own(Path(base_store))))
                    since = cached[1]
                done.step_changed = _changed(previous, current)
                done.since_build_changed = _changed(since, current)
                everything = [f for functions in current.values() for f in functions]
                done.count_sum = sum(f.total for f in everything)
                done.functions = len(current["main"])
                done.functions_run = sum(1 for f in current["main"] if f.total > 0)
                self._folder.mkdir(mode=0o700, exist_ok=True)
                saved = self._folder / f"{name}.next.profdata"
                replace_file(saved, data)
                done.saved = saved
                self._last[name] = (key, current)
            except (ToolError, OSError) as err:
                done.error = str(err)
            except Exception as err:  # the thread's boundary: the engine must hear back
                log.exception("maturity.crashed", package=name)
                done.error = f"{type(err).__name__}: {err}"
            done.seconds = time.monotonic() - started
            self._post(done)

        threading.Thread(target=run, name=f"pgod-ckpt-{name}"[:15], daemon=True).start()

    def _show(self, name: str, data: bytes) -> Levels:
        fd = memfd_holding("pgod-checkpoint", data)
        try:
            return show_levels(self._profdata[name], fd, self._identity)
        finally:
            os.close(fd)

    def on_checkpoint_done(self, done: CheckpointDone) -> list[str]:
        """Record the figures (engine thread), keep the profile for the next step, decide."""
        self.running = None
        if done.error is not None:
            self._retry_at[done.package] = time.monotonic() + RETRY_SECONDS
            log.warning("maturity.failed", package=done.package, error=done.error, retry_in=RETRY_SECONDS,
                        hint=f"past {CEILING_THRESHOLDS}x its threshold the package builds unmeasured")
            self._emit("counters", package=done.package)
            return []
        now = time.time()
        with self.sessions.begin() as session:
            row = session.get(Package, done.package)
            if row is None:
                return
            session.add(Checkpoint(package=done.package, at=now, generation=done.generation,
                                   total_raw_bytes=done.total_raw_bytes, step_changed=done.step_changed,
                                   since_build_changed=done.since_build_changed, count_sum=done.count_sum,
                                   functions=done.functions, functions_run=done.functions_run))
            small = done.step_changed is not None and done.step_changed <= self.config.settled_percent
            same_line = row.checkpoint_key == done.key
            row.settled_steps = (row.settled_steps or 0) + 1 if small and same_line else int(small)
            row.checkpoint_generation = done.generation
            row.checkpoint_bytes = done.total_raw_bytes
            row.checkpoint_key = done.key
            row.step_changed = done.step_changed
            row.since_build_changed = done.since_build_changed
            row.checkpoint_build = done.build_store
            row.count_sum = done.count_sum
            _prune(session, done.package)
            log.info("maturity.checkpoint", package=done.package, generation=done.generation,
                     step_changed=done.step_changed, since_build_changed=done.since_build_changed,
                     count_sum=done.count_sum, functions_run=done.functions_run, seconds=round(done.seconds, 3))
            due = apply_decisions(session, self.config)
        if done.saved is not None:
            os.replace(done.saved, self._folder / f"{done.package}.profdata")
        self._emit("counters", package=done.package)
        return due

    def decide(self) -> list[str]:
        """After a merge (engine thread): decide with the figures there are, and start the next
        checkpoint if one is owed. Returns the packages whose state changed."""
        with self.sessions.begin() as session:
            due = apply_decisions(session, self.config)
        self.checkpoint_when_due()
        return due


def _changed(base: Levels | None, current: Levels) -> float | None:
    """The most changed level's percentage (None: nothing to compare against). A level the base
    lacks is new, not changed: the context-sensitive level appears with the second stage's first
    profiles, which is no step of the first level's settling."""
    if base is None:
        return None
    changes = [level_overlap(base[level], current.get(level, []))["changed_percent"]
               for level in ("main", "cs") if base.get(level)]
    return max(changes, default=None)


def _prune(session: Session, name: str) -> None:
    ids = session.scalars(select(Checkpoint.id).where(Checkpoint.package == name)
                          .order_by(Checkpoint.id.desc()).offset(KEEP_CHECKPOINT_ROWS)).all()
    for checkpoint_id in ids:
        session.delete(session.get(Checkpoint, checkpoint_id))
