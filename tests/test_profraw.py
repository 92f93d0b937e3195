"""pgod.profraw against raw profiles written for real by clang 13, 14, 16 and 19.

The fixture profiles are made at test time by each installed clang, so these tests check our
reading of each release's format against what that release's runtime really writes and what that
release's llvm-profdata accepts. A clang that is not installed is a skip naming its packages.
Synthetic profiles cover what no installed clang writes (v9, MC/DC bitmaps, vtables).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.clangs import (
    CLANG_VERSIONS,
    Clang,
    elf_build_id,
    find_clang,
    missing_packages_message,
    run_instrumented,
)
from pgod.intake.profraw import RAW_MAGIC, ProfrawError, RawProfile, parse_profraw, part_bytes

#: The raw-profile version each release writes.
RAW_VERSION = {13: 7, 14: 8, 16: 8, 19: 10}

SOLO_C = r"""
#include <stdio.h>
static int step(int n) { return n % 2 ? 3 * n + 1 : n / 2; }
int main(int argc, char **argv) {
    int n = 26 + argc, steps = 0;
    while (n != 1) { n = step(n); steps++; }
    printf("%d\n", steps);
    return 0;
}
"""
LIB_C = "int lib_square(int x) { return x * x; }\n"
MAIN_C = r"""
#include <stdio.h>
int lib_square(int x);
int main(int argc, char **argv) {
    int sum = 0;
    for (int i = 0; i < argc + 3; i++) sum += lib_square(i);
    printf("%d\n", sum);
    return 0;
}
"""
# An indirect call and a memcpy of variable size: IR instrumentation profiles their values.
VALUES_C = r"""
#include <stdio.h>
#include <string.h>
static int inc(int a) { return a + 1; }
static int dec(int a) { return a - 1; }
int (*volatile ops[2])(int) = {inc, dec};
int main(int argc, char **argv) {
    char buf[64];
    int s = 0;
    for (int i = 0; i < 10 + argc; i++) {
        s = ops[i & 1](s);
        memcpy(buf, argv[0], (size_t)(i % 7) + 1);
        s += buf[0];
    }
    printf("%d\n", s);
    return 0;
}
"""
SOURCES = {"solo.c": SOLO_C, "lib.c": LIB_C, "main.c": MAIN_C, "values.c": VALUES_C}


@dataclass(frozen=True)
class Built:
    """One clang's instrumented programs and the raw profiles they wrote."""

    clang: Clang
    solo_exe: Path
    solo: bytes  # front-end instrumentation, one module
    main_exe: Path
    lib: Path
    two_part: bytes  # main_exe's profile, then lib's, in one file
    values: bytes  # IR instrumentation: value-profile records after the names
    coverage: bytes | None  # single-byte counters; None for clang 13, which cannot make them


@pytest.fixture(scope="module", params=CLANG_VERSIONS, ids=lambda v: f"clang-{v}")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build and run every program once per clang for the whole module."""
    clang = find_clang(request.param)
    if clang is None:
        pytest.skip(missing_packages_message(request.param))
    work = tmp_path_factory.mktemp(f"clang-{clang.version}")
    for name, text in SOURCES.items():
        (work / name).write_text(text)
    solo_exe = clang.compile(work / "solo.c", work / "solo")
    lib = clang.compile(work / "lib.c", work / "libsquare.so", shared=True)
    main_exe = clang.compile(work / "main.c", work / "main", extra=(str(lib), f"-Wl,-rpath,{work}"))
    programs = {
        "solo": solo_exe,
        "two_part": main_exe,  # the library's runtime appends its profile to the same file
        "values": clang.compile(work / "values.c", work / "values", ir=True),
    }
    if clang.version >= 14:
        entry_coverage = ("-mllvm", "-pgo-function-entry-coverage")
        programs["coverage"] = clang.compile(
            work / "solo.c", work / "coverage", ir=True, extra=entry_coverage
        )
    profiles = {}
    for name, exe in programs.items():
        run_instrumented(exe, (), work / f"{name}.profraw")
        profiles[name] = (work / f"{name}.profraw").read_bytes()
    return Built(
        clang, solo_exe, profiles["solo"], main_exe, lib, profiles["two_part"], profiles["values"],
        profiles.get("coverage"),
    )


def rejection(data: bytes | bytearray, max_parts: int = 64) -> str | None:
    """The ProfrawError reason for `data`, or None when it parses; any other exception escapes."""
    try:
        parts = parse_profraw(data, max_parts=max_parts)
    except ProfrawError as err:
        return err.reason
    assert_consistent(data, parts)
    return None


def assert_consistent(data: bytes | bytearray, parts: list[RawProfile]) -> None:
    """Parts tile the whole file, and each one sliced out alone parses to itself."""
    assert parts and parts[0].offset == 0
    for before, after in pairwise(parts):
        assert after.offset == before.offset + before.length
    assert parts[-1].offset + parts[-1].length == len(data)
    for part in parts:
        assert parse_profraw(part_bytes(data, part)) == [replace(part, offset=0)]


def show(clang: Clang, path: Path, data: bytes | memoryview) -> str:
    """`llvm-profdata show` of `clang`'s release on `data`; fails the test if it is refused."""
    path.write_bytes(data)
    shown = clang.profdata_show(path, "--all-functions", "--binary-ids")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


# --- real profiles ---------------------------------------------------------------------------


def test_version_is_the_one_each_clang_release_writes(built: Built) -> None:
    """clang 13 writes raw version 7, clang 14 and 16 version 8, clang 19 version 10."""
    [part] = parse_profraw(built.solo)
    assert part.version == RAW_VERSION[built.clang.version]
    assert part.variant_flags == 0  # front-end instrumentation sets no variant bit
    assert (part.offset, part.length) == (0, len(built.solo))
    assert part.num_data == 2  # main and step


def test_binary_id_is_the_gnu_build_id_of_the_executable(built: Built) -> None:
    """Attribution rests on this; clang 13 writes no binary id for an executable at all."""
    build_id = elf_build_id(built.solo_exe)
    assert build_id is not None
    [part] = parse_profraw(built.solo)
    assert part.binary_ids == (() if built.clang.version == 13 else (build_id,))


def test_executable_and_shared_library_profiles_split_into_two_parts(built: Built) -> None:
    """Both modules append to one file; each part carries its own module's build-id.

    clang 13 writes the library's id (unpadded) but none for the executable.
    """
    exe_id, lib_id = elf_build_id(built.main_exe), elf_build_id(built.lib)
    parts = parse_profraw(built.two_part)
    assert_consistent(built.two_part, parts)
    assert len(parts) == 2
    assert parts[0].binary_ids == (() if built.clang.version == 13 else (exe_id,))
    assert parts[1].binary_ids == (lib_id,)


def test_each_part_alone_is_accepted_by_llvm_profdata_of_its_release(
    built: Built, tmp_path: Path
) -> None:
    """A part sliced out by its computed length is a whole raw profile of its own module."""
    exe_part, lib_part = parse_profraw(built.two_part)
    exe_shown = show(built.clang, tmp_path / "exe.profraw", part_bytes(built.two_part, exe_part))
    lib_shown = show(built.clang, tmp_path / "lib.profraw", part_bytes(built.two_part, lib_part))
    assert "  main:" in exe_shown and "lib_square" not in exe_shown
    assert "  lib_square:" in lib_shown and "  main:" not in lib_shown
    for part, shown in ((exe_part, exe_shown), (lib_part, lib_shown)):
        assert all(build_id in shown for build_id in part.binary_ids)


def test_value_profile_records_count_in_the_part_length(built: Built, tmp_path: Path) -> None:
    """IR instrumentation appends value records after the names; the next part starts after them."""
    [part] = parse_profraw(built.values)
    assert part.variant_flags & (1 << 24)  # VARIANT_MASK_IR_PROF
    assert part.value_data_size > 0
    assert part.length == len(built.values)
    doubled = built.values * 2
    assert [p.length for p in parse_profraw(doubled)] == [part.length, part.length]
    show(built.clang, tmp_path / "doubled.profraw", doubled)


def test_single_byte_counters_are_one_byte_each(built: Built, tmp_path: Path) -> None:
    """Entry coverage uses 1-byte counters. LLVM 14 and 16 write no padding after them, so what
    follows is unaligned and the file length need not be a multiple of 8."""
    if built.coverage is None:
        pytest.skip(f"clang {built.clang.version} has no single-byte coverage (v8 added it)")
    [part] = parse_profraw(built.coverage)
    assert part.counter_size == 1
    assert part.length == len(built.coverage)
    show(built.clang, tmp_path / "coverage.profraw", built.coverage)


def test_truncation_at_every_offset_is_rejected(built: Built) -> None:
    """A profile cut short (a crash mid-write, a full disk) is never taken for a whole one."""
    for data in (built.solo, built.values):
        for cut in range(len(data)):
            assert rejection(data[:cut]) is not None, f"cut at {cut} of {len(data)} accepted"


def test_two_part_file_cut_anywhere_but_the_part_boundary_is_rejected(built: Built) -> None:
    """Cut exactly where the library's part begins, the file is honestly the executable's alone."""
    exe_part, _ = parse_profraw(built.two_part)
    for cut in range(len(built.two_part)):
        if cut == exe_part.length:
            assert parse_profraw(built.two_part[:cut]) == [exe_part]
        else:
            assert rejection(built.two_part[:cut]) is not None, f"cut at {cut} accepted"


def test_every_header_bit_flip_is_rejected_or_parses_consistently(built: Built) -> None:
    """Flips in sizes must never make parts overlap, leave gaps or run past the end.

    Framing cannot catch every flip: one in a delta, a known variant bit, a build-id byte or
    the low bits of NamesSize (same padded size) still parses, and so does one that grows a part
    by exactly the length of the next. Those must still parse consistently.
    """
    header_size = {7: 88, 8: 88, 9: 112, 10: 128}
    for data in (built.solo, built.two_part):
        for part in parse_profraw(data):
            (ids_size,) = struct.unpack_from("<Q", data, part.offset + 16)
            for index in range(part.offset, part.offset + header_size[part.version] + ids_size):
                for bit in range(8):
                    mutated = bytearray(data)
                    mutated[index] ^= 1 << bit
                    reason = rejection(mutated)
                    if index < part.offset + 8:
                        assert reason is not None, f"magic flip at byte {index} bit {bit} accepted"


def test_error_message_names_the_offset_and_the_field() -> None:
    """The quarantine log says where and what."""
    data = synthetic_profile(8) * 2
    struct.pack_into("<Q", data, len(data) // 2 + 8 * 5, 2**63)  # NumCounters of the second part
    with pytest.raises(ProfrawError) as caught:
        parse_profraw(data)
    assert caught.value.reason == "size-mismatch"
    assert f"offset {len(data) // 2}" in str(caught.value) and "NumCounters" in str(caught.value)


# --- synthetic profiles ----------------------------------------------------------------------

V8_FIELDS = (
    "Magic", "Version", "BinaryIdsSize", "NumData", "PaddingBytesBeforeCounters", "NumCounters",
    "PaddingBytesAfterCounters", "NamesSize", "CountersDelta", "NamesDelta", "ValueKindLast",
)
V9_FIELDS = (
    "Magic", "Version", "BinaryIdsSize", "NumData", "PaddingBytesBeforeCounters", "NumCounters",
    "PaddingBytesAfterCounters", "NumBitmapBytes", "PaddingBytesAfterBitmapBytes", "NamesSize",
    "CountersDelta", "BitmapDelta", "NamesDelta", "ValueKindLast",
)
HEADER_FIELDS = {
    7: V8_FIELDS, 8: V8_FIELDS, 9: V9_FIELDS,
    10: V9_FIELDS[:-1] + ("NumVTables", "VNamesSize", "ValueKindLast"),
}
SIZE_FIELDS = (
    "BinaryIdsSize", "NumData", "PaddingBytesBeforeCounters", "NumCounters",
    "PaddingBytesAfterCounters", "NumBitmapBytes", "PaddingBytesAfterBitmapBytes", "NamesSize",
    "NumVTables", "VNamesSize",
)
BUILD_ID = bytes(range(1, 21))
MAGIC_32 = 0xFF6C70726F665281  # "\xfflprofR\x81"


def pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) & 7)


def synthetic_profile(version: int, *, records: int = 1, value_sites: bool = True) -> bytearray:
    """A raw profile with every section `version` has non-empty, as LLVM's sources describe it.

    With `value_sites`, each data record has one memcpy-size value site, hence a value record.
    """
    record = bytearray(48 if version < 9 else 64)
    struct.pack_into("<I", record, 40 if version < 9 else 48, 2)  # NumCounters
    sites_offset = 44 if version < 9 else 52
    struct.pack_into("<H", record, sites_offset + 2, value_sites)  # NumValueSites[IPVK_MemOPSize]
    if version >= 9:
        struct.pack_into("<I", record, 56 if version == 9 else 60, 3)  # NumBitmapBytes
    binary_id = struct.pack("<Q", len(BUILD_ID)) + BUILD_ID
    binary_ids = binary_id if version == 7 else pad8(binary_id)  # v7 does not pad
    names = b"\x05\x00hello"
    # ValueProfData (TotalSize, NumValueKinds), one ValueProfRecord (Kind, NumValueSites, a count).
    value_record = struct.pack("<IIIIB", 24, 1, 1, 1, 0).ljust(24, b"\0")
    fields = dict.fromkeys(HEADER_FIELDS[version], 0) | {
        "Magic": RAW_MAGIC, "Version": version, "BinaryIdsSize": len(binary_ids),
        "NumData": records, "NumCounters": 2 * records, "NumBitmapBytes": 3 * records,
        "PaddingBytesAfterBitmapBytes": -3 * records & 7, "NamesSize": len(names),
        "NumVTables": 1, "VNamesSize": 3, "ValueKindLast": 2 if version == 10 else 1,
    }
    header_values = (fields[name] for name in HEADER_FIELDS[version])
    sections = [
        struct.pack(f"<{len(HEADER_FIELDS[version])}Q", *header_values),
        binary_ids,
        bytes(record) * records,
        bytes(16 * records),  # counters
    ]
    if version >= 9:
        sections.append(pad8(bytes(3 * records)))  # bitmap
    sections.append(pad8(names))
    if version >= 10:
        sections += [bytes(24), pad8(b"vtb")]  # one vtable record, its name
    sections.append(value_record * (records if value_sites else 0))
    return bytearray(b"".join(sections))


@pytest.mark.parametrize("version", [7, 8, 9, 10])
def test_synthetic_profile_of_each_version_parses_to_what_it_was_built_from(version: int) -> None:
    """The only v9 coverage (no clang 18 here), and the bitmap and vtable sections of v9/v10."""
    data = synthetic_profile(version)
    [part] = parse_profraw(data)
    assert (part.length, part.version, part.binary_ids) == (len(data), version, (BUILD_ID.hex(),))
    assert (part.num_data, part.num_counters, part.value_data_size) == (1, 2, 24)
    assert part.num_bitmap_bytes == (3 if version >= 9 else 0)
    assert (part.num_vtables, part.vnames_size) == ((1, 3) if version == 10 else (0, 0))
    for cut in range(len(data)):
        assert rejection(data[:cut]) is not None


@pytest.mark.parametrize("version", [7, 8, 9, 10])
@pytest.mark.parametrize("huge", [2**63, 2**64 - 1, 2**64 - 8])
def test_absurd_sizes_are_rejected_without_allocating(version: int, huge: int) -> None:
    """A u64 size near 2**64 must fail the bounds check, not overflow it or allocate for it."""
    fields = HEADER_FIELDS[version]
    for field in set(SIZE_FIELDS) & set(fields):
        data = synthetic_profile(version)
        struct.pack_into("<Q", data, 8 * fields.index(field), huge)
        tracemalloc.start()
        try:
            reason = rejection(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reason in {"size-mismatch", "bad-binary-id"}, field
        assert peak < 64 * 1024, f"{field}={huge} made the parser allocate {peak} bytes"


@pytest.mark.parametrize(
    ("offset_from_end", "fmt", "value", "reason"),
    [
        (None, "<Q", 2**63, "bad-binary-id"),
        (None, "<Q", 0, "bad-binary-id"),
        (24, "<I", 0xFFFFFFF8, "size-mismatch"),
        (24, "<I", 20, "bad-value-data"),
        (20, "<I", 2, "bad-value-data"),
    ],
    ids=["huge-binary-id", "empty-binary-id", "huge-value-record", "odd-value-record",
         "wrong-value-kinds"],
)
def test_impossible_lengths_inside_sections_are_rejected(
    offset_from_end: int | None, fmt: str, value: int, reason: str
) -> None:
    """Binary-id lengths and value-record sizes get their own bounds checks."""
    data = synthetic_profile(8)
    offset = 88 if offset_from_end is None else len(data) - offset_from_end
    struct.pack_into(fmt, data, offset, value)
    assert rejection(data) == reason


@pytest.mark.parametrize(
    "magic",
    [struct.pack("<Q", MAGIC_32), struct.pack(">Q", RAW_MAGIC), struct.pack(">Q", MAGIC_32)],
    ids=["32-bit", "big-endian", "32-bit-big-endian"],
)
def test_32_bit_and_big_endian_profiles_are_unsupported(magic: bytes) -> None:
    """LLVM writes these on other targets; pgod serves 64-bit little-endian Linux."""
    assert rejection(magic + synthetic_profile(8)[8:]) == "unsupported-format"


@pytest.mark.parametrize(
    ("version", "flags"),
    [(6, 0), (11, 0), (0, 0), (7, 1 << 60), (8, 1 << 40), (10, 1 << 32)],
    ids=["v6", "v11", "v0", "v7-byte-coverage", "v8-bit-40", "v10-bit-32"],
)
def test_unknown_versions_and_variant_bits_are_unsupported(version: int, flags: int) -> None:
    """Any other layout would be misread, so it is refused before any size is trusted."""
    data = synthetic_profile(version if version in HEADER_FIELDS else 8)
    struct.pack_into("<Q", data, 8, flags | version)
    assert rejection(data) == "unsupported-version"


def test_wrong_value_kind_count_is_a_bad_header() -> None:
    """ValueKindLast is fixed per version; another value means another layout."""
    data = synthetic_profile(10)
    struct.pack_into("<Q", data, 8 * 15, 1)  # v9's ValueKindLast in a v10 header
    assert rejection(data) == "bad-header"


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (bytes(8), "trailing-garbage"),
        (b"x", "trailing-garbage"),
        (struct.pack("<Q", RAW_MAGIC), "truncated-header"),
    ],
    ids=["zeros", "one-byte", "lone-magic"],
)
def test_bytes_after_the_last_part_are_rejected(tail: bytes, reason: str) -> None:
    """Zero padding too: no Linux writer leaves any, and a zeroed tail may hide a lost part."""
    assert rejection(synthetic_profile(8) + tail) == reason


def test_more_parts_than_max_parts_are_rejected() -> None:
    data = synthetic_profile(8) * 3
    assert len(parse_profraw(data, max_parts=3)) == 3
    assert rejection(data, max_parts=2) == "too-many-parts"


def test_parts_of_different_versions_split_independently() -> None:
    """An executable and a library built by different clangs share one file; each part keeps
    its own version, so each can go to the llvm-profdata that matches it."""
    data = synthetic_profile(8) + synthetic_profile(10)
    assert [part.version for part in parse_profraw(data)] == [8, 10]


def test_empty_input_is_rejected_as_empty() -> None:
    assert rejection(b"") == "empty"


def test_parse_time_does_not_grow_with_section_sizes() -> None:
    """It runs for thousands of files a second: no Python loop over records without value sites."""
    data = synthetic_profile(8, records=100_000, value_sites=False)
    started = time.perf_counter()
    [part] = parse_profraw(data)
    elapsed = time.perf_counter() - started
    assert part.num_data == 100_000
    assert elapsed < 0.05, f"{elapsed * 1e3:.1f} ms for 100,000 data records"


# --- random input ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_profraw_error(data: bytes) -> None:
    rejection(data)


@settings(max_examples=500, deadline=None)
@given(
    version=st.sampled_from([7, 8, 9, 10]),
    sizes=st.lists(st.integers(0, 80) | st.integers(0, 2**64 - 1), min_size=13, max_size=13),
    tail=st.binary(max_size=700),
)
def test_random_headers_after_a_valid_magic_only_raise_profraw_error(
    version: int, sizes: list[int], tail: bytes
) -> None:
    """Headers that pass the magic, version and ValueKindLast checks reach the size checks."""
    fields = HEADER_FIELDS[version]
    values = dict(zip(fields[2:-1], sizes)) | {
        "Magic": RAW_MAGIC, "Version": version, "ValueKindLast": 2 if version == 10 else 1,
    }
    rejection(struct.pack(f"<{len(fields)}Q", *(values[f] for f in fields)) + tail)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_overwrites_of_real_profiles_only_raise_profraw_error(
    built: Built, data: st.DataObject
) -> None:
    profile = bytearray(built.two_part)
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(profile) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=8))
        profile[start : start + len(patch)] = patch
    rejection(profile)
