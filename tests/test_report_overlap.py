"""The report's "change since the build" per level, for two-level (IR + context-sensitive)
profiles made by real clang 14, checked against the per-function counts llvm-profdata shows.

llvm-profdata-14's own `overlap` line is not usable for such profiles (it printed 134.243 % for
two profiles with equal count sums after `make demo`, 278.724 % with `--cs`): an overlap is never
above 100 %, and a profile against itself has changed 0 %.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pgod.profiles.overlap import level_overlap
from pgod.profiles.tool import show_levels

PROGRAM = r"""
#include <stdlib.h>
__attribute__((noinline)) static long leaf(long i, long k) { return i % k ? i * 3 : i / k; }
__attribute__((noinline)) static long mid(long i, long k) { return leaf(i, k) + leaf(i + 1, k + 1); }
int main(int argc, char **argv) {
  long n = atol(argv[1]), k = atol(argv[2]), s = 0;
  for (long i = 0; i < n; i++) s += k > 3 ? mid(i, k) : leaf(i, k);
  return (int)(s & 1);
}
"""


def _run(argv, **kwargs):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kwargs)


def _two_level_profile(clang, tmp: Path, name: str, runs: list[tuple[str, str]]) -> Path:
    """IR profile of ``runs``, then the CS-instrumented build from it run the same way: merged, both levels."""
    source = tmp / "prog.c"
    source.write_text(PROGRAM)
    ir_exe, raw = tmp / f"{name}-ir", tmp / f"{name}-raw"
    _run([clang.cc, "-O2", "-fprofile-generate", source, "-o", ir_exe])
    for n, k in runs:
        subprocess.run([str(ir_exe), n, k], env={"LLVM_PROFILE_FILE": f"{raw}/ir-%p.profraw"})  # exits with s & 1
    ir = tmp / f"{name}-ir.profdata"
    _run([clang.profdata, "merge", "-o", ir, *sorted(raw.glob("ir-*.profraw"))])
    cs_exe = tmp / f"{name}-cs"
    _run([clang.cc, "-O2", f"-fprofile-use={ir}", "-fcs-profile-generate", source, "-o", cs_exe])
    for n, k in runs:
        subprocess.run([str(cs_exe), n, k], env={"LLVM_PROFILE_FILE": f"{raw}/cs-%p.profraw"})  # exits with s & 1
    both = tmp / f"{name}.profdata"
    _run([clang.profdata, "merge", "-o", both, ir, *sorted(raw.glob("cs-*.profraw"))])
    return both


def _reference(profdata: Path, profile: Path, cs: bool) -> dict[tuple[str, str], list[int]]:
    """(name, hash) → counters, read straight from `show` (its own small parser, not pgod's)."""
    text = _run([profdata, "show", "--all-functions", "--counts", *(["--showcs"] if cs else []), profile]).stdout
    found, name, digest = {}, None, None
    for line in text.splitlines():
        if re.match(r"^  \S.*:$", line):
            name = line.strip()[:-1]
        elif line.strip().startswith("Hash:"):
            digest = line.split(":", 1)[1].strip()
        elif line.strip().startswith("Function count:"):  # front-end: the entry count is counter 0
            found[(name, digest)] = [int(line.split(":", 1)[1])]
        elif "Block counts:" in line:
            inner = line.split("[", 1)[1].rstrip("]").strip()
            found.setdefault((name, digest), []).extend(int(v) for v in inner.split(",") if inner)
    return found


def _expected_overlap(base: dict, test: dict) -> float:
    base_sum = sum(map(sum, base.values()))
    test_sum = sum(map(sum, test.values()))
    shared = sum(min(b / base_sum, t / test_sum) for key, counters in test.items() if key in base
                 for b, t in zip(base[key], counters))
    return 100.0 * shared


def _levels(profdata: Path, base: Path, test: Path) -> dict[str, dict]:
    fds = [os.open(base, os.O_RDONLY), os.open(test, os.O_RDONLY)]
    try:
        shown = [show_levels(str(profdata), fd) for fd in fds]
        return {name: level_overlap(shown[0][level], shown[1][level]) for name, level in (("ir", "main"), ("cs", "cs"))}
    finally:
        for fd in fds:
            os.close(fd)


def test_each_level_of_a_two_level_profile_is_measured_right(clang14, tmp_path):
    first = _two_level_profile(clang14, tmp_path, "first", [("20000", "5"), ("3000", "2")])
    second = _two_level_profile(clang14, tmp_path, "second", [("20000", "5"), ("90000", "2")])

    same = _levels(clang14.profdata, first, first)
    for level in ("ir", "cs"):
        assert same[level]["overlap_percent"] == 100.0 and same[level]["changed_percent"] == 0.0, level
        assert same[level]["functions_overlap"] > 0, level
    # What the tool itself says of a two-level profile against itself: not an overlap.
    tool = _run([clang14.profdata, "overlap", first, first]).stdout
    tools_own = float(re.search(r"Edge profile overlap: ([\d.]+)%", tool).group(1))
    assert tools_own > 100, f"llvm-profdata-14 says {tools_own} % for a two-level profile against itself"

    moved = _levels(clang14.profdata, first, second)
    for level, cs in (("ir", False), ("cs", True)):
        expected = _expected_overlap(_reference(clang14.profdata, first, cs), _reference(clang14.profdata, second, cs))
        assert moved[level]["overlap_percent"] == pytest.approx(expected, abs=0.001), level
        assert 0 < moved[level]["overlap_percent"] < 100 and moved[level]["changed_percent"] > 0, level


def _one_level_profile(clang, tmp: Path, name: str, flag: str, runs: list[tuple[str, str]]) -> Path:
    source = tmp / "prog.c"
    source.write_text(PROGRAM)
    exe, raw = tmp / f"{name}-exe", tmp / f"{name}-raw"
    _run([clang.cc, "-O2", flag, source, "-o", exe])
    for n, k in runs:
        subprocess.run([str(exe), n, k], env={"LLVM_PROFILE_FILE": f"{raw}/%p.profraw"})  # exits with s & 1
    profile = tmp / f"{name}.profdata"
    _run([clang.profdata, "merge", "-o", profile, *sorted(raw.glob("*.profraw"))])
    return profile


@pytest.mark.parametrize("kind, flag", [("fe", "-fprofile-instr-generate"), ("ir", "-fprofile-generate")])
def test_a_one_level_profile_is_measured_right_and_as_the_tool_says(clang14, tmp_path, kind, flag):
    """Front-end and IR profiles (one level each): the figure from the counts, the reference
    computed here, and llvm-profdata's own overlap line (right for one level) agree."""
    first = _one_level_profile(clang14, tmp_path, f"{kind}-first", flag, [("20000", "5"), ("3000", "2")])
    second = _one_level_profile(clang14, tmp_path, f"{kind}-second", flag, [("20000", "5"), ("90000", "2")])
    same = _levels(clang14.profdata, first, first)
    assert same["ir"]["changed_percent"] == 0.0 and same["ir"]["functions_overlap"] > 0
    assert same["cs"]["base_functions"] == 0  # one level: nothing context-sensitive
    moved = _levels(clang14.profdata, first, second)["ir"]
    expected = _expected_overlap(_reference(clang14.profdata, first, False), _reference(clang14.profdata, second, False))
    assert moved["overlap_percent"] == pytest.approx(expected, abs=0.001)
    tool = _run([clang14.profdata, "overlap", first, second]).stdout
    tools_own = float(re.search(r"Edge profile overlap: ([\d.]+)%", tool).group(1))
    assert moved["overlap_percent"] == pytest.approx(tools_own, abs=0.01)
    assert 0 < moved["overlap_percent"] < 100
