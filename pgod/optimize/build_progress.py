"""A running build's progress as Nix reports it: `--log-format internal-json` read into a model.

Pure: no processes, no threads, no clock. `BuildProgress.feed` takes one line of the build's
stderr and returns what a person should read of it in the build log (plain text, never the JSON),
while the model keeps what `pgoctl watch` shows: the derivation building and its phase, the
derivations done of the total, the last lines of its log. Lines that are not Nix's (a build
command other than Nix, or Nix before its logger starts) are kept as plain log lines.

Nix writes each event as `@nix {json}` (src/libutil/logging.hh, checked against Nix 2.8's own
output in tests/data/): `start` and `stop` of an activity, `result` of an activity, `msg`.
Everything read here is bounded: lines by `bounded_lines`, activities and log lines by count.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

NIX_PREFIX = "@nix "

# Activity types (logging.hh, ActivityType).
ACT_BUILDS = 104  # all the builds of one nix command: its progress is done/expected/running/failed
ACT_BUILD = 105  # one derivation's build: fields [drv path, machine, round, rounds]

# Result types (logging.hh, ResultType).
RES_BUILD_LOG_LINE = 101
RES_SET_PHASE = 104
RES_PROGRESS = 105
RES_POST_BUILD_LOG_LINE = 107

LVL_INFO = 3  # messages up to this level are what plain `nix-build` prints without -v

MAX_LINE_BYTES = 64 * 1024  # a longer line of the build's output is cut here
SHOWN_CHARS = 300  # a log line, derivation or phase as the status carries it
TAIL_LINES = 10  # the last log lines the status carries
MAX_ACTIVITIES = 4096  # activities remembered at once (a build of thousands starts that many)
MAX_RUNNING = 64  # derivation builds tracked at once, each with its own tail

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_ansi(text: str) -> str:
    """Text without terminal escape sequences (Nix colours its messages)."""
    return _ANSI.sub("", text)


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """Text safe to show on a terminal: escapes and control characters removed, tabs as spaces,
    cut to ``limit`` characters. A build's output is not ours to send to a user's terminal."""
    text = _CONTROL.sub("", strip_ansi(text).replace("\t", "    "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def derivation_name(drv_path: str) -> str:
    """'/nix/store/<hash>-lua-5.4.7.drv' → 'lua-5.4.7'."""
    base = drv_path.rsplit("/", 1)[-1]
    if base.endswith(".drv"):
        base = base[: -len(".drv")]
    hash_part, dash, rest = base.partition("-")
    return rest if dash and len(hash_part) == 32 else base


def bounded_lines(chunks: Iterable[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[str]:
    """The lines of a byte stream given in chunks, decoded (bad UTF-8 replaced), without their
    newline; a line longer than ``limit`` bytes is cut there and the rest of it skipped, so a
    build printing one endless line costs ``limit`` bytes of memory, not the line."""
    pending = bytearray()
    cut = False  # the line being read was already given, cut: skip to its end
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not cut:
                room = limit - len(pending)
                if len(piece) > room:
                    pending += piece[:room]
                    yield _decode(pending) + f" …[line cut at {limit} bytes]"
                    pending.clear()
                    cut = True
                else:
                    pending += piece
            if end < 0:
                break
            if not cut:
                yield _decode(pending)
            pending.clear()
            cut = False
            start = end + 1
    if pending and not cut:
        yield _decode(pending)


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace").rstrip("\r")


@dataclass
class _Build:
    """One derivation building now."""

    name: str
    phase: str | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


class BuildProgress:
    """What a build has said so far; `snapshot()` is its progress for the status documents."""

    def __init__(self, tail_lines: int = TAIL_LINES, log_level: int = LVL_INFO) -> None:
        self._log_level = log_level
        self._tail_lines = tail_lines
        self._types: OrderedDict[int, int] = OrderedDict()  # activity id → type (bounded)
        self._running: OrderedDict[int, _Build] = OrderedDict()  # actBuild id → its build, in start order
        self._tail: deque[str] = deque(maxlen=tail_lines)  # the log's last lines, whatever wrote them
        self._counts: list[int] | None = None  # the latest actBuilds progress [done, expected, running, failed]
        self.nix = False  # has Nix's machine-readable log been seen
        self.last_line = ""  # the last non-empty line written to the log

    # ---- reading ---------------------------------------------------------------------------
    def feed(self, line: str) -> str | None:
        """Take one line of the build's stderr; return the plain text it adds to the log, or
        None when it says nothing a reader of the log needs (an activity stopped, a counter)."""
        if line.startswith(NIX_PREFIX):
            try:
                event = json.loads(line[len(NIX_PREFIX):])
            except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
                event = None
            if isinstance(event, dict):
                self.nix = True
                text = self._nix_event(event)
                return None if text is None else self._written(text)
        return self._written(line)

    def _written(self, text: str) -> str:
        """Text going to the log: its lines are also the last lines of the build as a whole."""
        for line in text.splitlines()[-self._tail_lines:]:
            if line.strip():
                self.last_line = printable(line.strip())
                self._tail.append(printable(line))
        return text

    def _nix_event(self, event: dict) -> str | None:
        action = event.get("action")
        ident = event.get("id")
        if action == "msg":
            if _int(event.get("level"), 0) > self._log_level:
                return None
            return strip_ansi(str(event.get("msg", "")))
        if action == "start" and isinstance(ident, int):
            kind = _int(event.get("type"), 0)
            self._types[ident] = kind
            while len(self._types) > MAX_ACTIVITIES:
                self._types.popitem(last=False)
            if kind == ACT_BUILD:
                fields = event.get("fields") or []
                drv = fields[0] if fields and isinstance(fields[0], str) else str(event.get("text", ""))
                self._running[ident] = _Build(printable(derivation_name(drv)), tail=deque(maxlen=self._tail_lines))
                while len(self._running) > MAX_RUNNING:
                    self._running.popitem(last=False)
            text = str(event.get("text") or "")
            if text and (kind == ACT_BUILD or _int(event.get("level"), 0) <= self._log_level):
                return strip_ansi(text) + "..."  # as Nix's plain log prints an activity's start
            return None
        if action == "stop" and isinstance(ident, int):
            self._types.pop(ident, None)
            self._running.pop(ident, None)
            return None
        if action == "result" and isinstance(ident, int):
            return self._result(ident, _int(event.get("type"), 0), event.get("fields") or [])
        return None

    def _result(self, ident: int, kind: int, fields: list) -> str | None:
        if kind in (RES_BUILD_LOG_LINE, RES_POST_BUILD_LOG_LINE):
            line = str(fields[0]) if fields else ""
            if line.strip() and ident in self._running:
                self._running[ident].tail.append(printable(line))
            return line
        if kind == RES_SET_PHASE and ident in self._running and fields:
            self._running[ident].phase = printable(str(fields[0]))
            return None
        if kind == RES_PROGRESS and self._types.get(ident) == ACT_BUILDS and len(fields) >= 4:
            self._counts = [_int(value, 0) for value in fields[:4]]
        return None

    # ---- the model -------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The progress for status: keys are always present, None where Nix said nothing (yet)."""
        current = next(reversed(self._running.values()), None)
        done, total, running, failed = self._counts if self._counts else (None, None, None, None)
        return {
            "format": "nix" if self.nix else "plain",
            "derivation": current.name if current else None,
            "phase": current.phase if current else None,
            "done": done,
            "total": total,
            "running": running,
            "failed": failed,
            "building": [build.name for build in self._running.values()][-8:],
            "log_tail": list(current.tail if current and current.tail else self._tail),
        }


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
