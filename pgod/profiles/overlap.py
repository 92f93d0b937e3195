"""How much of one profile level is another's: the figure the daemon's maturity and the report's
"change since the build" rest on, computed from per-function counts, because llvm-profdata's own
`overlap` line is wrong for profiles with a context-sensitive level.

Pure functions of parsed counts (pgod.profiles.tool.parse_show's FunctionCounts).
"""

from __future__ import annotations


def level_overlap(base: list, test: list) -> dict:
    """How much of ``test``'s profile is ``base``'s, for one level of counts (the IR or front-end
    level, or the context-sensitive one: never mixed), from their per-function counts
    (`show --all-functions --counts`, `--showcs` for the CS level).

    LLVM's definition (`llvm-profdata overlap`, OverlapStats): each profile's counters are
    normalised by that level's count sum, and every counter of a function present in both (same
    name and hash: changed code is another function) adds the smaller of its two shares. So 100 %
    is the same distribution, 0 % nothing in common, and never above 100 %: llvm-profdata-14
    prints 134 % (and 279 % with `--cs`) for a two-level profile against itself, summing one
    level's shares against the other level's sum; pgod computes the figure itself.
    """
    base_sum = sum(f.total for f in base)
    test_sum = sum(f.total for f in test)
    by_key = {(f.name, f.hash): f for f in base}
    shared = 0.0
    common = 0
    for function in test:
        other = by_key.get((function.name, function.hash))
        if other is None or len(other.counters) != len(function.counters):
            continue
        common += 1
        if base_sum and test_sum:
            shared += sum(min(b / base_sum, t / test_sum) for b, t in zip(other.counters, function.counters))
    if not base_sum and not test_sum:
        overlap = 100.0 if common or (not base and not test) else 0.0
    else:
        overlap = min(100.0, 100.0 * shared)
    return {"overlap_percent": round(overlap, 3), "changed_percent": round(100.0 - overlap, 3),
            "functions_overlap": common, "base_functions": len(base), "current_functions": len(test),
            "base_count_sum": base_sum, "current_count_sum": test_sum}
