"""llvm-profdata as the reference pgod is checked against: one merge of exactly the files sent,
and the per-function counts two profiles must share."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def profdata_show(profdata: str, path: Path) -> str:
    """Every function's counts, as llvm-profdata prints them: the fingerprint two profiles share."""
    return subprocess.run(
        [profdata, "show", "--all-functions", "--counts", str(path)], capture_output=True, text=True, check=True
    ).stdout


def one_shot_merge(profdata: str, inputs: list[Path], output: Path) -> Path:
    listing = output.with_suffix(".list")
    listing.write_text("".join(f"{p}\n" for p in inputs))
    subprocess.run([profdata, "merge", "-o", str(output), "-f", str(listing)], check=True)
    return output


def copy_tree_files(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for entry in sorted(source.iterdir()):
        shutil.copy2(entry, target / entry.name)
        copied.append(target / entry.name)
    return copied
