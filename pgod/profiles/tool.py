"""Run llvm-profdata for a report and read what it prints: bounded in time and output, parsed.

The report reads pgod's own merged profiles, not the spool's raw files, but a profile is still
what llvm-profdata made of files any user wrote, so each run gets limits (prlimit, as merges
do: confine.py), a wall-clock timeout that kills its process group, and a cap on what it may
print. The parsers take llvm-profdata's text as LLVM 14 to 19 print it and skip what they do
not know (new summary lines, value-profile sections), so a newer tool adds, never breaks.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pgod.confine import ConfineError, Identity, Limits, as_identity, confined_argv, set_no_new_privs

TIMEOUT_SECONDS = 120.0
OUTPUT_BYTES = 256 << 20  # `show --all-functions --counts` of a big program (~1 KB a function)
STDERR_BYTES = 64 << 10
LIMITS = Limits(memory_bytes=4 << 30, cpu_seconds=int(TIMEOUT_SECONDS), output_bytes=1 << 20, wall_seconds=TIMEOUT_SECONDS)


class ToolError(RuntimeError):
    """llvm-profdata could not run, failed, ran too long or printed too much."""


def run_tool(argv: Sequence[str], pass_fds: Sequence[int] = (), timeout: float = TIMEOUT_SECONDS,
             max_bytes: int = OUTPUT_BYTES, identity: Identity | None = None) -> str:
    """``argv``'s stdout, read while it runs, as ``identity`` (the merge user, when the report
    runs as root: the profiles are made of files any user wrote). A run past ``timeout`` or
    printing more than ``max_bytes`` is killed (with its process group) and raises ToolError,
    as does an exit other than 0, with the tail of its stderr."""
    try:
        command = confined_argv(argv, LIMITS)
        if identity is not None:
            set_no_new_privs()  # pgoctl's own: the tool inherits it
    except ConfineError as err:
        if identity is not None:  # never run it as root instead
            raise ToolError(f"cannot run {argv[0]} as {identity.name}: {err}") from None
        command = list(argv)  # no prlimit: the timeout and output cap still hold
    try:
        process = subprocess.Popen(
            command, **as_identity(identity), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds), process_group=0, close_fds=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LLVM_DISABLE_SYMBOLIZATION": "1"},
        )
    except OSError as err:
        raise ToolError(f"cannot run {argv[0]}: {err.strerror or err}") from None
    out, err = bytearray(), bytearray()
    problem = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, out)
        selector.register(process.stderr, selectors.EVENT_READ, err)
        while selector.get_map() and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"{argv[0]} {argv[1]} ran past {timeout:.0f} s and was killed"
                break
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err and len(err) > STDERR_BYTES:
                    del err[: len(err) - STDERR_BYTES]
                if len(out) > max_bytes:
                    problem = f"{argv[0]} {argv[1]} printed more than {max_bytes >> 20} MiB and was killed"
    if problem is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.stdout.close()
    process.stderr.close()
    returncode = process.wait()
    if problem is not None:
        raise ToolError(problem)
    if returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-500:]
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        raise ToolError(f"{argv[0]} {argv[1]} {how}: {tail}")
    return out.decode("utf-8", "replace")


@dataclass(frozen=True)
class FunctionCounts:
    """One function of `show --all-functions --counts`."""

    name: str
    hash: str
    entry: int  # "Function count" (IR instrumentation: its first counter)
    counters: tuple[int, ...]  # every counter: the function count first, then the block counts

    @property
    def total(self) -> int:
        """All its counts together: what `overlap` sums as a profile's "count sum"."""
        return sum(self.counters)

    @property
    def max_count(self) -> int:
        """Its largest counter: what `show --topn` ranks by ("max count")."""
        return max(self.counters, default=0)


@dataclass
class ShowResult:
    functions: list[FunctionCounts]
    summary: dict[str, str]  # the closing lines: "Total functions" → "3", …


_NUMBER = re.compile(r"\d+")


def _int(text: str) -> int:
    match = _NUMBER.search(text)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return int(match.group())


def parse_show(text: str) -> ShowResult:
    """`llvm-profdata show --all-functions --counts` of an instrumentation profile.

    The layout: "Counters:", then per function a line of two spaces and the name with a colon,
    and lines of four spaces ("Hash: 0x…", "Counters: 7", "Function count: 35",
    "Block counts: [25, 5]"; IR instrumentation prints no function count, only block counts);
    deeper lines (value sites) are skipped; after the functions, unindented "Key: value"
    summary lines."""
    functions: list[FunctionCounts] = []
    summary: dict[str, str] = {}
    current: dict | None = None

    def close() -> None:
        if current is None or ("entry" not in current and "blocks" not in current):
            return
        if "entry" in current:  # front-end instrumentation: the entry count, then the blocks
            counters = (current["entry"], *current.get("blocks", ()))
        else:  # IR instrumentation prints every counter as a block count, the entry's first
            counters = current["blocks"]
        entry = counters[0] if counters else 0
        functions.append(FunctionCounts(current["name"], current.get("hash", ""), entry, counters))

    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0:
            close()
            current = None
            key, sep, value = body.partition(":")
            if sep and key != "Counters":
                summary[key.strip()] = value.strip()
        elif indent == 2 and body.endswith(":"):
            close()
            current = {"name": body[:-1]}
        elif indent == 4 and current is not None:
            key, _sep, value = body.partition(":")
            value = value.strip()
            if key == "Hash":
                current["hash"] = value
            elif key == "Function count":
                current["entry"] = _int(value)
            elif key == "Block counts":
                inner = value.strip("[]").strip()
                current["blocks"] = tuple(int(v) for v in inner.split(",")) if inner else ()
    close()
    return ShowResult(functions, summary)


def show_levels(profdata: str, fd: int, identity: Identity | None = None) -> dict[str, list[FunctionCounts]]:
    """Every function's counts of the profile open at ``fd``, per level: "main" (IR or front-end)
    and "cs" (context-sensitive; empty when there is none). llvm-profdata ignores `--showcs` for
    a front-end profile (it shows every function again), so only an IR profile is asked for it."""
    def show(cs: bool) -> ShowResult:
        argv = [profdata, "show", "--all-functions", "--counts", *(["--showcs"] if cs else []), f"/proc/self/fd/{fd}"]
        return parse_show(run_tool(argv, pass_fds=[fd], identity=identity))

    main = show(False)
    is_ir = main.summary.get("Instrumentation level", "").startswith("IR")
    return {"main": main.functions, "cs": show(True).functions if is_ir else []}


def parse_overlap(text: str) -> dict[str, str]:
    """The "Program level:" lines of `llvm-profdata overlap BASE TEST`, key → value text."""
    figures: dict[str, str] = {}
    in_program = False
    for line in text.splitlines():
        body = line.strip()
        if body == "Program level:":
            in_program = True
            continue
        if in_program:
            if not line.startswith(" ") and body:
                break  # a further section (function level)
            key, sep, value = body.partition(":")
            if sep:
                figures[key.strip()] = value.strip()
    return figures


def percent(text: str | None) -> float | None:
    """'92.466%' → 92.466."""
    if not text:
        return None
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None
