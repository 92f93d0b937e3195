"""ANALYSIS.md of `pgoctl report`: the report document (collect.py) as text a person reads."""

from __future__ import annotations

import datetime as dt

from pgod.humanize import human_bytes


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _profile(package: dict) -> list[str]:
    profile = package["profile"]
    if not profile["path"]:
        return ["No merged profile yet: run the package's profiling build first.", ""]
    lines = [
        f"- profile: {_code(profile['path'])} (generation {profile['generation']}, "
        f"{human_bytes(profile.get('bytes', 0))}, {profile.get('instrumentation_level') or '?'} instrumentation)",
        f"- read with {_code(package['llvm_profdata'])}",
        f"- maximum function count {profile.get('maximum_function_count')}, maximum internal block count "
        f"{profile.get('maximum_internal_block_count')} (llvm-profdata show)",
        f"- raw data since the last build started: {human_bytes(profile['raw_bytes_since_build'])} in "
        f"{profile['files_since_build']} raw profiles, threshold {human_bytes(profile['threshold_bytes'])}",
        "",
    ]
    return lines


def _hot(package: dict, charts: dict) -> list[str]:
    hot, coverage = package["hot_functions"], package["coverage"]
    if not hot:
        return []
    lines = ["### Hot functions", ""]
    if hot["functions_for_share"]:
        lines.append(f"{hot['functions_for_share']} of {coverage['instrumented_functions']} functions hold "
                     f"{100 * hot['share_target']:.0f} % of all {hot['total_count']:,} counts; the top "
                     f"{len(hot['functions'])} hold {_pct(hot['top_share'])}. A function's count is the sum of all its "
                     "counters (entry and blocks), as `llvm-profdata overlap` sums a profile.")
    else:
        lines.append("The profile holds no counts yet.")
    lines.append("")
    if "hot_functions" in charts:
        lines += [f"![hot functions]({charts['hot_functions']['svg']})", ""]
    rows = [[str(f["rank"]), _code(f["name"]), f"{f['total_count']:,}", _pct(f["share"]), _pct(f["cumulative_share"]),
             f"{f['function_count']:,}", f"{f['max_count']:,}"] for f in hot["functions"]]
    lines += _table(["#", "function", "count", "share", "cumulative", "entry count", "max count"], rows)
    lines += ["", "### Coverage", "",
              f"{coverage['covered_functions']} of {coverage['instrumented_functions']} instrumented functions ran "
              f"({_pct(coverage['share'])})" + (
                  f"; the other {coverage['instrumented_functions'] - coverage['covered_functions']} have only zero "
                  "counts, and the optimized build treats them as cold." if coverage["covered_functions"] < coverage[
                      "instrumented_functions"] else "."),
              ""]
    return lines


def _growth(package: dict, charts: dict) -> list[str]:
    growth = package["growth"]
    lines = ["### Profile growth", ""]
    points = growth["points"]
    lines.append(f"{human_bytes(growth['total_raw_bytes'])} of raw profile data in {growth['total_files']} raw "
                 f"profiles merged over the package's life, in {len(points)} generation(s) recorded"
                 + (f" (and {human_bytes(growth['earlier']['bytes'])} in {growth['earlier']['files']} before the "
                    "kept history)" if growth["earlier"]["files"] else "") + ".")
    lines.append("")
    if "growth" in charts:
        lines += [f"![profile growth]({charts['growth']['svg']})", ""]
    if points:
        shown = points[-10:]
        rows = [[str(p["generation"]), _when(p["at"]), str(p["files"]), human_bytes(p["bytes"]), str(p["total_files"]),
                 human_bytes(p["total_bytes"])] for p in reversed(shown)]
        lines += _table(["generation", "merged at", "files", "bytes", "files in all", "bytes in all"], rows)
        if len(points) > len(shown):
            lines.append(f"\n(the newest {len(shown)} of {len(points)}; every one is in report.json)")
        lines.append("")
    return lines


def _maturity(package: dict, charts: dict) -> list[str]:
    figures = package.get("maturity") or {"points": []}
    points = figures["points"]
    lines = ["### Maturity: has the profile settled?", ""]
    if not points:
        return lines + ["No checkpoint yet: the daemon measures the profile every quarter threshold of new data.", ""]
    last = points[-1]
    words = [f"{_num(last['step_changed'])} changed over the last step",
             f"{_num(last['since_build_changed'])} since the build in use"]
    lines += [f"At the last checkpoint (generation {last['generation']}, {human_bytes(last['total_raw_bytes'])} merged): "
              + ", ".join(words) + f"; {last['functions_run']} of {last['functions']} functions ran. A first build waits "
              f"for two steps in a row at most {figures['settled_percent']:g} %, a rebuild for "
              f"{figures['rebuild_change_percent']:g} % since the build in use"
              + (f"; now: {figures['waiting']}." if figures.get("waiting") else "."), ""]
    if "maturity" in charts:
        lines += [f"![maturity]({charts['maturity']['svg']})", ""]
    rows = [[str(p["generation"]), _when(p["at"]), human_bytes(p["total_raw_bytes"]), _num(p["step_changed"]),
             _num(p["since_build_changed"]), f"{p['count_sum']:,}"] for p in reversed(points[-10:])]
    lines += _table(["generation", "measured at", "merged in all", "step change", "since the build", "counts"], rows)
    return lines + [""]


def _num(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.2f} %"


def _change(package: dict) -> list[str]:
    change = package["change_since_build"] or {}
    lines = ["### Change since the optimized build", ""]
    if "unavailable" in change:
        lines += [f"Not measured: {change['unavailable']}.", ""]
        return lines
    lines += [
        f"Build #{change['build']} was made from generation {change['base_generation']} "
        f"({_code(change['base_profile'])}); the profile is now at generation {change['current_generation']}.",
        "",
        f"- overlap (llvm-profdata's measure, computed per level from the per-function counts): "
        f"**{change['overlap_percent']:.3f} %**, so **{change['changed_percent']:.3f} %** of the profile changed since "
        "that build (0 %: nothing to gain from a rebuild)",
        f"- count sums: {change['base_count_sum']:,} then, {change['current_count_sum']:,} now; "
        f"{change['functions_overlap']} functions in both",
    ]
    cs = change.get("context_sensitive")
    if cs:
        lines.append(f"- context-sensitive level: **{cs['overlap_percent']:.3f} %** overlap "
                     f"({cs['changed_percent']:.3f} % changed), {cs['functions_overlap']} functions in both")
    lines.append("")
    return lines


def _match(package: dict) -> list[str]:
    match = package["profile_match"]
    lines = ["### How well the build matched its profile", ""]
    if match is None:
        return lines + ["No optimized build yet.", ""]
    if "unavailable" in match:
        return lines + [f"No record: {_code(match['file'])}: {match['unavailable']}.", ""]
    lines += [f"From {_code(match['file'])} (clang's profile warnings, counted by the optimize adapter):", ""]
    rows = [
        ["functions in the profile", str(match["profile_functions"])],
        ["functions whose profile is out of date (mismatched)", str(match["mismatched_functions"])],
        ["functions with no profile data (missing)", str(match["missing_functions"])],
        ["files without profile data (unprofiled)", str(match["unprofiled_files"])],
        ["translation units that warned", str(match["translation_units_warned"])],
    ]
    lines += _table(["figure", "count"], rows) + [""]
    return lines


def _builds(package: dict) -> list[str]:
    lines = ["### Builds", ""]
    builds = package["builds"]
    if not builds:
        return lines + ["No optimized build yet.", ""]
    rows = []
    for build in builds[:20]:
        seconds = "-" if build["seconds"] is None else f"{build['seconds']:.1f} s"
        result = build["status"] + (f": {build['error'][:80]}" if build["error"] else "")
        rows.append([f"#{build['id']}", _when(build["started_at"]), seconds, result, str(build["profile_generation"]),
                     build["speedup_text"], _code(build["out_path"]) if build["out_path"] else "-"])
    lines += _table(["build", "started", "took", "result", "profile gen", "speedup", "output"], rows)
    lines.append("")
    return lines


def _activation(package: dict) -> list[str]:
    activation = package["activation"]
    lines = ["### In use", ""]
    if package["active"]:
        lines.append(f"The optimized build {_code(package['optimized'])} is in use, in generation "
                     f"{activation['current']} of {_code(str(activation['profile_link']))}.")
    elif package["optimized"]:
        lines.append(f"The optimized build {_code(package['optimized'])} is built but not in use (state "
                     f"{package['state']}): `pgoctl activate {package['name']}` puts it in use.")
    else:
        lines.append(f"The profiling build is in use (state {package['state']}).")
    if activation["current"] is not None and activation["previous"] is not None:
        lines.append(f"To go back: {_code(activation['rollback'])} returns {_code(str(activation['profile_link']))} to "
                     f"generation {activation['previous']}; {_code(activation['deactivate'])} puts the profiling build "
                     "back for this package alone.")
    elif activation["current"] is not None:
        lines.append(f"Generation {activation['current']} is the profile's first, so there is nothing to roll back to: "
                     f"{_code(activation['deactivate'])} puts the profiling build back.")
    lines.append("")
    return lines


def render(document: dict, charts: dict[str, dict]) -> str:
    """The whole ANALYSIS.md; ``charts``: package name → the chart files drawn for it."""
    lines = ["# pgod report", "", f"Made {_when(document['generated_at'])} by pgod {document['pgod_version']} from "
             f"{_code(document['state_dir'])}" + (f" ({_code(document['config'])})" if document["config"] else "")
             + ". Every figure is in `report.json` too.", ""]
    if not document["packages"]:
        lines.append("No packages recorded yet.")
    for package in document["packages"]:
        mine = charts.get(package["name"], {})
        lines += [f"## {package['name']}: {package['state']}", ""]
        lines += _profile(package)
        lines += _hot(package, mine)
        lines += _growth(package, mine)
        lines += _maturity(package, mine)
        lines += _change(package)
        lines += _match(package)
        lines += _builds(package)
        lines += _activation(package)
    generations = document["generations"]
    if generations["generations"]:
        lines += ["## Generations of the optimized-packages profile", ""]
        rows = [[str(g["generation"]) + (" (current)" if g["generation"] == generations["current"] else ""),
                 _when(g["at"]), _code(g["store_path"])] for g in generations["generations"]]
        lines += _table(["generation", "made", "store path"], rows) + [""]
    return "\n".join(lines).rstrip() + "\n"
