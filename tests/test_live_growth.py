"""Growth of a live run (pgod/intake/growth.py) against real llvm-profdata, clang 14 and 19.

A program writes cumulative snapshots of its own profile while it runs (the runtime's
`__llvm_profile_write_file`, as the live object does) and a final one at exit. The growths pgod
computes between consecutive snapshots, merged, must equal one merge of the final snapshot,
function by function, counters and value profiles (indirect-call targets, memop sizes): nothing
counted twice, nothing lost.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pgod.intake.growth import growth, structure_key
from pgod.intake.profraw import parse_profraw
from testbed.clangs import find_clang, missing_packages_message
from testbed.live import snapshots_of_a_run


def _show(profdata: Path, path: Path) -> str:
    return subprocess.run(
        [str(profdata), "show", "--all-functions", "--counts", "--ic-targets", "--memop-sizes", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout


def _merge(profdata: Path, inputs: list[Path], output: Path) -> Path:
    subprocess.run([str(profdata), "merge", "-o", str(output), *map(str, inputs)], check=True, capture_output=True)
    return output


@pytest.mark.parametrize("version", [14, 19])
def test_the_growths_of_a_run_add_up_to_its_final_snapshot(version, tmp_path):
    clang = find_clang(version)
    if clang is None:
        pytest.skip(missing_packages_message(version))
    snapshots = snapshots_of_a_run(clang, tmp_path / "package", tmp_path / "run", 4)
    assert all(s.stat().st_size for s in snapshots)

    grown, previous, new_runs, value_runs = [], None, 0, 0
    for index, path in enumerate(snapshots):
        data = path.read_bytes()
        (part,) = parse_profraw(data)
        base = None if previous is None else previous
        result = growth(base[0] if base else None, base[1] if base else None, data, part)
        new_runs += result.new_run
        if result.data is not None:
            (checked,) = parse_profraw(result.data)  # the growth is itself a well-formed raw profile
            value_runs += checked.value_data_size > 0
            out = tmp_path / f"growth-{index}.profraw"
            out.write_bytes(result.data)
            grown.append(out)
        previous = (data, part)
    assert new_runs == 1, "only the first snapshot counts whole"
    assert value_runs >= 2, "value profiles grew between snapshots and were carried"

    summed = _merge(clang.profdata, grown, tmp_path / "summed.profdata")
    final = _merge(clang.profdata, [snapshots[-1]], tmp_path / "final.profdata")
    assert _show(clang.profdata, summed) == _show(clang.profdata, final)
    # And adding the snapshots themselves, as a naive reader would, is not the same.
    naive = _merge(clang.profdata, snapshots, tmp_path / "naive.profdata")
    assert _show(clang.profdata, naive) != _show(clang.profdata, final)


@pytest.mark.parametrize("version", [19])
def test_counters_that_go_down_in_bulk_are_a_new_run_and_another_binary_too(version, tmp_path):
    clang = find_clang(version)
    if clang is None:
        pytest.skip(missing_packages_message(version))
    files = snapshots_of_a_run(clang, tmp_path / "package", tmp_path / "run", 3)
    early, late = files[0].read_bytes(), files[2].read_bytes()
    (early_part,), (late_part,) = parse_profraw(early), parse_profraw(late)
    assert structure_key(early, early_part) == structure_key(late, late_part)
    backwards = growth(late, late_part, early, early_part)
    assert backwards.new_run and backwards.data == early
    unchanged = growth(late, late_part, late, late_part)
    assert unchanged.data is None and not unchanged.new_run

    foreign = snapshots_of_a_run(clang, tmp_path / "other", tmp_path / "run", 1, extra=("-O2",))[0].read_bytes()
    (foreign_part,) = parse_profraw(foreign)
    assert growth(late, late_part, foreign, foreign_part).new_run
