"""pgod's config file, written as TOML: the one writer the tests, the demo and the benchmarks use.

Only what a pgod config holds is supported: strings (and paths), numbers, booleans and lists of
them, at the top level and in one `[packages.NAME]` table per package.
"""

from __future__ import annotations

import json
from pathlib import Path


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


# Bytes alone decide when a build is due (no maturity) and the machine's power and load never
# delay it: what a test, benchmark or guest run that is not about scheduling wants, so its
# builds start at the threshold, as they did before pgod/schedule. Tests of the schedule leave
# these out or set their own.
SCHEDULE_OFF = {"settled_percent": 100, "rebuild_change_percent": 0, "build_idle_cpu_percent": 100,
                "build_on_battery": True}


def write_config(path: Path, top: dict, packages: dict[str, dict]) -> Path:
    """``top``'s settings, then a `[packages.NAME]` table for each of ``packages``."""
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, table in packages.items():
        lines.append(f"\n[packages.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def folders_under(root: Path) -> dict[str, Path]:
    """The settings that place pgod's spool, state and profile link under ``root``."""
    return {"spool_dir": root / "spool", "state_dir": root / "state", "profile_link": root / "profile"}
