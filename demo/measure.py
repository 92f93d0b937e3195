"""Step f: measurement, every binary over the workload in interleaved rounds, all printing the
same; wall and CPU seconds of every run, and the medians and speedups taken from them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from demo.common import DemoError, Layout, say
from demo.training import run_lua, user_env


@dataclass
class Measurement:
    """Wall and CPU seconds of every run: [binary][script] → one value per round."""

    names: list[str]
    scripts: list[str]
    wall: dict[str, dict[str, list[float]]]
    cpu: dict[str, dict[str, list[float]]]
    output_bytes: int

    @property
    def rounds(self) -> int:
        return len(self.wall[self.names[0]][self.scripts[0]])

    def median_wall(self, name: str) -> float:
        """The workload's time: each script's median over the rounds, summed."""
        return sum(statistics.median(runs) for runs in self.wall[name].values())

    def median_cpu(self, name: str) -> float:
        return sum(statistics.median(runs) for runs in self.cpu[name].values())

    def round_wall(self, name: str, index: int) -> float:
        return sum(runs[index] for runs in self.wall[name].values())

    def speedup(self, name: str, base: str = "plain") -> float:
        return self.median_wall(base) / self.median_wall(name)


def measure(binaries: dict[str, Path | str], scripts: list[Path], rounds: int, layout: Layout,
            instrumented: tuple[str, ...] = ()) -> Measurement:
    """Interleaved runs: in each round, every script runs under every binary back to back, in an
    order that rotates with the round and the script, so slow drifts of the machine's load hit all
    binaries alike. All binaries must print the same. The `instrumented` ones write their raw
    profile (part of their cost) into a scratch folder, emptied after each run; every other
    binary must write none."""
    names = list(binaries)
    layout.probe.mkdir(parents=True, exist_ok=True)
    scratch = layout.bench / "instrumented-runs"
    scratch.mkdir(parents=True, exist_ok=True)
    # An uninstrumented binary writes no profile even when asked to.
    plain_env = user_env(LLVM_PROFILE_FILE=f"{layout.probe}/%p.profraw")
    instr_env = user_env(LLVM_PROFILE_FILE=f"{scratch}/%p.profraw")

    def run(name: str, script: Path) -> tuple[float, float, str]:
        if name not in instrumented:
            return run_lua(binaries[name], script, plain_env)
        got = run_lua(binaries[name], script, instr_env)
        if not any(scratch.iterdir()):
            raise DemoError(f"{name} was to be instrumented but wrote no profile")
        for path in scratch.iterdir():
            path.unlink()
        return got

    reference = {}
    for name in names:  # warm-up, and the outputs compared
        for script in scripts:
            _, _, out = run(name, script)
            if reference.setdefault(script.name, out) != out:
                raise DemoError(f"{name} prints something else than {names[0]} for {script.name}")
    if written := list(layout.probe.iterdir()):
        raise DemoError(f"a measured binary is instrumented: it wrote {written[0].name}")
    size = sum(len(out) for out in reference.values())
    say(f"    warm-up done; all {len(names)} binaries print the same {size} bytes for the {len(scripts)} scripts")
    wall = {name: {script.name: [] for script in scripts} for name in names}
    cpu = {name: {script.name: [] for script in scripts} for name in names}
    result = Measurement(names, [script.name for script in scripts], wall, cpu, size)
    for index in range(rounds):
        for position, script in enumerate(scripts):
            turn = (index + position) % len(names)
            for name in names[turn:] + names[:turn]:
                w, c, out = run(name, script)
                if out != reference[script.name]:
                    raise DemoError(f"{name} printed something else for {script.name} in round {index + 1}")
                wall[name][script.name].append(w)
                cpu[name][script.name].append(c)
        say(f"    round {index + 1}/{rounds}: " + ", ".join(f"{name} {result.round_wall(name, index):.2f}" for name in names) + " s")
    if written := list(layout.probe.iterdir()):
        raise DemoError(f"a measured binary is instrumented: it wrote {written[0].name}")
    return result
