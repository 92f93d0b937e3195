"""The ingest benchmark's table: one line per scenario and its targets, then start-up, idle and
backlog figures, from the report `benchmarks.ingest` builds (the same document --json prints).
"""

from __future__ import annotations


def _fmt_size(size: int) -> str:
    return f"{size} B" if size < 10_000 else f"{size / 1000:.1f} kB"


def _target(value: float | None, target: float | None, op: str, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{text} ({op}{target:g}{unit})" if target is not None else text


def render(report: dict) -> str:
    out = []
    setup = report["setup"]
    out.append(
        f"pgod ingest benchmark ({setup['mode']} run, clang-14/llvm-profdata-14, {setup['cpus']} CPUs, "
        f"pgod from {setup['pgod']}, files arrive by {setup['arrival']}, progress polled via {setup['poll']}; {report['runtime_s']:.0f} s total)"
    )
    header = (
        f"{'scenario':<22}{'files':>7}{'size':>10}{'wall s':>8}{'pgod CPU s':>12}{'(own+llvm)':>14}"
        f"{'baseline s':>12}{'ratio (target)':>17}{'files/s (target)':>19}{'merges':>8}{'ms/file':>9}"
    )
    out.append(header)
    out.append("-" * len(header))
    rows = [report.get("small"), report.get("large"), report.get("trickle")]
    for row in filter(None, rows):
        out.append(
            f"{row['scenario']:<22}{row['files']:>7}{_fmt_size(row['file_bytes']):>10}{row['wall_s']:>8.2f}"
            f"{row['pgod_cpu_s']:>12.2f}{'(%.2f+%.2f)' % (row['pgod_own_cpu_s'], row['pgod_profdata_cpu_s']):>14}"
            f"{row['baseline_cpu_s']:>12.3f}{_target(row['ratio'], row['ratio_target'], '≤', '×'):>17}"
            f"{_target(row['files_per_s'], row['files_per_s_target'], '≥'):>19}{row['merges']:>8}{row['cpu_ms_per_file']:>9.3f}"
        )
        by_thread = ", ".join(f"{name} {cpu:.3f}" for name, cpu in sorted(row["threads_cpu_s"].items(), key=lambda kv: -kv[1]))
        out.append(f"    arrival {row['arrival_s']:.2f} s, counted {row['lag_s']:.2f} s after the last; own CPU by thread: {by_thread or '-'}")
        if row["note"]:
            out.append(f"    !! {row['note']}")
    backlog = report.get("backlog")
    if backlog:
        out.append(
            f"{'4 backlog at start':<22}{backlog['files']:>7}{_fmt_size(backlog['file_bytes']):>10}{backlog['seconds']:>8.2f}"
            f"{backlog['pgod_cpu_s']:>12.2f}{'(incl start)':>14}{backlog['baseline_cpu_s']:>12.3f}"
            f"{_target(backlog['ratio'], None, ''):>17}{_target(backlog['files_per_s'], None, ''):>19}{backlog['merges']:>8}"
            f"{1000 * backlog['pgod_cpu_s'] / max(1, backlog['merged']):>9.3f}"
        )
    out.append("")
    start = report.get("startup")
    if start:
        out.append(f"start-up (daemon A, empty spool): {start['cpu_s']:.2f} s CPU, {start['seconds']:.2f} s to first answer, RSS {start['rss_mb']:.1f} MB")
    idle = report.get("idle")
    if idle:
        out.append(
            f"3 idle after the backlog, {idle['seconds']:.0f} s unpolled: CPU {idle['cpu_s']:.3f} s (target <{idle['cpu_target_s']:g}), "
            f"RSS {idle['rss_mb']:.1f} MB (target <{idle['rss_target_mb']:g}), peak so far {idle['peak_rss_mb']:.1f} MB, "
            f"{idle['wakeups_per_s']:.1f} wake-ups/s, {idle['threads']} threads; one status call costs the daemon "
            f"{idle['status_call_cpu_ms']:.1f} ms CPU"
        )
    if backlog:
        out.append(
            f"4 backlog at start: peak RSS {backlog['peak_rss_mb']:.1f} MB sampled / {backlog['vm_hwm_mb']:.1f} MB VmHWM; "
            f"all {backlog['merged']} merged {backlog['seconds']:.1f} s after exec; spool_backlog first/middle/last "
            f"{backlog['backlog_first']}/{backlog['backlog_middle']}/{backlog['backlog_last']} (max {backlog['backlog_max']}, "
            f"non-increasing from its peak: {'yes' if backlog['backlog_non_increasing'] else 'NO'}"
            f"{'; read 0 before the start-up scan counted the files' if backlog['backlog_zero_before_scan'] else ''}); slowest status answer "
            f"{backlog['max_status_latency_s']:.2f} s"
        )
        if backlog["note"]:
            out.append(f"    !! {backlog['note']}")
    return "\n".join(out)
