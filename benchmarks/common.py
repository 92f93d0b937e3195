"""What the ingest, hostile and fairness benchmarks share beyond `testbed`: their progress line,
and the config of a daemon that only ingests (its threshold is never reached, so it never builds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.config import folders_under, write_config
from testbed.programs import PROFDATA


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ingest_config(path: Path, root: Path, packages: dict[str, Path]) -> Path:
    """pgod's config with its spool, state and profile link under ``root``, and one package per
    entry of ``packages`` (name → its instrumented build's folder)."""
    top = {**folders_under(root), "threshold_mb": 1000000}  # never reach a build: this measures ingest only
    tables = {
        name: {"profile_build": [build_dir], "build": ["true"], "llvm_profdata": PROFDATA}
        for name, build_dir in packages.items()
    }
    return write_config(path, top, tables)
