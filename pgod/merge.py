"""Run llvm-profdata to fold a batch of raw profiles into a package's indexed profile.

One process per batch (spawning one per file is the slow path, LLVM-NOTES.md). The batch is
merged with ``--failure-mode=all`` so one bad input does not sink the rest: llvm-profdata
names each input it could not read on stderr, and those become the culprits to quarantine,
with the tool's own message. A failure that names no input (disk full, a missing tool) is an
error of the batch as a whole, and nothing in it is counted.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MERGE_TIMEOUT_SECONDS = 600


@dataclass
class MergeOutcome:
    """What one llvm-profdata call did."""

    merged: bool  # output written; inputs not in `rejected` are now counted in it
    rejected: dict = field(default_factory=dict)  # input (as given) → llvm-profdata's message
    error: str | None = None  # the batch failed as a whole; nothing was counted
    seconds: float = 0.0


def merge_batch(profdata: str, base: Path | None, inputs: Sequence[str | Path], output: Path) -> MergeOutcome:
    """Merge ``base`` (the current indexed profile, if any) and ``inputs`` into ``output``.

    ``output`` is written and fsynced only when the call succeeds; the caller records the new
    generation in the database and only then deletes the inputs.
    """
    started = time.monotonic()
    try:
        proc = _run_merge(profdata, base, inputs, output)
    except FileNotFoundError as err:
        if err.filename == profdata:
            return MergeOutcome(False, error=f"llvm-profdata not found: {profdata}")
        return MergeOutcome(False, error=f"cannot write the input list: {err}")
    except OSError as err:  # disk full, read-only state folder: the batch waits for a retry
        return MergeOutcome(False, error=f"cannot write the input list: {err}")
    except subprocess.TimeoutExpired:
        return MergeOutcome(False, error=f"llvm-profdata timed out after {MERGE_TIMEOUT_SECONDS} s")
    outcome = MergeOutcome(False, seconds=time.monotonic() - started)
    outcome.rejected = _rejected_inputs(proc.stderr, set(inputs))
    if base is not None and base in _rejected_inputs(proc.stderr, {base}):
        outcome.error = f"the working profile {base} is unreadable: {proc.stderr.strip()}"
        return outcome
    if proc.returncode == 0:
        _fsync(output)
        outcome.merged = True
    elif len(outcome.rejected) != len(inputs) or base is not None:
        # Not every input was named: the failure is the batch's (I/O, tool), not the inputs'.
        outcome.rejected = {}
        outcome.error = f"llvm-profdata exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    # else: every input was rejected and there was no base, so there is nothing to write.
    return outcome


def _run_merge(profdata: str, base: Path | None, inputs: Sequence[str | Path], output: Path) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", dir=output.parent, prefix=".inputs-", suffix=".txt") as listing:
        listing.write("".join(f"{path}\n" for path in inputs))
        listing.flush()
        argv = [profdata, "merge", "--failure-mode=all", "-o", str(output)]
        if base is not None:
            argv.append(str(base))
        argv += ["-f", listing.name]
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=MERGE_TIMEOUT_SECONDS)


def _rejected_inputs(stderr: str, inputs: set) -> dict:
    """Inputs llvm-profdata warned about: lines of the form ``warning: <path>: <message>``."""
    by_name = {str(path): path for path in inputs}
    rejected: dict[Path, str] = {}
    for line in stderr.splitlines():
        for prefix in ("warning: ", "error: "):
            if not line.startswith(prefix):
                continue
            name, sep, message = line[len(prefix) :].partition(": ")
            if sep and name in by_name:
                rejected[by_name[name]] = message.strip()
    return rejected


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
