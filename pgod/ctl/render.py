"""Human-readable rendering of the status documents: tables, progress bars, sizes, ages."""

from __future__ import annotations

import pwd
import time

from pgod.humanize import human_bytes

BAR_WIDTH = 20


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """A fixed-width bar with its percentage, capped at 100 %."""
    fraction = min(1.0, done / total) if total > 0 else 1.0
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%"


def human_age(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0, int((now or time.time()) - timestamp))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def human_duration(seconds: float) -> str:
    """72 → '1m12s'; 3720 → '1h02m'."""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def build_line(build: dict, now: float | None = None) -> str:
    """A running build as Nix reports it: '[2/3] lua-5.4.7-pgo-optimized: buildPhase  1m12s'.

    Parts Nix has not reported (yet, or at all: a build command other than Nix) are left out."""
    parts = []
    if build.get("total"):
        parts.append(f"[{build.get('done') or 0}/{build['total']}]")
    if build.get("derivation"):
        parts.append(f"{build['derivation']}: {build.get('phase') or 'starting'}")
    elif build.get("format") == "nix" and not build.get("total"):
        parts.append("evaluating")
    started = build.get("started_at")
    elapsed = (now or time.time()) - started if started else build.get("elapsed_seconds", 0)
    return "  ".join([" ".join(parts), human_duration(elapsed)] if parts else [human_duration(elapsed)])


def build_tail(build: dict, lines: int, width: int | None = None, indent: str = "    ") -> list[str]:
    """The build's last log lines, indented, each cut to fit ``width`` columns."""
    tail = build.get("log_tail") or ([build["last_line"]] if build.get("last_line") else [])
    shown = [indent + line for line in tail[-lines:]] if lines > 0 else []
    if width:
        shown = [line if len(line) <= width else line[: max(1, width - 1)] + "…" for line in shown]
    return shown


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def speedup_text(package: dict) -> str:
    """The latest final build's measured speedup, as status shows it: "1.18×", "0.97× rejected",
    "-" when no benchmark ran."""
    figures = package.get("benchmark")
    if not figures or figures.get("speedup") is None:
        return "-" if not figures else "failed"
    text = f"{figures['speedup']:.2f}×"
    return text if figures.get("verdict") == "accepted" else f"{text} {figures.get('verdict', '')}".strip()


def _speed_words(speedup: float) -> str:
    return f"{speedup:.2f}× faster" if speedup >= 1 else f"{speedup:.2f}× the baseline's speed"


def state_text(package: dict) -> str:
    """The state, with what a person needs beside it: the stage of a two-stage package, a build
    waiting, a benchmark running."""
    state = package["state"]
    if package.get("build_due") and state == "profiling":
        state += " (build due)"
    running = package.get("benchmark_running")
    if running:
        state += f" (benchmark {running['rounds_done']}/{running['rounds']})"
    if package.get("stages", 1) > 1:
        state += f", stage {2 if package.get('stage') == 'context-sensitive' else 1}/{package['stages']}"
    return state


def benchmark_line(figures: dict) -> str:
    """One build's gate figures: '1.18× faster (baseline 0.420 s, candidate 0.356 s, median of
    5, spread 2 %/3 %), accepted, the gate took 4.5 s'."""
    if figures.get("speedup") is None:
        return f"failed: {figures.get('error') or 'no figures'}"
    spread = "/".join(f"{100 * (figures.get(f'{side}_spread') or 0):.0f} %" for side in ("baseline", "candidate"))
    return (
        f"{_speed_words(figures['speedup'])} (baseline {figures['baseline_median_seconds']:.3f} s, candidate "
        f"{figures['candidate_median_seconds']:.3f} s, median of {figures['rounds']}, spread {spread}), "
        f"{figures['verdict']}, the gate took {figures['seconds']:.1f} s"
    )


def render_status(document: dict, now: float | None = None, log_lines: int = 3, width: int | None = None) -> str:
    """The status table; below it, each running build's progress and last ``log_lines`` lines."""
    daemon = document["daemon"]
    rows = []
    for package in document["packages"]:
        rows.append(
            [
                package["name"],
                state_text(package),
                progress_bar(package["raw_bytes"], package["threshold_bytes"]),
                f"{human_bytes(package['raw_bytes'])} / {human_bytes(package['threshold_bytes'])}",
                str(package["files"]),
                str(package["quarantined"]),
                speedup_text(package),
                human_age(package.get("last_activity")),
            ]
        )
    lines = [f"pgod {daemon['version']}{', starting up' if daemon.get('starting') else ''}, spool backlog: {daemon['spool_backlog']}", ""]
    disk = daemon.get("disk") or {"state": "ok"}
    if disk["state"] != "ok":  # intake waits: say for what, above the table that stands still
        lines[-1:] = [f"intake paused, disk {disk['state']}: {disk.get('detail', '')}", ""]
    if rows:
        lines.append(_table(["PACKAGE", "STATE", "PROGRESS", "RAW DATA", "FILES", "REJECTED", "SPEEDUP", "LAST ACTIVITY"], rows))
    else:
        lines.append("no packages configured")
    for package in document["packages"]:
        if package.get("build"):
            lines.append("")
            lines.append(f"{package['name']}  building  {build_line(package['build'], now)}")
            lines += build_tail(package["build"], log_lines, width)
    for package in document["packages"]:
        if package.get("last_error"):
            lines.append(f"{package['name']}: last error: {package['last_error']}")
    if (live := live_line(document)) is not None:
        lines += ["", live]
    if schedule := schedule_lines(document):
        lines += ["", *schedule]
    unattributed, quarantine = document["unattributed"], document["quarantine"]
    lines.append("")
    lines.append(
        f"unattributed: {unattributed['files']} files, {human_bytes(unattributed['bytes'])}; "
        f"quarantine: {quarantine['files']} files, {human_bytes(quarantine['bytes'])}"
    )
    kept_u, kept_q = unattributed.get("kept"), quarantine.get("kept")
    if kept_u is not None and kept_q is not None:
        lines.append(f"kept to look at: {kept_u['files']} unattributed, {kept_q['files']} rejected "
                     f"({human_bytes(kept_u['bytes'] + kept_q['bytes'])})")
    return "\n".join(lines)


def maturity_text(package: dict) -> str:
    """How settled the profile is at its last checkpoint: "0.42 % changed over the last step,
    6.10 % since the build in use, 6,107,936,299 counts"."""
    figures = package.get("maturity") or {}
    if not figures.get("checkpoint_generation"):
        return "not measured yet"
    parts = []
    for key, words in (("step_changed_percent", "over the last step"),
                       ("changed_since_build_percent", "since the build in use")):
        if figures.get(key) is not None:
            parts.append(f"{figures[key]:.2f} % changed {words}")
    parts.append(f"{figures.get('count_sum', 0):,} counts")
    return ", ".join(parts) + f" (generation {figures['checkpoint_generation']})"


def schedule_lines(document: dict) -> list[str]:
    """Why builds wait, and the order of the due ones: "lua: build waits: busy, 73 % CPU"."""
    lines = [f"{p['name']}: build waits: {p['waiting']}" for p in document["packages"] if p.get("waiting")]
    queue = document["daemon"].get("build_queue") or []
    if len(queue) > 1:
        lines.append(f"build queue (most time spent first): {', '.join(queue)}")
    return lines


def live_line(document: dict, now: float | None = None) -> str | None:
    """Programs that keep running and report while they run: how many, for which packages, the
    last poll. None when nothing ever reported live (the line would only be noise)."""
    live = document["daemon"].get("live") or {}
    reporting = [(p["name"], p["live"]) for p in document["packages"] if p.get("live")]
    if not live.get("followed") and not any(figures["bytes"] for _, figures in reporting):
        return None
    running = ", ".join(f"{name} {figures['processes']}" for name, figures in reporting if figures["processes"])
    counted = sum(figures["bytes"] for _, figures in reporting)
    text = (f"live: {live.get('followed', 0)} running program{'s' if live.get('followed', 0) != 1 else ''} reporting"
            f"{f' ({running})' if running else ''}, {human_bytes(counted)} counted live; read every "
            f"{human_duration(live.get('interval_s', 60))}, last {human_age(live.get('last_poll'), now)}")
    if live.get("over_limit"):
        text += f"; {live['over_limit']} not followed (a user at live_max_runs_per_uid)"
    return text


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _live_figures(live: dict | None) -> str:
    if not live or (not live["processes"] and not live["snapshots"]):
        return "none (no running program of it has reported)"
    text = (f"{live['processes']} running program{'s' if live['processes'] != 1 else ''} reporting; "
            f"{human_bytes(live['bytes'])} counted live in {live['snapshots']} snapshots")
    if live["processes"]:
        text += f", {live.get('counts', 0):,} counts from those running, last read {human_age(live['last_read'])}"
    return text


def render_package(document: dict) -> str:
    lines = [
        f"{document['name']}: {state_text(document)}",
        f"  progress:   {progress_bar(document['raw_bytes'], document['threshold_bytes'])} "
        f"({human_bytes(document['raw_bytes'])} of {human_bytes(document['threshold_bytes'])}, {document['files']} files)",
        f"  lifetime:   {human_bytes(document['total_raw_bytes'])} in {document['total_files']} files",
        f"  profile:    {document['profile'] or '-'} (generation {document['profile_generation']})",
        f"  optimized:  {document['optimized'] or '-'}{' (active)' if document['active'] else ''}",
        f"  rejected:   {document['quarantined']}",
        f"  instrumentation: {document.get('instrumentation', 'fe')}"
        + (f", stage {document.get('stage')} of {document['stages']}" if document.get("stages", 1) > 1 else ""),
        f"  in use:     {document.get('in_use') or 'the profiling build'}",
        f"  live:       {_live_figures(document.get('live'))}",
        f"  maturity:   {maturity_text(document)}",
        *([f"  waiting:    {document['waiting']}"] if document.get("waiting") else []),
        f"  benchmark:  {benchmark_line(document['benchmark']) if document.get('benchmark') else 'none (builds are unmeasured)'}",
        f"  last error: {document['last_error'] or '-'}",
        "  profile build: " + ", ".join(document.get("profile_build", [])),
    ]
    build = document.get("build")
    if build:
        lines.append(f"  building:   {build_line(build)}  (log: {build.get('log', '-')})")
        lines += build_tail(build, 10, indent="    | ")
    builds = document.get("builds", [])
    if builds:
        lines.append("  recent builds:")
        for item in builds[:5]:
            measured = f", {item['speedup']:.2f}×" if item.get("speedup") is not None else ""
            lines.append(f"    #{item['id']} {item.get('stage', 'optimize')}: {item['status']}{measured},"
                         f" {human_age(item['finished_at'] or item['started_at'])}")
    merges = document.get("merges", [])
    if merges:
        lines.append("  recent merges:")
        for merge in merges[:10]:
            lines.append(
                f"    gen {merge['generation']}: {merge['files']} files, {human_bytes(merge['bytes'])}, "
                f"{merge['seconds']:.2f}s, {human_age(merge['at'])}"
            )
    shares = document.get("contributions", [])
    if shares:
        total = sum(share["bytes"] for share in shares) or 1
        lines.append("  by user:")
        for share in shares[:10]:
            user = "unknown" if share["uid"] < 0 else _user_name(share["uid"])
            lines.append(
                f"    {user}: {share['files']} profiles, {human_bytes(share['bytes'])} ({100 * share['bytes'] / total:.0f} %)"
            )
    rejected = document.get("quarantine", [])
    if rejected:
        lines.append("  recent rejections:")
        for item in rejected[:10]:
            owner = "" if item.get("owner_uid") is None else f" ({_user_name(item['owner_uid'])})"
            lines.append(f"    {item['file']}{owner}: {item['reason']}: {item['detail']}")
    return "\n".join(lines)
