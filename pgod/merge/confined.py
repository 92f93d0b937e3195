"""Run llvm-profdata, confined, to fold a batch of raw profiles into a package's indexed profile.

One process per batch (spawning one per file is the slow path, LLVM-NOTES.md).

The inputs are files any local user wrote, and crafted ones crash llvm-profdata, make it
allocate gigabytes or write hundreds of megabytes, so it never reads anything a user can still
change and never runs as root:
- pgod reads each part again and keeps it only if its bytes are still those it checked at ingest
  (the digest in its row): a lone part stays in the claimed file, whose writer may hold it open.
  The batch's parts go, one after the other as in a multi-part file, into one memfd, and the
  current profile into another; llvm-profdata reads those (``/proc/self/fd/N``), which no one
  else can reach, and writes into a folder of its own.
- it runs as the unprivileged merge user inside limits scaled to the batch's bytes (confine.py);
  its output is checked against the expansion bound and copied into a root-owned file before it
  becomes a generation.

How a run fails decides what happens next (merge/batches.py): a failure the inputs caused (a crash,
a limit, a timeout, an input llvm-profdata refused) is narrowed down to its culprits, which are
quarantined with the reason; a failure of the environment (disk full, the tool missing, an
unreadable working profile) is nobody's input, and the batch waits for a retry, nothing counted.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgod.confine import ConfineError, Finished, Identity, Limits, memfd_holding, read_own, run_confined, write_all
from pgod.durable import fsync_dir, is_disk_full, unlink_if_present
from pgod.intake.profraw import ProfrawError, parse_profraw, part_digest

# Limits for one llvm-profdata run, from the bytes it reads (the raw inputs and the current
# profile). Real profiles merge into about their own size (Lua: 118 KB raw → 150 KB indexed) and a
# small multiple of it in memory, past a fixed cost (libLLVM, thread stacks, malloc arenas).
MEMORY_FIXED_BYTES = 512 << 20
MEMORY_PER_INPUT_BYTE = 8
OUTPUT_FIXED_BYTES = 1 << 20
OUTPUT_PER_INPUT_BYTE = 4
CPU_FIXED_SECONDS = 30
CPU_SECONDS_PER_MIB = 1
WALL_FIXED_SECONDS = 60

DISK_FULL = "disk-full"  # the environment failure that passes by itself: retried soon
_OUT_OF_MEMORY = ("out of memory", "Allocation failed", "bad_alloc", "Cannot allocate memory")


@dataclass(frozen=True)
class MergeSandbox:
    """Whom llvm-profdata runs as and where it may write."""

    identity: Identity | None  # None: the daemon is not root, and runs it as itself
    workdir: Path  # its one writable folder: the daemon's, writable by the merge user's group


@dataclass(frozen=True)
class MergeInput:
    """One raw profile to merge: where it is, and the size and digest it had when checked."""

    path: str
    size: int
    digest: str | None  # None: recorded before digests were (schema 1), taken as it is


@dataclass(frozen=True)
class MergeFailure:
    """Why a run counted nothing."""

    reason: str  # the quarantine reason when one input alone causes it, e.g. "merge-crash"
    detail: str
    inputs_at_fault: bool  # False: the environment's (disk full, missing tool), retry later


@dataclass
class MergeOutcome:
    """What one llvm-profdata run did."""

    merged: bool  # output written; inputs not in `rejected` are now counted in it
    rejected: dict = field(default_factory=dict)  # input path → (reason, detail) to quarantine
    failure: MergeFailure | None = None  # the run failed as a whole; nothing was counted
    seconds: float = 0.0


def limits_for(input_bytes: int) -> Limits:
    """The limits of one run reading ``input_bytes`` (inputs and current profile together)."""
    cpu = CPU_FIXED_SECONDS + CPU_SECONDS_PER_MIB * (input_bytes >> 20)
    return Limits(
        memory_bytes=MEMORY_FIXED_BYTES + MEMORY_PER_INPUT_BYTE * input_bytes,
        cpu_seconds=cpu,
        output_bytes=OUTPUT_FIXED_BYTES + OUTPUT_PER_INPUT_BYTE * input_bytes,
        wall_seconds=WALL_FIXED_SECONDS + 2 * cpu,
    )


@dataclass
class Gathered:
    """A batch's checked bytes, back to back in a memfd, and the inputs left out, with why."""

    fd: int
    size: int
    rejected: dict  # input path → ("changed-after-check", detail)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def instrumentation_family(kind: str | None) -> str | None:
    """"fe" or "ir" (the context-sensitive stage's profiles belong with IR ones)."""
    return "ir" if kind == "cs-ir" else kind


def gather_inputs(inputs: Sequence[MergeInput], checked: Mapping[str, bytes], kind: str | None = None) -> Gathered:
    """Every input whose bytes are still those checked at ingest, into one memfd: from
    ``checked`` (the bytes ingest read, kept in memory) when there, else read again and held
    against the digest. The memfd is the caller's to hand to merge_batch, which closes it.

    With ``kind`` ("fe", "ir", or "cs-ir" in the context-sensitive stage), an input of another
    instrumentation kind is left out: llvm-profdata merges front-end and IR profiles without a
    word and labels the result IR, a profile no build can use well (parts claimed before a
    package switched kinds, or a stray build's)."""
    fd = os.memfd_create("pgod-inputs", os.MFD_CLOEXEC)
    gathered = Gathered(fd, 0, {})
    try:
        for item in inputs:
            data = checked.get(item.path)
            if data is None:
                try:
                    data = _read_checked(item)
                except _Changed as err:
                    gathered.rejected[item.path] = ("changed-after-check", str(err))
                    continue
            if kind is not None and (refusal := _kind_refusal(_kind_of(data), kind)) is not None:
                gathered.rejected[item.path] = refusal
                continue
            write_all(fd, data)
            gathered.size += len(data)
    except BaseException:
        gathered.close()
        raise
    return gathered


def _kind_refusal(found: str | None, kind: str) -> tuple[str, str] | None:
    """Why a raw profile of kind ``found`` stays out of a merge into a ``kind`` profile, or None.
    "cs-ir": the context-sensitive stage, whose profile takes the stage's own profiles only."""
    if found is None:
        return None
    if kind == "cs-ir" and found == "ir":
        return ("first-stage-profile", "an IR profile of the first stage's build, after the context-sensitive stage"
                " began: the final profile keeps the first stage's part exactly as the stage's build was made from it")
    if instrumentation_family(found) != instrumentation_family(kind):
        return ("instrumentation-mismatch",
                f"a {found} raw profile for a package whose profile is {kind}: kinds are never merged together")
    return None


def _kind_of(data: bytes) -> str | None:
    """The instrumentation kind of a raw profile's first part, or None if it cannot be told
    (a malformed part is llvm-profdata's to judge, as before)."""
    try:
        parts = parse_profraw(data)
    except ProfrawError:
        return None
    return parts[0].instrumentation if parts else None


def merge_batch(profdata: str, base: Path | None, gathered: Gathered, output: Path, sandbox: MergeSandbox) -> MergeOutcome:
    """Merge ``base`` (the current indexed profile, if any) and the ``gathered`` inputs into
    ``output``, a new root-owned file that is fsynced when the call succeeds; the caller records
    the generation in the database and only then deletes the inputs."""
    started = time.monotonic()
    rejected = gathered.rejected
    descriptors: list[int] = [gathered.fd]
    gathered.fd = -1  # closed below, with the others
    if not os.access(profdata, os.X_OK):
        os.close(descriptors[0])
        return _env_failure(f"llvm-profdata not found: {profdata}")
    try:
        try:
            base_fd = memfd_holding("pgod-profile", read_own(base)) if base is not None else None
        except OSError as err:
            return _env_failure(f"the working profile {base} is unreadable: {err.strerror}")
        if base_fd is not None:
            descriptors.append(base_fd)
        inputs_fd, input_bytes = descriptors[0], gathered.size
        if input_bytes == 0:  # every input changed since it was checked: nothing to run
            return MergeOutcome(False, rejected)
        base_bytes = os.fstat(base_fd).st_size if base_fd is not None else 0
        limits = limits_for(input_bytes + base_bytes)
        produced = sandbox.workdir / output.name
        unlink_if_present(produced)
        work_fd = os.open(sandbox.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        descriptors.append(work_fd)
        base_as = f"/proc/self/fd/{base_fd}" if base_fd is not None else None
        inputs_as = f"/proc/self/fd/{inputs_fd}"
        argv = [profdata, "merge", "--failure-mode=all", "-o", f"/proc/self/fd/{work_fd}/{output.name}"]
        argv += [base_as, inputs_as] if base_as else [inputs_as]
        try:
            finished = run_confined(argv, limits, sandbox.identity, pass_fds=descriptors)
        except ConfineError as err:
            return _env_failure(str(err))
        except OSError as err:
            return _env_failure(f"cannot start llvm-profdata: {err}")
    finally:
        for fd in descriptors:
            os.close(fd)
    seconds = time.monotonic() - started
    try:
        outcome = _judge(finished, limits, base_as, inputs_as)
        outcome.seconds = seconds
        if outcome.merged:
            _store(produced, output, limits.output_bytes)
    except _BadOutput as err:
        outcome = MergeOutcome(False, failure=MergeFailure("merge-output", str(err), True), seconds=seconds)
    except OSError as err:  # disk full, read-only state folder: nobody's input
        outcome = _env_failure(f"cannot store the merged profile: {err}", DISK_FULL if is_disk_full(err) else "merge-io")
    finally:
        unlink_if_present(produced)
    if outcome.failure is None:
        outcome.rejected.update(rejected)
    return outcome


class _Changed(Exception):
    """A part's bytes are not the ones checked at ingest."""


def _read_checked(item: MergeInput) -> bytes:
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Changed("its file is gone") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Changed("it is no longer a plain file")
        data = os.read(fd, item.size + 1)
    finally:
        os.close(fd)
    if len(data) != item.size:
        raise _Changed(f"it was {item.size} bytes when checked and is {len(data)}{'+' if len(data) > item.size else ''} now")
    if item.digest is not None and part_digest(data) != item.digest:
        raise _Changed("its bytes were rewritten after they were checked")
    return data


def _judge(finished: Finished, limits: Limits, base_as: str | None, inputs_as: str) -> MergeOutcome:
    """What the run's exit says about the batch (``base_as``, ``inputs_as``: the names the tool
    was given for the working profile and for the batch's parts)."""
    stderr = finished.stderr.strip()
    tail = stderr[-2000:]
    if finished.timed_out:
        return _input_failure("merge-timeout", f"llvm-profdata ran past {limits.wall_seconds:.0f} s and was killed")
    signame = finished.signal_name
    if signame == "SIGXFSZ":
        return _input_failure("merge-output-limit", f"llvm-profdata's output passed {limits.output_bytes} bytes (the expansion bound)")
    if signame == "SIGXCPU":
        return _input_failure("merge-cpu-limit", f"llvm-profdata used more than {limits.cpu_seconds} s of CPU")
    if any(marker in stderr for marker in _OUT_OF_MEMORY):
        return _input_failure("merge-memory-limit", f"llvm-profdata ran out of its {limits.memory_bytes >> 20} MiB: {tail[-300:]}")
    if signame is not None:
        return _input_failure("merge-crash", f"llvm-profdata was killed by {signame}: {tail[-600:]}")
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return _env_failure(f"disk full: {tail}", DISK_FULL)
    named = _named(stderr, {name for name in (base_as, inputs_as) if name})
    if base_as in named:
        return _env_failure(f"the working profile is unreadable: {named[base_as]}")
    if inputs_as in named:  # the batch was refused: narrowed down to the parts that are
        return _input_failure("llvm-profdata", named[inputs_as])
    if finished.returncode != 0:
        # It named no input and was not killed: the tool or its surroundings failed (a wrong
        # tool, a missing library). Blaming the inputs would quarantine every good file.
        return _env_failure(f"llvm-profdata exited {finished.returncode}: {tail}")
    return MergeOutcome(True)


def _named(stderr: str, names: set[str]) -> dict[str, str]:
    """Inputs llvm-profdata complained about: lines of the form ``warning: <path>: <message>``."""
    named: dict[str, str] = {}
    for line in stderr.splitlines():
        for prefix in ("warning: ", "error: "):
            if not line.startswith(prefix):
                continue
            name, sep, message = line[len(prefix) :].partition(": ")
            if sep and name in names:
                named[name] = message.strip()
    return named


class _BadOutput(Exception):
    """The tool's output is not a file it could have written honestly."""


def _store(produced: Path, output: Path, bound: int) -> None:
    """Copy the tool's output into ``output``, root-owned, and make it durable. A copy, not a
    rename: the merge user owns the produced inode and could still hold it open."""
    fd = os.open(produced, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise _BadOutput(f"llvm-profdata's output is not a plain file (mode {info.st_mode:o}, {info.st_nlink} links)")
        if not 0 < info.st_size <= bound:
            raise _BadOutput(f"llvm-profdata's output is {info.st_size} bytes, outside 1…{bound} (the expansion bound)")
        out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            copied = 0
            while chunk := os.sendfile(out, fd, None, 1 << 24):
                copied += chunk
                if copied > bound:
                    raise _BadOutput(f"llvm-profdata's output grew past {bound} bytes while being copied")
            os.fsync(out)
        except BaseException:
            os.close(out)
            unlink_if_present(output)
            raise
        os.close(out)
    finally:
        os.close(fd)
    fsync_dir(output.parent)


def _input_failure(reason: str, detail: str) -> MergeOutcome:
    return MergeOutcome(False, failure=MergeFailure(reason, detail, True))


def _env_failure(detail: str, reason: str = "merge-io") -> MergeOutcome:
    return MergeOutcome(False, failure=MergeFailure(reason, detail, False))
