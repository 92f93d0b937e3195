"""The instrumented workload program and raw profiles made by running it.

`programs/workload.c` is a small C program whose counters depend on its input, so N runs with
`workload_inputs(N)` give N different profiles; the tests' `workload` fixture, the guest runs and
the ingest, hostile and fairness benchmarks all build it. `compile_program` and `seed_profiles`
are the benchmarks' way: clang-14 at a fixed path, one raw profile per run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: The workload program: its file, and its C source.
WORKLOAD_SOURCE = Path(__file__).parent / "programs" / "workload.c"
WORKLOAD_C = WORKLOAD_SOURCE.read_text()

CLANG = Path("/usr/bin/clang-14")
PROFDATA = Path("/usr/bin/llvm-profdata-14")
PROFILE_FLAGS = ("-O1", "-fprofile-instr-generate", "-Wl,--build-id")


def workload_inputs(count: int) -> list[list[str]]:
    """Distinct, deterministic inputs for the workload program."""
    words = ["alpha", "b3ta", "GAMMA 7", "d", "42 x 42", "zz top 99"]
    return [[str(i * 7 + 1), words[i % len(words)] * (1 + i % 3)] for i in range(count)]


def compile_program(source_text: str, directory: Path, name: str) -> Path:
    """Compile one C file, instrumented, into ``directory/bin/name``; returns the executable."""
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.c"
    source.write_text(source_text)
    exe = directory / "bin" / name
    subprocess.run([str(CLANG), *PROFILE_FLAGS, str(source), "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def seed_profiles(exe: Path, directory: Path, runs: int, args_for) -> list[Path]:
    """Run the program ``runs`` times, one raw profile per run."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    for i in range(runs):
        path = directory / f"seed-{i:03d}.profraw"
        subprocess.run(
            [str(exe), *args_for(i)],
            env={**os.environ, "LLVM_PROFILE_FILE": str(path)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seeds.append(path)
    return seeds
