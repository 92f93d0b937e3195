"""llvm-profdata's verdicts: culprits are quarantined with its message, the rest is merged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.programs import WORKLOAD_C, workload_inputs
from conftest import require_clang
from testbed.daemon import wait_for
from pgod.confine import Identity
from pgod.merge.confined import MergeInput, MergeSandbox, gather_inputs, merge_batch


@pytest.fixture(scope="module")
def clang19():
    return require_clang(19)


def test_a_profile_the_package_tool_cannot_read_is_quarantined_and_the_rest_merged(pgod, clang14, clang19, tmp_path):
    """One package holding programs from two compilers: its llvm-profdata (14) refuses clang 19's
    raw format. Those files are parked with the tool's own words; clang 14's are counted."""
    build = tmp_path / "build"
    (build / "bin").mkdir(parents=True)
    source = tmp_path / "w.c"
    source.write_text(WORKLOAD_C)
    old = clang14.compile(source, build / "bin" / "w14")
    new = clang19.compile(source, build / "bin" / "w19")
    pgod.write_config({"mixed": {"profile_build": [str(build)], "build": ["true"], "llvm_profdata": str(clang14.profdata)}})
    daemon = pgod.daemon()
    for args in workload_inputs(6):
        run_instrumented(old, args, pgod.spool / "%p.profraw")
        run_instrumented(new, args, pgod.spool / "%p.profraw")
    package = wait_for(
        lambda: (p := daemon.package("mixed"))["files"] + p["quarantined"] == 12 and p, 30, "every file settled"
    )
    assert package["files"] == 6 and package["quarantined"] == 6
    shown = daemon.pgoctl("show", "mixed", "--json").stdout
    assert "llvm-profdata" in shown and "unsupported instrumentation profile format version" in shown
    assert daemon.status()["quarantine"]["files"] == 6


def test_a_batch_the_environment_fails_counts_nothing_and_blames_no_input(tmp_path, clang14):
    """No output can be stored, or no tool: no input is blamed, and the caller keeps every file
    for a later retry."""
    raw = tmp_path / "raw"
    raw.mkdir()
    exe = clang14.compile(_write(tmp_path / "w.c", WORKLOAD_C), tmp_path / "w")
    run_instrumented(exe, ["5"], raw / "a.profraw")
    inputs = [MergeInput(str(raw / "a.profraw"), (raw / "a.profraw").stat().st_size, None)]
    sandbox = _sandbox(tmp_path)
    outcome = merge_batch(str(clang14.profdata), None, gather_inputs(inputs, {}), tmp_path / "missing-dir" / "out.profdata", sandbox)
    assert not outcome.merged and outcome.rejected == {}
    assert outcome.failure is not None and not outcome.failure.inputs_at_fault, outcome.failure
    outcome = merge_batch("/nonexistent/llvm-profdata", None, gather_inputs(inputs, {}), tmp_path / "out.profdata", sandbox)
    assert outcome.failure.detail == "llvm-profdata not found: /nonexistent/llvm-profdata"
    assert not outcome.failure.inputs_at_fault


def _sandbox(tmp_path: Path) -> MergeSandbox:
    """Confinement as the daemon sets it up: the merge user and a work folder its group may write."""
    identity = Identity.for_user("pgod-merge")
    work = tmp_path / "merge-work"
    work.mkdir(mode=0o770)
    if identity is not None:
        os.chown(work, -1, identity.gid)
    return MergeSandbox(identity, work)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
