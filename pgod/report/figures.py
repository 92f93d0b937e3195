"""The report's figures, computed from what llvm-profdata printed and the rows pgod kept: the
hot functions and how few hold most counts, coverage, the profile's growth over generations,
and each build's record with its measured speedup.

Pure functions of their arguments (no files, no processes), so collect.py reads the state and
runs the tools, and this says what the numbers mean.
"""

from __future__ import annotations

import json
import re

from pgod.profiles.tool import FunctionCounts

HOT_SHARE = 0.90  # "how many functions hold 90 % of all counts"
NEVER_RUN_LISTED = 50  # names of functions that never ran, the first by name
MERGE_HISTORY_KEPT = 200  # history.KEEP_MERGE_ROWS: older merges live on only in the totals


def hot_functions(functions: list[FunctionCounts], top: int) -> dict:
    """The top ``top`` functions by their total count (every counter of the function summed),
    each one's share of all counts, and how many functions together hold HOT_SHARE of them."""
    ranked = sorted(functions, key=lambda f: (-f.total, f.name))
    total = sum(f.total for f in ranked)
    cumulative, needed, curve = 0, 0, []
    for index, function in enumerate(ranked):
        cumulative += function.total
        share = cumulative / total if total else 0.0
        curve.append(share)
        if not needed and total and share >= HOT_SHARE:
            needed = index + 1
    listed = []
    running = 0
    for rank, function in enumerate(ranked[:top], start=1):
        running += function.total
        listed.append({
            "rank": rank,
            "name": function.name,
            "total_count": function.total,
            "share": function.total / total if total else 0.0,
            "cumulative_share": running / total if total else 0.0,
            "function_count": function.entry,
            "max_count": function.max_count,
            "counters": len(function.counters),
        })
    return {
        "ranked_by": "total_count",
        "top": top,
        "total_count": total,
        "functions": listed,
        "top_share": running / total if total else 0.0,
        "share_target": HOT_SHARE,
        "functions_for_share": needed,
        # Cumulative share after the 1st, 2nd, … function (for the chart), every function.
        "cumulative_curve": [round(value, 6) for value in curve],
    }


def coverage(functions: list[FunctionCounts], summary: dict[str, str]) -> dict:
    covered = sum(1 for f in functions if any(f.counters))
    listed = len(functions)
    return {
        "covered_functions": covered,
        "instrumented_functions": listed,
        "share": covered / listed if listed else 0.0,
        "never_run": sorted(f.name for f in functions if not any(f.counters))[:NEVER_RUN_LISTED],
    }


def summary_numbers(summary: dict[str, str]) -> dict:
    def number(key: str) -> int | None:
        value = summary.get(key)
        match = re.match(r"\d+", value or "")
        return int(match.group()) if match else None

    return {
        # "IR  entry_first = 0" for IR profiles: the level is the first word.
        "instrumentation_level": (summary.get("Instrumentation level") or "").split(" ")[0] or None,
        "total_functions": number("Total functions"),
        "functions_shown": number("Functions shown"),
        "maximum_function_count": number("Maximum function count"),
        "maximum_internal_block_count": number("Maximum internal block count"),
    }


def growth(package_row: dict, merges: list[dict], builds: list[dict]) -> dict:
    """Raw bytes and files merged over time, one point per profile generation (the newest
    MERGE_HISTORY_KEPT merges: what came before them is the starting offset)."""
    kept_bytes = sum(m["bytes"] for m in merges)
    kept_files = sum(m["files"] for m in merges)
    offset_bytes = max(0, package_row["total_raw_bytes"] - kept_bytes)
    offset_files = max(0, package_row["total_files"] - kept_files)
    points, size, files, live = [], offset_bytes, offset_files, 0
    for merge in merges:  # oldest first
        size += merge["bytes"]
        files += merge["files"]
        live += merge.get("live_bytes") or 0  # growth of running programs (none before schema 5)
        points.append({"generation": merge["generation"], "at": merge["at"], "files": merge["files"], "bytes": merge["bytes"],
                       "total_files": files, "total_bytes": size, "seconds": merge["seconds"],
                       "live_bytes": merge.get("live_bytes") or 0, "total_live_bytes": live})
    return {
        "points": points,
        "total_raw_bytes": package_row["total_raw_bytes"],
        "total_files": package_row["total_files"],
        "earlier": {"bytes": offset_bytes, "files": offset_files},  # merged before the kept history
        "builds": [{"id": b["id"], "started_at": b["started_at"], "profile_generation": b["profile_generation"],
                    "status": b["status"]} for b in builds],
    }


def speedup_of(build: dict) -> float | None:
    """The measured speedup a build record carries, if the benchmark gate wrote one: a
    ``speedup`` column, or a ``speedup`` key of a JSON ``benchmark`` column."""
    value = build.get("speedup")
    if value is None and isinstance(build.get("benchmark"), str):
        try:
            value = json.loads(build["benchmark"]).get("speedup")
        except (ValueError, AttributeError):
            value = None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def build_records(builds: list[dict]) -> list[dict]:
    records = []
    for build in builds:  # newest first
        finished = build.get("finished_at")
        speedup = speedup_of(build)
        records.append({
            "id": build["id"],
            "status": build["status"],
            "started_at": build["started_at"],
            "finished_at": finished,
            "seconds": round(finished - build["started_at"], 1) if finished else None,
            "profile": build["profile_store_path"],
            "profile_generation": build["profile_generation"],
            "out_path": build.get("out_path"),
            "error": build.get("error"),
            "speedup": speedup,
            "speedup_text": f"{speedup:.2f}x" if speedup is not None else "unmeasured",
        })
    return records
