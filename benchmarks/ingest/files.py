"""The ingest benchmark's inputs: the instrumented programs (the tests' workload program for
small raw files, a generated one of 1,500 functions for ~100 KB ones), the raw files copied from
their runs' profiles, and the baseline every scenario is compared with: one `llvm-profdata merge`
over the same files.
"""

from __future__ import annotations

import os
import statistics
import textwrap
from pathlib import Path

from testbed.measured import child_cpu
from testbed.programs import PROFDATA, WORKLOAD_C

LARGE_FUNCTIONS = 1500  # 1,500 functions × (data record + 2 counters) ≈ 100 KB of raw profile

# Counters depend on the input, so the seed runs give different profiles (the tests' program).
SMALL_C = WORKLOAD_C


def large_c(functions: int) -> str:
    """Many small functions with a branch each, called through a table so none is inlined away."""
    lines = ["#include <stdio.h>", "#include <stdlib.h>"]
    for i in range(functions):
        lines.append(
            f"__attribute__((noinline)) static unsigned f{i}(unsigned x) "
            f"{{ if ((x ^ {i}u) & {1 << (i % 5)}u) return x * {2 * i + 3}u + {i}u; return (x >> 1) ^ {i}u; }}"
        )
    lines.append("typedef unsigned (*fn)(unsigned);")
    lines.append("static fn table[] = {" + ",".join(f"f{i}" for i in range(functions)) + "};")
    lines.append(
        textwrap.dedent(
            f"""\
            int main(int argc, char **argv) {{
                unsigned seed = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 1, acc = seed;
                for (unsigned i = 0; i < {functions}u * 4u; i++)
                    acc += table[(i * 7u + seed * 13u) % {functions}u](acc + i);
                printf("%u\\n", acc);
                return 0;
            }}"""
        )
    )
    return "\n".join(lines) + "\n"


def make_copies(seeds: list[Path], directory: Path, count: int, prefix: str, mtime: float | None = None) -> list[Path]:
    """``count`` distinct raw files (own inode, one link each) cycling through the seed profiles.

    Why copies and not ``count`` runs: what pgod and llvm-profdata spend per file (rename, stat,
    open, header parse, reading and adding the counters) depends on the file's size and layout,
    which every run of one binary shares, not on the counter values. The seeds still differ, so
    the merged profile is a real sum; copying is ~100× faster than exec'ing 20,000 processes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    blobs = [seed.read_bytes() for seed in seeds]
    paths = []
    for i in range(count):
        path = directory / f"{prefix}-{i:06d}.profraw"
        with open(path, "wb") as out:
            out.write(blobs[i % len(blobs)])
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


def baseline_cpu(files: list[Path], workdir: Path, repeats: int = 3) -> float:
    """CPU of ONE `llvm-profdata merge -o OUT -f LIST` over ``files``: median of ``repeats`` calls."""
    workdir.mkdir(parents=True, exist_ok=True)
    listing = workdir / "inputs.txt"
    listing.write_text("".join(f"{path}\n" for path in files))
    output = workdir / "baseline.profdata"
    cpu = [child_cpu([str(PROFDATA), "merge", "-o", str(output), "-f", str(listing)]) for _ in range(repeats)]
    return statistics.median(cpu)
