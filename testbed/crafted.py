"""Raw profiles crafted from a real one: they pass pgod's framing checks and hurt llvm-profdata.

Each starts from a clang-14 (raw format v8) profile of the workload program, made at test time,
and changes only what pgod leaves to llvm-profdata (pgod/intake/profraw.py checks the framing):
- `names_length_crash`: the names section says it holds 1 MiB of uncompressed names; reading
  them runs off the buffer and llvm-profdata-14 dies of SIGSEGV (readPGOFuncNameStrings).
- `names_allocation`: the names say they uncompress to 1 TiB; llvm-profdata-14 asks for it and
  aborts with "LLVM ERROR: out of memory".
- `shared_counters`: records may share counters, so N records over the same C counters make an
  indexed profile of N × C counters: 56 KB of raw profile become 8 MB (1,000 × 1,000).
- `padded_after_counters`: the padding after the counters (taken as written) grown to make the
  profile any size; written with a hole there, it costs its writer a few KB of disk.
"""

from __future__ import annotations

import random
import struct

_HEADER = struct.Struct("<11Q")  # the v8 header
_RECORD = struct.Struct("<QQQQQIHH")  # NameRef, FuncHash, CounterPtr, FunctionPtr, Values, NumCounters, NumValueSites[2]
_NUM_DATA, _NUM_COUNTERS, _NAMES_SIZE = 3, 5, 7  # header fields


def _layout(profile: bytes) -> tuple[tuple[int, ...], int, int]:
    """The header, where the data records start and where the names start."""
    header = _HEADER.unpack_from(profile)
    assert header[1] & 0xFFFFFFFF == 8, "crafting needs a clang 14 (v8) profile"
    records = _HEADER.size + header[2]
    names = records + _RECORD.size * header[_NUM_DATA] + header[4] + 8 * header[_NUM_COUNTERS] + header[6]
    return header, records, names


def _uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _with_names_prefix(profile: bytes, prefix: bytes) -> bytes:
    _header, _records, names = _layout(profile)
    crafted = bytearray(profile)
    crafted[names : names + len(prefix)] = prefix
    return bytes(crafted)


def names_length_crash(profile: bytes) -> bytes:
    return _with_names_prefix(profile, _uleb128(1 << 20) + _uleb128(0))


def names_allocation(profile: bytes) -> bytes:
    return _with_names_prefix(profile, _uleb128(1 << 40) + _uleb128(30))


def shared_counters(profile: bytes, records: int = 1000, counters: int = 1000) -> bytes:
    header, first, names = _layout(profile)
    name_ref, func_hash, counter_ptr, function_ptr, _values, _n, _s0, _s1 = _RECORD.unpack_from(profile, first)
    rng = random.Random(records * counters)
    data = bytearray()
    for index in range(records):
        # CounterPtr is relative to its own record, which moves 48 bytes on each time.
        pointer = (counter_ptr - _RECORD.size * index) % (1 << 64)
        data += _RECORD.pack(rng.getrandbits(64), rng.getrandbits(64), pointer, function_ptr, 0, counters, 0, 0)
    fields = list(header)
    fields[_NUM_DATA], fields[_NUM_COUNTERS] = records, counters
    names_section = profile[names : names + header[_NAMES_SIZE] + (-header[_NAMES_SIZE] % 8)]
    binary_ids = profile[_HEADER.size : first]
    return _HEADER.pack(*fields) + binary_ids + bytes(data) + bytes(8 * counters) + names_section


def poisoned_count(profile: bytes, value: int = 4611686018427387909) -> bytes:
    """The first counter set to ``value``: framing intact, one count no run could reach (the
    value once turned `main`'s count of 5 into 4611686018427387909)."""
    header, records, _names = _layout(profile)
    counters = records + _RECORD.size * header[_NUM_DATA] + header[4]
    return profile[:counters] + struct.pack("<Q", value) + profile[counters + 8 :]


def padded_after_counters(profile: bytes, size: int) -> tuple[bytes, int, bytes]:
    """A profile of ``size`` bytes whose padding after the counters makes up the difference, as
    (what comes before the padding, the padding's length, what comes after): a writer that seeks
    over the padding leaves a sparse file of len(profile) bytes on disk."""
    header, records, _names = _layout(profile)
    counters_end = records + _RECORD.size * header[_NUM_DATA] + header[4] + 8 * header[_NUM_COUNTERS]
    grow = size - len(profile)
    fields = list(header)
    fields[6] += grow  # PaddingBytesAfterCounters
    head = _HEADER.pack(*fields) + profile[_HEADER.size : counters_end]
    return head, header[6] + grow, profile[counters_end + header[6] :]
