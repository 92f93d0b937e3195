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
sizes decide where the next part starts). Counter values, names and the like are llvm-profdata's
business. Layouts by version (all fields little-endian u64; sizes are counts unless said):

* v7 (LLVM 13): Magic, Version, BinaryIdsSize, NumData, PaddingBytesBeforeCounters, NumCounters,
  PaddingBytesAfterCounters, NamesSize, CountersDelta, NamesDelta, ValueKindLast. Binary ids are
  *not* padded (LLVM 13 wrote a 20-byte SHA-1 id as 28 bytes, leaving everything after it
  unaligned). Data records are 48 bytes; counters are 8 bytes each.
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
as written (LLVM 14 wrote none after single-byte counters, leaving the names unaligned).

Zero bytes between or after parts are rejected, although llvm-profdata skips them: no Linux writer
produces them, and a zero-filled tail is what a crash leaves where a part should have been.
The 32-bit and big-endian variants are recognised and rejected as unsupported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RAW_MAGIC", "ProfrawError", "RawProfile", "parse_profraw", "part_bytes"]

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


@dataclass(frozen=True)
class _Layout:
    """What one raw-profile version looks like on disk (64-bit pointers, little-endian)."""

    fields: tuple[str, ...]
    data_record_size: int
    value_sites_offset: int  # of the u16 NumValueSites[value_kinds] array in a data record
    value_kinds: int  # IPVK_Last + 1
    padded_binary_ids: bool
    variant_mask: int  # the variant flags this release can set, in the whole version field

    @property
    def header(self) -> struct.Struct:
        return struct.Struct(f"<{len(self.fields)}Q")


_LAYOUTS = {
    7: _Layout(_V8_FIELDS, 48, 44, 2, padded_binary_ids=False, variant_mask=0x07 << 56),
    8: _Layout(_V8_FIELDS, 48, 44, 2, padded_binary_ids=True, variant_mask=0xFF << 56),
    9: _Layout(_V9_FIELDS, 64, 52, 2, padded_binary_ids=True, variant_mask=0xFF << 56),
    10: _Layout(_V10_FIELDS, 64, 52, 3, padded_binary_ids=True, variant_mask=0xFF << 56),
}
_HEADERS = {version: layout.header for version, layout in _LAYOUTS.items()}


class ProfrawError(ValueError):
    """Raised for anything that is not a well-formed raw profile.

    `reason` is a short stable code: 'empty', 'bad-magic', 'unsupported-format' (32-bit or
    big-endian), 'unsupported-version', 'truncated-header', 'bad-header', 'size-mismatch',
    'bad-binary-id', 'bad-value-data', 'trailing-garbage' or 'too-many-parts'.
    str(err) is a sentence naming the offset and the field.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RawProfile:
    """One raw profile (one instrumented module) inside a .profraw file."""

    offset: int  # byte offset of this part in the file
    length: int  # header + binary ids + all sections + padding + value data
    version: int  # low 32 bits of the version field: 7, 8, 9 or 10
    variant_flags: int  # high 32 bits of the version field (bit 24 = IR instrumentation, ...)
    binary_ids: tuple[str, ...]  # lowercase hex, in file order
    num_data: int  # per-function data records
    num_counters: int
    counter_size: int  # bytes per counter: 8, or 1 with single-byte coverage
    names_size: int  # bytes of (usually compressed) function names
    num_bitmap_bytes: int = 0  # MC/DC bitmap, v9 and later
    num_vtables: int = 0  # v10 and later
    vnames_size: int = 0  # v10 and later
    value_data_size: int = 0  # bytes of value-profile records at the end of the part


def part_bytes(data: bytes | bytearray | memoryview, part: RawProfile) -> memoryview:
    """The bytes of one part, a complete raw profile on its own (no copy)."""
    return memoryview(data)[part.offset : part.offset + part.length]


def parse_profraw(data: bytes | bytearray | memoryview, *, max_parts: int = 64) -> list[RawProfile]:
    """Check a whole .profraw file and split it into its raw profiles, in file order.

    Raises ProfrawError, and nothing else, unless every byte belongs to a well-formed part.
    Pure and allocation-bounded: sizes are compared with the bytes present before use.
    """
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise ProfrawError("bad-magic", f"not a byte buffer: {exc}") from None
    end = len(buf)
    if end == 0:
        raise ProfrawError("empty", "file is empty (0 bytes): the program wrote no profile")
    parts: list[RawProfile] = []
    pos = 0
    while pos < end:
        if len(parts) == max_parts:
            raise ProfrawError(
                "too-many-parts", f"offset {pos}: more than {max_parts} raw profiles in one file"
            )
        part = _parse_part(buf, pos, first=not parts)
        parts.append(part)
        pos += part.length
    return parts


def _fail(reason: str, pos: int, message: str) -> ProfrawError:
    return ProfrawError(reason, f"raw profile at offset {pos}: {message}")


def _padding_to_8(size: int) -> int:
    return -size & 7


def _parse_part(buf: memoryview, pos: int, *, first: bool) -> RawProfile:
    end = len(buf)
    if end - pos < 8:
        if first:
            raise _fail("truncated-header", pos, f"only {end} bytes, not even the 8-byte magic")
        raise _fail("trailing-garbage", pos, f"{end - pos} bytes after the last part, not a raw profile")
    (magic,) = _U64.unpack_from(buf, pos)
    if magic != RAW_MAGIC:
        if magic in _FOREIGN_MAGICS:
            raise _fail(
                "unsupported-format", pos, f"Magic {magic:#018x} is a {_FOREIGN_MAGICS[magic]} raw profile"
            )
        if first:
            raise _fail("bad-magic", pos, f"Magic {magic:#018x} is not {RAW_MAGIC:#018x}")
        raise _fail("trailing-garbage", pos, f"{end - pos} bytes after the last part, not a raw profile")
    if end - pos < 16:
        raise _fail("truncated-header", pos, f"file ends at byte {end}, inside the Version field")
    (version_field,) = _U64.unpack_from(buf, pos + 8)
    version = version_field & 0xFFFFFFFF
    layout = _LAYOUTS.get(version)
    if layout is None:
        raise _fail("unsupported-version", pos, f"Version {version} is not one of {sorted(_LAYOUTS)}")
    unknown_flags = version_field & ~(0xFFFFFFFF | layout.variant_mask)
    if unknown_flags:
        raise _fail(
            "unsupported-version", pos, f"Version field {version_field:#x} sets unknown variant bits {unknown_flags:#x}"
        )
    header = _HEADERS[version]
    if end - pos < header.size:
        raise _fail(
            "truncated-header", pos, f"file ends at byte {end}, inside the {header.size}-byte v{version} header"
        )
    h = dict(zip(layout.fields, header.unpack_from(buf, pos)))
    if h["ValueKindLast"] != layout.value_kinds - 1:
        raise _fail(
            "bad-header", pos, f"ValueKindLast is {h['ValueKindLast']}, v{version} has {layout.value_kinds - 1}"
        )

    cursor = pos + header.size
    ids_size = h["BinaryIdsSize"]
    if ids_size > end - cursor:
        raise _fail("size-mismatch", pos, f"BinaryIdsSize {ids_size} runs past the end of the file (byte {end})")
    binary_ids = _parse_binary_ids(buf, cursor, ids_size, layout.padded_binary_ids, pos)
    cursor += ids_size

    data_start = cursor
    num_data = h["NumData"]
    counter_size = 1 if version >= 8 and version_field & _BYTE_COVERAGE else 8
    sections = [
        ("NumData", num_data * layout.data_record_size),
        ("PaddingBytesBeforeCounters", h["PaddingBytesBeforeCounters"]),
        ("NumCounters", h["NumCounters"] * counter_size),
        ("PaddingBytesAfterCounters", h["PaddingBytesAfterCounters"]),
        ("NumBitmapBytes", h.get("NumBitmapBytes", 0)),
        ("PaddingBytesAfterBitmapBytes", h.get("PaddingBytesAfterBitmapBytes", 0)),
        ("NamesSize", h["NamesSize"] + _padding_to_8(h["NamesSize"])),
        ("NumVTables", h.get("NumVTables", 0) * _VTABLE_RECORD_SIZE),
        ("VNamesSize", h.get("VNamesSize", 0) + _padding_to_8(h.get("VNamesSize", 0))),
    ]
    for field, size in sections:
        cursor += size
        if cursor > end:
            raise _fail("size-mismatch", pos, f"{field} {h[field]} runs past the end of the file (byte {end})")

    value_start = cursor
    if _has_value_sites(buf, data_start, num_data, layout):
        cursor = _skip_value_data(buf, data_start, num_data, layout, cursor, pos)

    return RawProfile(
        offset=pos,
        length=cursor - pos,
        version=version,
        variant_flags=version_field >> 32,
        binary_ids=binary_ids,
        num_data=num_data,
        num_counters=h["NumCounters"],
        counter_size=counter_size,
        names_size=h["NamesSize"],
        num_bitmap_bytes=h.get("NumBitmapBytes", 0),
        num_vtables=h.get("NumVTables", 0),
        vnames_size=h.get("VNamesSize", 0),
        value_data_size=cursor - value_start,
    )


def _parse_binary_ids(buf: memoryview, start: int, size: int, padded: bool, pos: int) -> tuple[str, ...]:
    """Each binary id is a u64 length then the id bytes; v8 and later pad each to 8 bytes."""
    if padded and size % 8:
        raise _fail("bad-binary-id", pos, f"BinaryIdsSize {size} is not a multiple of 8")
    ids = []
    cursor, stop = start, start + size
    while cursor < stop:
        if stop - cursor < 8:
            raise _fail("bad-binary-id", pos, f"binary id at byte {cursor}: no room for its u64 length")
        (length,) = _U64.unpack_from(buf, cursor)
        stored = length + _padding_to_8(length) if padded else length
        if length == 0 or stored > stop - cursor - 8:
            raise _fail(
                "bad-binary-id", pos, f"binary id at byte {cursor}: length {length} does not fit BinaryIdsSize {size}"
            )
        ids.append(buf[cursor + 8 : cursor + 8 + length].hex())
        cursor += 8 + stored
    return tuple(ids)


def _has_value_sites(buf: memoryview, data_start: int, num_data: int, layout: _Layout) -> bool:
    """Whether any data record has value sites, checked one u16 column at a time at C speed.

    Front-end instrumentation (-fprofile-instr-generate) has none by default; IR instrumentation
    (-fprofile-generate) has them for memcpy sizes and indirect calls.
    """
    step = layout.data_record_size // 2
    records = buf[data_start : data_start + num_data * layout.data_record_size].cast("H")
    first = layout.value_sites_offset // 2
    return any(
        records[column::step].tobytes().count(0) != 2 * num_data
        for column in range(first, first + layout.value_kinds)
    )


def _skip_value_data(
    buf: memoryview, data_start: int, num_data: int, layout: _Layout, cursor: int, pos: int
) -> int:
    """Walk the value-profile records (one per data record with value sites); return their end."""
    end = len(buf)
    sites = struct.Struct(f"<{layout.value_sites_offset}x{layout.value_kinds}H")
    size = layout.data_record_size
    for index in range(num_data):
        kinds = sum(1 for n in sites.unpack_from(buf, data_start + index * size) if n)
        if not kinds:
            continue
        if end - cursor < _VALUE_PROF_DATA.size:
            raise _fail("size-mismatch", pos, f"value data of record {index} runs past the end of the file (byte {end})")
        total, num_kinds = _VALUE_PROF_DATA.unpack_from(buf, cursor)
        if total % 8 or total <= _VALUE_PROF_DATA.size or num_kinds != kinds:
            raise _fail(
                "bad-value-data",
                pos,
                f"value data of record {index} at byte {cursor}: TotalSize {total}, NumValueKinds {num_kinds} "
                f"(expected a multiple of 8 and {kinds} kinds)",
            )
        if total > end - cursor:
            raise _fail("size-mismatch", pos, f"value data of record {index} runs past the end of the file (byte {end})")
        cursor += total
    return cursor
