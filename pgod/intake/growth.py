"""What a running program's profile gained since the snapshot last counted: a raw profile of its own.

A live run (intake/live.py) publishes *cumulative* snapshots of one module's raw profile. Adding
two snapshots of one process would count everything before the first one twice, and
llvm-profdata cannot subtract (its weights must be positive), so pgod computes the difference
itself, on the raw format, and hands it to the merge as an ordinary raw part:

* the header, binary ids, data records, names and vtables are the current snapshot's;
* each 8-byte counter is ``current - baseline``, never below zero (a plain counter's lost update
  can make it go down by a little between two snapshots);
* value profiles (indirect-call targets, memop sizes, vtables) are per site and value
  ``current - baseline`` where that is above zero, written back in the runtime's record layout
  (the runtime replaces a site's least-counted value when the site is full, so its counts are not
  monotone like counters: clamping drops the replaced value's loss, it never goes negative);
* single-byte coverage and MC/DC bitmaps are copied (they merge by "or": a copy adds nothing twice).

The sum of a run's growths is its final snapshot, counter for counter, whenever no counter went
down; that is the exactly-once promise for live data (tests/test_live_growth.py checks it with
llvm-profdata). A snapshot whose structure differs from the baseline's (another binary, a file
rewritten) or whose counters went down in bulk is a *new run*: it counts whole, from zero.

Pure functions over bytes already checked by `profraw.parse_profraw`; nothing here reads files.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from dataclasses import dataclass

from pgod.intake.profraw import ProfrawError, RawProfile, part_bytes

__all__ = ["Growth", "growth", "structure_key"]

# The Values pointer of a data record (runtime memory, NULL until the function's first value):
# (offset, length) by record size; masked out of the structure key.
_VALUES_FIELD = {48: (32, 8), 64: (40, 8)}
_RECORD_SIZE = {7: 48, 8: 48, 9: 64, 10: 64}
_VALUE_PROF_DATA = struct.Struct("<II")  # TotalSize, NumValueKinds
_VALUE_PROF_RECORD = struct.Struct("<II")  # Kind, NumValueSites; then u8 SiteCountArray[]
_VALUE_DATA = struct.Struct("<QQ")  # Value, Count
# More than this share of the non-zero counters going down means the program reset its counters
# (or the file was rewritten): a new run, not a lost update here and there.
NEW_RUN_DECREASED_SHARE = 0.01


@dataclass(frozen=True)
class Growth:
    """The raw part to count (None: nothing grew) and what the snapshot was taken as."""

    data: bytes | None
    new_run: bool  # the baseline did not apply: the snapshot counts whole
    counts: int  # the sum of the counter growth (for people: "counts rising")
    # Why a new run: "first" (no baseline), "structure" (another module's profile under the
    # name), "decreased" (counters went down in bulk); "" when the baseline applied.
    why: str = ""


def structure_key(data: bytes | memoryview, part: RawProfile) -> str:
    """SHA-256 of everything of a part but its counts: header, binary ids, data records (their
    runtime Values pointer masked), names, vtables. Two snapshots of one run share it."""
    buf = part_bytes(data, part)
    counters_start = part.counters_start
    record_size = _RECORD_SIZE[part.version]
    records_end = counters_start - _padding_before(buf, part)
    records_start = records_end - part.num_data * record_size
    digest = hashlib.sha256()
    digest.update(buf[:records_start])
    records = bytearray(buf[records_start:records_end])
    offset, length = _VALUES_FIELD[record_size]
    for start in range(offset, len(records), record_size):
        records[start : start + length] = bytes(length)
    digest.update(records)
    names_start = _names_start(part)
    digest.update(buf[names_start : part.length - part.value_data_size])
    return digest.hexdigest()[:32]


def growth(base: bytes | memoryview | None, base_part: RawProfile | None, current: bytes | memoryview,
           part: RawProfile) -> Growth:
    """The raw part holding what ``current`` (one part, checked) gained over ``base`` (the last
    snapshot counted, or None for the run's first): see the module docstring."""
    cur = part_bytes(current, part)
    if base is None or base_part is None or structure_key(base, base_part) != structure_key(current, part):
        return Growth(bytes(cur), True, _counter_sum(cur, part), "first" if base is None else "structure")
    old = part_bytes(base, base_part)
    out = bytearray(cur[: part.length - part.value_data_size])
    counts = 0
    if part.counter_size == 8 and part.num_counters:
        start = part.counters_start
        now = _counters(cur, start, part.num_counters)
        was = _counters(old, start, part.num_counters)
        decreased = sum(1 for c, b in zip(now, was) if c < b)
        if decreased and decreased > NEW_RUN_DECREASED_SHARE * sum(1 for c in was if c):
            return Growth(bytes(cur), True, sum(now), "decreased")
        grown = array("Q", [c - b if c > b else 0 for c, b in zip(now, was)])
        counts = sum(grown)
        out[start : start + 8 * part.num_counters] = grown.tobytes()
    values, value_counts = _value_growth(old, base_part, cur, part)
    if not counts and not value_counts:
        return Growth(None, False, 0)
    out += values
    return Growth(bytes(out), False, counts)


def _counters(buf: memoryview, start: int, count: int) -> array:
    """A copy of ``count`` u64 counters from ``start`` (a part need not start 8-aligned)."""
    counters = array("Q")
    counters.frombytes(buf[start : start + 8 * count])
    return counters


def _counter_sum(buf: memoryview, part: RawProfile) -> int:
    if part.counter_size != 8 or not part.num_counters:
        return 0
    return sum(_counters(buf, part.counters_start, part.num_counters))


def _padding_before(buf: memoryview, part: RawProfile) -> int:
    """PaddingBytesBeforeCounters, from the header (field 4 in every version)."""
    return struct.unpack_from("<Q", buf, 32)[0]


def _names_start(part: RawProfile) -> int:
    """Where the names start within the part: the sections after the counters are sized by the
    part's fields and the header's paddings (profraw.py's layout)."""
    end = part.length - part.value_data_size
    vtables = part.num_vtables * 24 + part.vnames_size + (-part.vnames_size & 7)
    names = part.names_size + (-part.names_size & 7)
    return end - vtables - names


def _value_records(buf: memoryview, part: RawProfile) -> list[list[list[list[tuple[int, int]]]]]:
    """The part's value data: per record (data record with value sites), per kind, per site, its
    (value, count) pairs, in file order."""
    records = []
    cursor = part.length - part.value_data_size
    end = part.length
    while cursor < end:
        total, kinds = _VALUE_PROF_DATA.unpack_from(buf, cursor)
        if total < 8 or cursor + total > end:
            raise ProfrawError("bad-value-data", f"value data TotalSize {total} at byte {cursor}")
        at = cursor + _VALUE_PROF_DATA.size
        record = []
        for _ in range(kinds):
            kind, sites = _VALUE_PROF_RECORD.unpack_from(buf, at)
            counts_at = at + _VALUE_PROF_RECORD.size
            site_counts = bytes(buf[counts_at : counts_at + sites])
            at = counts_at + sites
            at += -(at - cursor) & 7
            by_site = []
            for n in site_counts:
                by_site.append([_VALUE_DATA.unpack_from(buf, at + 16 * i) for i in range(n)])
                at += 16 * n
            record.append([kind, by_site])
        records.append(record)
        cursor += total
    return records


def _value_growth(old: memoryview, old_part: RawProfile, cur: memoryview, part: RawProfile) -> tuple[bytes, int]:
    """The value records of ``cur`` with each (site, value) count less the baseline's, the pairs
    that did not grow left out; and the sum of the counts that grew."""
    if not part.value_data_size:
        return b"", 0
    now = _value_records(cur, part)
    was = _value_records(old, old_part) if old_part.value_data_size else []
    out = bytearray()
    grown_total = 0
    for index, record in enumerate(now):
        before = was[index] if index < len(was) else []
        body = bytearray()
        for kind_index, (kind, sites) in enumerate(record):
            before_sites = before[kind_index][1] if kind_index < len(before) and before[kind_index][0] == kind else []
            grown_sites = []
            for site_index, pairs in enumerate(sites):
                had = dict(before_sites[site_index]) if site_index < len(before_sites) else {}
                grown = [(value, count - had.get(value, 0)) for value, count in pairs if count > had.get(value, 0)]
                grown_total += sum(count for _, count in grown)
                grown_sites.append(grown[:255])
            header = _VALUE_PROF_RECORD.pack(kind, len(sites)) + bytes(len(pairs) for pairs in grown_sites)
            header += bytes(-len(header) & 7)
            body += header
            for pairs in grown_sites:
                for value, count in pairs:
                    body += _VALUE_DATA.pack(value, count)
        out += _VALUE_PROF_DATA.pack(_VALUE_PROF_DATA.size + len(body), len(record)) + body
    return bytes(out), grown_total
