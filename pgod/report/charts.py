"""The charts of `pgoctl report`, drawn with matplotlib (Agg, no display) as SVG and PNG.

Each function takes one package's part of the report document (collect.py) and writes its
chart beside ANALYSIS.md; it returns the file names it wrote.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402  (after the backend is chosen)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from pgod.humanize import human_bytes  # noqa: E402

FORMATS = ("svg", "png")
DPI = 110
NAME_CHARS = 48  # function names longer than this are shortened on the bar chart


def _save(figure, folder: Path, stem: str) -> dict[str, str]:
    written = {}
    figure.tight_layout()
    for kind in FORMATS:
        path = folder / f"{stem}.{kind}"
        figure.savefig(path, format=kind, dpi=DPI, metadata={"Date": None} if kind == "svg" else None)
        written[kind] = path.name
    plt.close(figure)
    return written


def _byte_unit(largest: float) -> tuple[float, str]:
    """The binary unit the axis counts in, so its ticks fall on round numbers of it."""
    for size, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if largest >= size:
            return float(size), unit
    return 1.0, "bytes"


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def growth_chart(package: dict, folder: Path) -> dict[str, str] | None:
    """Raw profile data merged over time (bytes, left; files, right), a marker per profile
    generation, a dashed line where each optimized build started."""
    growth = package["growth"]
    points = growth["points"]
    if not points:
        return None
    when = [dt.datetime.fromtimestamp(p["at"], dt.timezone.utc) for p in points]
    size, unit = _byte_unit(points[-1]["total_bytes"])
    heights = [p["total_bytes"] / size for p in points]
    # The lines start from what was merged before the first kept generation (0 for a young package).
    start = [when[0], *when]
    figure, axis = plt.subplots(figsize=(9, 4.8))
    axis.step(start, [growth["earlier"]["bytes"] / size, *heights], where="post", color="tab:blue",
              label="raw profile data merged")
    axis.plot(when, heights, "o", color="tab:blue", markersize=4, label="a profile generation (merge)")
    if points[-1].get("total_live_bytes"):
        # Of it, what programs that keep running reported while they ran (their growth).
        axis.step(start, [0, *(p["total_live_bytes"] / size for p in points)], where="post", color="tab:purple",
                  linestyle="--", label="of it, from running programs (live)")
    axis.set_ylabel(f"raw profile data merged ({unit})")
    axis.set_ylim(0, max(heights) * 1.12)
    files_axis = axis.twinx()
    files_axis.step(start, [growth["earlier"]["files"], *(p["total_files"] for p in points)], where="post",
                    color="tab:orange", linestyle=":", label="raw profiles merged (files)")
    files_axis.set_ylabel("raw profiles merged (files)")
    files_axis.set_ylim(0, max(1, points[-1]["total_files"]) * 1.12)
    files_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    label_every = max(1, len(points) // 8)
    for index, (moment, point) in enumerate(zip(when, points)):
        if index % label_every == 0 or index == len(points) - 1:
            axis.annotate(f"gen {point['generation']}", (moment, point["total_bytes"] / size), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=7, color="tab:blue")
    first, last = when[0], when[-1]
    for build in growth["builds"]:
        moment = dt.datetime.fromtimestamp(build["started_at"], dt.timezone.utc)
        if first <= moment <= last + dt.timedelta(seconds=1):
            axis.axvline(moment, color="tab:green" if build["status"] == "succeeded" else "tab:red", linestyle="--",
                         linewidth=1)
            axis.annotate(f"build #{build['id']} (gen {build['profile_generation']})", (moment, 0),
                          xycoords=("data", "axes fraction"), xytext=(3, 4), textcoords="offset points", fontsize=7,
                          rotation=90, va="bottom", color="tab:green" if build["status"] == "succeeded" else "tab:red")
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axis.set_xlabel("time (UTC)")
    if first == last:
        axis.set_xlim(first - dt.timedelta(seconds=30), last + dt.timedelta(seconds=30))
    axis.set_title(f"{package['name']}: profile growth ({human_bytes(growth['total_raw_bytes'])} in "
                   f"{growth['total_files']} raw profiles, generation {package['profile']['generation']})")
    lines = axis.get_legend_handles_labels()
    more = files_axis.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    axis.grid(True, alpha=0.3)
    return _save(figure, folder, f"{package['name']}-growth")


def hot_functions_chart(package: dict, folder: Path) -> dict[str, str] | None:
    """The top functions by count (bars, share of all counts) beside the cumulative share of
    all functions, ranked, with the HOT_SHARE line."""
    hot = package["hot_functions"]
    if not hot or not hot["functions"] or not hot["total_count"]:
        return None
    listed = hot["functions"]
    figure, (bars, curve) = plt.subplots(1, 2, figsize=(12, max(4.5, 0.28 * len(listed) + 1.5)),
                                         gridspec_kw={"width_ratios": [3, 2]})
    names = [_short(f["name"]) for f in listed][::-1]
    shares = [100 * f["share"] for f in listed][::-1]
    drawn = bars.barh(names, shares, color="tab:red")
    bars.bar_label(drawn, labels=[f"{s:.1f} %" for s in shares], fontsize=7, padding=2)
    bars.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    bars.set_xlim(0, max(shares) * 1.18)
    bars.set_xlabel("share of all counts in the profile (%)")
    bars.tick_params(axis="y", labelsize=7)
    bars.set_title(f"top {len(listed)} functions by count: {100 * hot['top_share']:.1f} % of all")
    ranks = list(range(1, len(hot["cumulative_curve"]) + 1))
    curve.plot(ranks, [100 * v for v in hot["cumulative_curve"]], color="tab:blue")
    target = 100 * hot["share_target"]
    curve.axhline(target, color="grey", linestyle="--", linewidth=1)
    if hot["functions_for_share"]:
        curve.axvline(hot["functions_for_share"], color="grey", linestyle="--", linewidth=1)
        curve.annotate(f"{hot['functions_for_share']} functions hold {target:.0f} %",
                       (hot["functions_for_share"], target), xytext=(8, -18), textcoords="offset points", fontsize=8)
    curve.set_xlim(0, len(ranks) + 0.5)
    curve.set_ylim(0, 102)
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    curve.set_xlabel("functions, hottest first (count)")
    curve.set_ylabel("cumulative share of all counts (%)")
    coverage = package["coverage"]
    curve.set_title(f"{coverage['covered_functions']} of {coverage['instrumented_functions']} functions ran")
    curve.grid(True, alpha=0.3)
    figure.suptitle(f"{package['name']}: hot functions (profile generation {package['profile']['generation']})")
    return _save(figure, folder, f"{package['name']}-hot-functions")


def maturity_chart(package: dict, folder: Path) -> dict[str, str] | None:
    """How much the profile changed at each checkpoint, over the raw data merged: the step
    change (settling), the change since the build in use (worth a rebuild?), and the settings
    the daemon decides at."""
    figures = package.get("maturity") or {}
    points = [p for p in figures.get("points", []) if p["step_changed"] is not None or p["since_build_changed"] is not None]
    if not points:
        return None
    size, unit = _byte_unit(points[-1]["total_raw_bytes"])
    figure, axis = plt.subplots(figsize=(9, 4.8))
    for key, label, color in (("step_changed", "changed over the last step (settling)", "tab:blue"),
                              ("since_build_changed", "changed since the build in use", "tab:orange")):
        shown = [(p["total_raw_bytes"] / size, p[key]) for p in points if p[key] is not None]
        if shown:
            axis.plot(*zip(*shown), "o-", color=color, markersize=3, linewidth=1, label=label)
    axis.axhline(figures["settled_percent"], color="tab:blue", linestyle=":", linewidth=1,
                 label=f"settled_percent ({figures['settled_percent']:g} %): a first build at or below")
    axis.axhline(figures["rebuild_change_percent"], color="tab:orange", linestyle=":", linewidth=1,
                 label=f"rebuild_change_percent ({figures['rebuild_change_percent']:g} %): a rebuild at or above")
    axis.set_yscale("symlog", linthresh=1)  # linear below 1 %, where the decisions are; logarithmic above
    axis.set_ylim(bottom=0)
    axis.set_ylabel("profile changed (%, the most changed level)")
    axis.set_xlabel(f"raw profile data merged over the package's life ({unit})")
    axis.set_title(f"{package['name']}: maturity ({len(points)} checkpoints)")
    axis.legend(loc="upper right", fontsize=8)
    axis.grid(True, alpha=0.3)
    return _save(figure, folder, f"{package['name']}-maturity")


def draw(package: dict, folder: Path) -> dict:
    """Every chart of one package; {chart: {"svg": name, "png": name}} for those drawn."""
    charts = {}
    for key, draw_one in (("growth", growth_chart), ("maturity", maturity_chart), ("hot_functions", hot_functions_chart)):
        written = draw_one(package, folder)
        if written:
            charts[key] = written
    return charts
