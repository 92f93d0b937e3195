"""Which stage of profile-guided optimization a package is in, and what its next build is.

With `cs_build` configured, a package goes through two stages (LLVM's context-sensitive PGO):

  first  profiles come from `profile_build` (IR instrumentation). At the threshold, `cs_build`
         builds the IR-optimized variant instrumented again after inlining, and that build is
         put in use in the profiling build's place: it is already faster, and it writes the
         second stage's ("CS") raw profiles.
  cs     profiles come from that build (`stage_build`); they are merged into the same working
         profile, on top of the first stage's, which is what clang's CS-PGO wants: one profile
         with both levels. At `cs_threshold_mb`, `build` makes the final variant, and every
         later rebuild too.

Without `cs_build` a package stays in the first stage and `build` makes the final variant.
A changed `profile_build` (an upgrade) starts again at the first stage (adoption.py, Adoption._upgrade).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from pgod.config import PackageConfig
    from pgod.state.db import Package

FIRST, CONTEXT_SENSITIVE = "first", "cs"
CS_PROFILE, OPTIMIZE = "cs-profile", "optimize"  # what a build makes (Build.stage)
STAGE_NAMES = {FIRST: "first", CONTEXT_SENSITIVE: "context-sensitive"}


def next_build(package: PackageConfig, row: Package) -> tuple[str, tuple[str, ...]]:
    """What the package's next build makes, and the argv that makes it."""
    if package.cs_build is not None and row.stage == FIRST and row.profile_kind != "fe":
        return CS_PROFILE, package.cs_build
    return OPTIMIZE, package.build


def threshold_for(package: PackageConfig, row: Package) -> int:
    """The raw-profile bytes the current stage collects before its build."""
    if row.stage == CONTEXT_SENSITIVE and package.cs_threshold_bytes is not None:
        return package.cs_threshold_bytes
    return package.threshold_bytes


def in_use(row: Package, active: bool | None = None) -> str | None:
    """The store path that should be in the package's place: the optimized build while active
    (or if `active` says it is to be), else the context-sensitive stage's build, else nothing
    (the declared profiling build)."""
    if (row.active if active is None else active) and row.optimized:
        return row.optimized
    return row.stage_build if row.stage == CONTEXT_SENSITIVE else None


def enter_context_sensitive(row: Package, package: PackageConfig, stage_build: str) -> None:
    """The stage's build is in use from now on. What was merged while it was built came from the
    first stage's programs: the counters start again, so the final build waits for the second
    stage's own profiles."""
    row.stage = CONTEXT_SENSITIVE
    row.stage_build = stage_build
    row.threshold_bytes = threshold_for(package, row)
    row.state = "active" if row.active else "profiling"
    row.raw_bytes = row.files = 0
    row.build_due = False


def back_to_first(row: Package, package: PackageConfig) -> None:
    """An upgrade: the new version's own profiling build is in the system, start over with it."""
    row.stage = FIRST
    row.stage_build = None
    row.threshold_bytes = package.threshold_bytes


def describe(package: PackageConfig, row: Package) -> dict:
    """For status: the stage by name, how many the package goes through, what is in use."""
    return {
        "stage": STAGE_NAMES.get(row.stage, row.stage),
        "stages": 2 if package.cs_build is not None else 1,
        "stage_build": row.stage_build,
        "in_use": in_use(row),
    }
