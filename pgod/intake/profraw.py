"""Our own reader for the headers of LLVM raw profiles (`.profraw`).

pgod parses raw profiles itself, before any llvm-profdata sees them, for two reasons:

* Attribution. A raw profile names the GNU build-ids of the modules it profiled. pgod must know
  which package a file belongs to (and so which llvm-profdata, of which LLVM release, may merge it)
  before it can run any llvm-profdata: the formats differ per release and a mismatched tool
  refuses or misreads them. Spool files are untrusted, so this reading must be strict and bounded.
* Splitting. One file can hold several raw profiles back to back: an executable and each
  instrumented shared library append their own profile to the same file at exit. Each part belongs
  to the package whose ELF file carries that part's build-id, so each is merged on its own.

Only the framing is checked here: magic, version, the size of every section against the bytes
that are really there, the binary-id section, and the value-profile records that end a part (their
sizes decide where the next part starts). Of the contents only the counters are looked at, by
`counter_over`, so implausible counts can be refused; names and the like are llvm-profdata's
business. Layouts by version (all fields little-endian u64; sizes are counts unless said):

* v7 (LLVM 13): Magic, Version, BinaryIdsSize, NumData, PaddingBytesBeforeCounters, NumCounters,
  PaddingBytesAfterCounters, NamesSize, CountersDelta, NamesDelta, ValueKindLast. Binary ids are
  *not* padded (clang 13 wrote a shared library's 20-byte id in 8 + 20 = 28 bytes, leaving all
  after it unaligned; for executables it wrote none). Data records are 48 bytes; counters 8 each.
* v8 (LLVM 14 to 17): the same header; binary ids are padded to 8 bytes; counters are 1 byte each
  when the single-byte-coverage variant flag (bit 60) is set, else 8.
* v9 (LLVM 18): adds NumBitmapBytes and PaddingBytesAfterBitmapBytes after
  PaddingBytesAfterCounters, and BitmapDelta after CountersDelta (MC/DC). Data records are 64 bytes.
* v10 (LLVM 19 and later): adds NumVTables and VNamesSize before ValueKindLast, and a third value
  kind (vtable targets). Vtable records are 24 bytes.

After the header and binary ids come: data records, padding, counters, padding, [bitmap, padding,]
names padded to 8, [vtable records, vtable names padded to 8,] then one value-profile record for
each data record that has value sites (u32 TotalSize, a multiple of 8, then u32 NumValueKinds).
Padding after names is implied by NamesSize; every other padding is stored in the header and taken
as written (LLVM 14 and 16 write none after single-byte counters, leaving the names unaligned).

Parts are read one by one, so a file may mix versions (an executable and a library built by
different clangs); llvm-profdata cannot read such a file, pgod can merge each part with its own.
Zero bytes between or after parts are rejected, although llvm-profdata skips them: no Linux writer
tried (clang 13 to 19, continuous mode included) leaves any, and a zero-filled tail is what a crash
can leave where a part should have been. 32-bit and big-endian profiles are rejected as unsupported.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, compress

__all__ = ["RAW_MAGIC", "ProfrawError", "RawProfile", "counter_over", "parse_profraw", "part_bytes"]

RAW_MAGIC = 0xFF6C70726F667281  # "\xfflprofr\x81": 64-bit pointers, as a little-endian u64
_RAW_MAGIC_32 = 0xFF6C70726F665281  # "\xfflprofR\x81": 32-bit pointers


def _byte_swapped(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


_FOREIGN_MAGICS = {
    _RAW_MAGIC_32: "32-bit-pointer little-endian",
    _byte_swapped(RAW_MAGIC): "64-bit-pointer big-endian",
    _byte_swapped(_RAW_MAGIC_32): "32-bit-pointer big-endian",
}

_U64 = struct.Struct("<Q")
_VALUE_PROF_DATA = struct.Struct("<II")  # TotalSize, NumValueKinds
_BYTE_COVERAGE = 1 << 60  # VARIANT_MASK_BYTE_COVERAGE, in the whole version field
_IR_PROF = 1 << 56  # VARIANT_MASK_IR_PROF: IR instrumentation (-fprofile-generate)
_CSIR_PROF = 1 << 57  # VARIANT_MASK_CSIR_PROF: the context-sensitive stage (-fcs-profile-generate)
_VTABLE_RECORD_SIZE = 24  # u64 name hash, u64 address, u32 size, padded to 8

_V8_FIELDS = (
    "Magic", "Version", "BinaryIdsSize", "NumData", "PaddingBytesBeforeCounters", "NumCounters",
    "PaddingBytesAfterCounters", "NamesSize", "CountersDelta", "NamesDelta", "ValueKindLast",
)
_V9_FIELDS = (
    "Magic", "Version", "BinaryIdsSize", "NumData", "PaddingBytesBeforeCounters", "NumCounters",
    "PaddingBytesAfterCounters", "NumBitmapBytes", "PaddingBytesAfterBitmapBytes", "NamesSize",
    "CountersDelta", "BitmapDelta", "NamesDelta", "ValueKindLast",
)
_V10_FIELDS = _V9_FIELDS[:-1] + ("NumVTables", "VNamesSize", "ValueKindLast")

#: The header fields that size the sections after the binary ids, in file order.
_SECTION_FIELDS = (
    "NumData", "PaddingBytesBeforeCounters", "NumCounters", "PaddingBytesAfterCounters",
    "NumBitmapBytes", "PaddingBytesAfterBitmapBytes", "NamesSize", "NumVTables", "VNamesSize",
)


class _Layout:
    """What one raw-profile version looks like on disk (64-bit pointers, little-endian)."""

    def __init__(
        self,
        fields: tuple[str, ...],
        data_record_size: int,
        value_sites_offset: int,
        value_kinds: int,
        *,
        padded_binary_ids: bool,
        variant_mask: int,
    ) -> None:
        self.header = struct.Struct(f"<{len(fields)}Q")
        # Picks BinaryIdsSize, the section fields and ValueKindLast out of the unpacked header
        # plus one trailing 0, which stands for the fields this version does not have.
        wanted = ("BinaryIdsSize", *_SECTION_FIELDS, "ValueKindLast")
        indexes = (fields.index(f) if f in fields else len(fields) for f in wanted)
        self.pick = operator.itemgetter(*indexes)
        self.data_record_size = data_record_size
        self.value_kinds = value_kinds  # IPVK_Last + 1
        # NumValueSites is u16[value_kinds] at value_sites_offset in each data record; these are
        # the indexes of the u32 words that cover it (the padding they may include is zero).
        last_byte = value_sites_offset + 2 * value_kinds - 1
        self.value_site_words = range(value_sites_offset // 4, last_byte // 4 + 1)
        self.value_sites = struct.Struct(f"<{value_sites_offset}x{value_kinds}H")
        self.padded_binary_ids = padded_binary_ids
        self.variant_mask = variant_mask  # the variant flags this release can set


_LAYOUTS = {
    7: _Layout(_V8_FIELDS, 48, 44, 2, padded_binary_ids=False, variant_mask=0x07 << 56),
    8: _Layout(_V8_FIELDS, 48, 44, 2, padded_binary_ids=True, variant_mask=0xFF << 56),
    9: _Layout(_V9_FIELDS, 64, 52, 2, padded_binary_ids=True, variant_mask=0xFF << 56),
    10: _Layout(_V10_FIELDS, 64, 52, 3, padded_binary_ids=True, variant_mask=0xFF << 56),
}


class ProfrawError(ValueError):
    """Raised for anything that is not a well-formed raw profile.

    `reason` is a short stable code: 'empty', 'bad-magic', 'unsupported-format' (32-bit or
    big-endian), 'unsupported-version', 'truncated-header', 'bad-header', 'size-mismatch',
    'bad-binary-id', 'bad-value-data', 'trailing-garbage' or 'too-many-parts'.
    str(err) is a sentence naming the offset and the field.
    """

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RawProfile:
    """One raw profile (one instrumented module) inside a .profraw file."""

    offset: int  # byte offset of this part in the file
    length: int  # header + binary ids + all sections + padding + value data
    version: int  # low 32 bits of the version field: 7, 8, 9 or 10
    variant_flags: int  # high 32 bits of the version field (bit 24: IR instrumentation, ...)
    binary_ids: tuple[str, ...]  # lowercase hex, in file order
    num_data: int  # per-function data records
    num_counters: int
    names_size: int  # bytes of (usually compressed) function names
    num_bitmap_bytes: int  # MC/DC bitmap, v9 and later
    num_vtables: int  # v10 and later
    vnames_size: int  # v10 and later
    value_data_size: int  # bytes of value-profile records at the end of the part
    counters_start: int  # where the counters section starts, in bytes from the part's start

    @property
    def instrumentation(self) -> str:
        """"fe", "ir" or "cs-ir", as pgo.json names them: profiles of different kinds never
        merge into one working profile (llvm-profdata would merge them, silently)."""
        flags = self.variant_flags << 32
        if flags & _CSIR_PROF:
            return "cs-ir"
        return "ir" if flags & _IR_PROF else "fe"

    @property
    def counter_size(self) -> int:
        """Bytes per counter: 1 with single-byte coverage (v8 and later), else 8."""
        return 1 if self.version >= 8 and (self.variant_flags << 32) & _BYTE_COVERAGE else 8


def part_bytes(data: bytes | bytearray | memoryview, part: RawProfile) -> memoryview:
    """The bytes of one part, a complete raw profile on its own (no copy)."""
    return memoryview(data)[part.offset : part.offset + part.length]


def parse_profraw(data: bytes | bytearray | memoryview, *, max_parts: int = 64) -> list[RawProfile]:
    """Check a whole .profraw file and split it into its raw profiles, in file order.

    Raises ProfrawError, and nothing else, unless every byte belongs to a well-formed part.
    Pure and allocation-bounded: every size is compared with the bytes present before use.
    """
    buf = memoryview(data).cast("B")
    end = len(buf)
    if end == 0:
        raise ProfrawError("empty", "the file is empty (0 bytes): the program wrote no profile")
    parts: list[RawProfile] = []
    pos = 0
    while pos < end:
        if len(parts) == max_parts:
            message = f"one more raw profile after {max_parts} in one file"
            raise _fail("too-many-parts", pos, message)
        part = _parse_part(buf, pos, first=not parts)
        parts.append(part)
        pos += part.length
    return parts


def counter_over(data: bytes | bytearray | memoryview, part: RawProfile, limit: int) -> tuple[int, int] | None:
    """(index, value) of the first counter of a part above ``limit``, or None (checked at C
    speed: one max over the section). Single-byte coverage counters (0 or 1, where 0 means
    "ran") hold no counts and are never over."""
    if part.counter_size != 8 or part.num_counters == 0:
        return None
    start = part.offset + part.counters_start
    section = memoryview(data).cast("B")[start : start + 8 * part.num_counters]
    counters = section.cast("Q") if start % 8 == 0 else memoryview(section.tobytes()).cast("Q")
    if max(counters) <= limit:
        return None
    index = next(i for i, value in enumerate(counters) if value > limit)
    return index, counters[index]


def _fail(reason: str, pos: int, message: str) -> ProfrawError:
    return ProfrawError(reason, f"raw profile at offset {pos}: {message}")


def _trailing_garbage(pos: int, end: int) -> ProfrawError:
    return _fail("trailing-garbage", pos, f"the last {end - pos} bytes are not a raw profile")


def _padding_to_8(size: int) -> int:
    return -size & 7


def _parse_part(buf: memoryview, pos: int, *, first: bool) -> RawProfile:
    end = len(buf)
    if end - pos < 8:
        if first:
            raise _fail("truncated-header", pos, f"only {end} bytes, not even the 8-byte Magic")
        raise _trailing_garbage(pos, end)
    (magic,) = _U64.unpack_from(buf, pos)
    if magic != RAW_MAGIC:
        if magic in _FOREIGN_MAGICS:
            kind = _FOREIGN_MAGICS[magic]
            raise _fail("unsupported-format", pos, f"Magic {magic:#x} marks a {kind} raw profile")
        if first:
            raise _fail("bad-magic", pos, f"Magic {magic:#x} is not {RAW_MAGIC:#x}")
        raise _trailing_garbage(pos, end)
    if end - pos < 16:
        raise _fail("truncated-header", pos, f"the file ends at byte {end}, inside Version")
    (version_field,) = _U64.unpack_from(buf, pos + 8)
    version = version_field & 0xFFFFFFFF
    layout = _LAYOUTS.get(version)
    if layout is None:
        message = f"Version {version} is not one of {sorted(_LAYOUTS)}"
        raise _fail("unsupported-version", pos, message)
    unknown_flags = version_field & ~(0xFFFFFFFF | layout.variant_mask)
    if unknown_flags:
        message = f"Version {version_field:#x} sets variant bits unknown to v{version}"
        raise _fail("unsupported-version", pos, message)
    header = layout.header
    if end - pos < header.size:
        message = f"the file ends at byte {end}, inside the {header.size}-byte v{version} header"
        raise _fail("truncated-header", pos, message)
    ids_size, *counts, value_kind_last = layout.pick(header.unpack_from(buf, pos) + (0,))
    if value_kind_last != layout.value_kinds - 1:
        message = f"ValueKindLast {value_kind_last} is not {layout.value_kinds - 1} (v{version})"
        raise _fail("bad-header", pos, message)

    ids_start = pos + header.size
    if ids_size > end - ids_start:
        message = f"BinaryIdsSize {ids_size} runs past the end (byte {end})"
        raise _fail("size-mismatch", pos, message)
    binary_ids = _parse_binary_ids(buf, ids_start, ids_size, layout.padded_binary_ids, pos)

    data_start = ids_start + ids_size
    (num_data, pad_before, num_counters, pad_after, num_bitmap, pad_bitmap, names_size, num_vtables,
     vnames_size) = counts
    counter_size = 1 if version >= 8 and version_field & _BYTE_COVERAGE else 8
    sizes = (
        num_data * layout.data_record_size,
        pad_before,
        num_counters * counter_size,
        pad_after,
        num_bitmap,
        pad_bitmap,
        names_size + _padding_to_8(names_size),
        num_vtables * _VTABLE_RECORD_SIZE,
        vnames_size + _padding_to_8(vnames_size),
    )
    value_start = data_start + sum(sizes)
    if value_start > end:
        field, count = next(
            (field, count)
            for field, count, section_end in zip(_SECTION_FIELDS, counts, accumulate(sizes))
            if data_start + section_end > end
        )
        raise _fail("size-mismatch", pos, f"{field} {count} runs past the end (byte {end})")

    value_end = value_start
    records = buf[data_start : data_start + sizes[0]]
    if _any_value_sites(records, layout):
        value_end = _skip_value_data(buf, records, layout, value_start, pos)

    return RawProfile(
        pos, value_end - pos, version, version_field >> 32, binary_ids, num_data, num_counters,
        names_size, num_bitmap, num_vtables, vnames_size, value_end - value_start,
        data_start + sizes[0] + pad_before - pos,
    )


def _parse_binary_ids(
    buf: memoryview, start: int, size: int, padded: bool, pos: int
) -> tuple[str, ...]:
    """Each binary id is a u64 length then the id bytes; v8 and later pad each to 8 bytes."""
    if padded and size % 8:
        raise _fail("bad-binary-id", pos, f"BinaryIdsSize {size} is not a multiple of 8")
    ids = []
    cursor, stop = start, start + size
    while cursor < stop:
        if stop - cursor < 8:
            raise _fail("bad-binary-id", pos, f"no room for the binary id length at byte {cursor}")
        (length,) = _U64.unpack_from(buf, cursor)
        stored = length + _padding_to_8(length) if padded else length
        if length == 0 or stored > stop - cursor - 8:
            message = f"binary id length {length} at byte {cursor} overruns BinaryIdsSize {size}"
            raise _fail("bad-binary-id", pos, message)
        ids.append(buf[cursor + 8 : cursor + 8 + length].hex())
        cursor += 8 + stored
    return tuple(ids)


def _site_words(records: memoryview, layout: _Layout) -> list[memoryview]:
    """One strided u32 view per word of NumValueSites, across all data records."""
    words = records.cast("I")
    step = layout.data_record_size // 4
    return [words[w::step] for w in layout.value_site_words]


def _any_value_sites(records: memoryview, layout: _Layout) -> bool:
    """Whether any data record has value sites, checked at C speed.

    Front-end instrumentation (-fprofile-instr-generate) has none by default; IR instrumentation
    (-fprofile-generate) has them for memcpy sizes and indirect calls.
    """
    columns = _site_words(records, layout)
    return any(column.tobytes().count(0) != 4 * len(column) for column in columns)


def _records_with_value_sites(records: memoryview, layout: _Layout) -> Iterator[int]:
    """Indexes of the data records whose NumValueSites words are not all zero."""
    words = _site_words(records, layout)
    marks = words[0] if len(words) == 1 else map(operator.or_, *words)
    return compress(range(len(words[0])), marks)


def _skip_value_data(
    buf: memoryview, records: memoryview, layout: _Layout, cursor: int, pos: int
) -> int:
    """Walk the value-profile records (one per data record with value sites); return their end."""
    end = len(buf)
    for index in _records_with_value_sites(records, layout):
        site_counts = layout.value_sites.unpack_from(records, index * layout.data_record_size)
        kinds = sum(1 for n in site_counts if n)
        if not kinds:  # only the padding next to NumValueSites was set
            continue
        if end - cursor < _VALUE_PROF_DATA.size:
            raise _fail("size-mismatch", pos, f"no room for value data at byte {cursor}")
        total, num_kinds = _VALUE_PROF_DATA.unpack_from(buf, cursor)
        if total % 8 or total <= _VALUE_PROF_DATA.size or num_kinds != kinds:
            message = (
                f"the value data of data record {index} at byte {cursor} has TotalSize {total} and "
                f"NumValueKinds {num_kinds}; expected a multiple of 8 above 8, and {kinds}"
            )
            raise _fail("bad-value-data", pos, message)
        if total > end - cursor:
            message = f"value data TotalSize {total} at byte {cursor} runs past the end ({end})"
            raise _fail("size-mismatch", pos, message)
        cursor += total
    return cursor


def part_digest(data: bytes | memoryview) -> str:
    """What a part's bytes are recognised by between ingest and merge (SHA-256, 128 bits:
    the fastest strong hash here, with the CPU's SHA instructions)."""
    return hashlib.sha256(data).hexdigest()[:32]
