"""`pgoctl`: read and steer the pgod daemon over D-Bus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgod.config import DEFAULT_CONFIG_PATH
from pgod.contract import EXIT_DENIED, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from pgod.ctl.client import AccessDenied, Client, DaemonUnreachable, OperationFailed
from pgod.ctl.render import render_package, render_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgoctl", description="Control the pgod profile-guided optimization daemon.")
    parser.add_argument("--bus", choices=("system", "session"), default="system", help="bus the daemon serves on")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="every watched package, its state and progress")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    show = commands.add_parser("show", help="one package in detail: profile, builds, history, last error")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print as JSON")
    for verb, text in (
        ("rebuild", "start an optimized build now, whatever the threshold"),
        ("activate", "put the optimized build in use"),
        ("deactivate", "go back to the profiling build"),
        ("reset", "forget the package's merged profile and counters"),
        ("logs", "print the log of the latest optimized build"),
    ):
        commands.add_parser(verb, help=text).add_argument("name")
    commands.add_parser("rollback", help="return the optimized-packages profile to its previous generation")
    watch = commands.add_parser("watch", help="a live view of status, updated from daemon signals")
    watch.add_argument("--json", action="store_true", help="print each new status as one JSON line")
    commands.add_parser("notify-agent", help="per-user agent: desktop notifications for daemon events")
    report = commands.add_parser(
        "report",
        help="write a report folder (ANALYSIS.md, report.json, charts) for one package or all",
        description="Write ANALYSIS.md, report.json and SVG/PNG charts from the real profile and pgod's records:"
        " hot functions, coverage, profile growth, change since the optimized build (llvm-profdata overlap),"
        " how well the build matched its profile, builds and the active generation. Reads the state folder"
        " read-only (needs read access to it, normally root); the daemon need not run and no bus is used.",
    )
    report.add_argument("name", nargs="?", help="the package (default: every package)")
    report.add_argument("--output", "-o", type=Path, default=Path("pgod-report"), metavar="DIR",
                        help="folder to write into (made if needed; default: ./pgod-report)")
    report.add_argument("--json", action="store_true", help="print report.json's content instead of a summary (the folder is written all the same)")
    report.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"the daemon's configuration, to find state_dir and each package's llvm-profdata"
                        f" (default: {DEFAULT_CONFIG_PATH})")
    report.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="read this state folder (default: the configuration's state_dir)")
    report.add_argument("--top", type=_positive, default=None, metavar="N",
                        help="hot functions to list and chart (default: 20)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code not in (0, None) else EXIT_OK
    try:
        return _dispatch(args)
    except DaemonUnreachable as err:
        flag = "" if args.bus == "system" else f" --bus {args.bus}"
        print(
            f"pgoctl: the pgod daemon is not reachable on the {args.bus} bus ({err}). "
            f"Start it with `systemctl start pgod` or `pgod --config PATH{flag}`.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except AccessDenied as err:
        print(f"pgoctl: access denied: {err}", file=sys.stderr)
        return EXIT_DENIED
    except OperationFailed as err:
        print(f"pgoctl: {err}", file=sys.stderr)
        return EXIT_USAGE if err.name.endswith(".UnknownPackage") else EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        from pgod.report.command import run_report

        return run_report(args)
    client = Client(args.bus)
    if args.command == "status":
        document = client.status()
        print(json.dumps(document, indent=2) if args.json else render_status(document))
        return EXIT_OK
    if args.command == "show":
        document = client.package(args.name)
        print(json.dumps(document, indent=2) if args.json else render_package(document))
        return EXIT_OK
    if args.command in MUTATIONS:
        method, done = MUTATIONS[args.command]
        name = getattr(args, "name", None)
        client.call(method, *([name] if name is not None else []))
        print(done.format(name=name))
        return EXIT_OK
    if args.command == "logs":
        log = client.call("GetBuildLog", args.name)
        if not log:
            print(f"pgoctl: {args.name} has no optimized build yet", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(log)
        return EXIT_OK
    if args.command == "watch":
        from pgod.ctl.watch import watch

        return watch(client, as_json=args.json)
    if args.command == "notify-agent":
        from pgod.ctl.notify_agent import run_agent

        return run_agent(client)
    return EXIT_FAILED


MUTATIONS = {
    "rebuild": ("Rebuild", "{name}: optimized build started"),
    "activate": ("Activate", "{name}: optimized build activated"),
    "deactivate": ("Deactivate", "{name}: back to the profiling build"),
    "reset": ("Reset", "{name}: profile and counters reset"),
    "rollback": ("Rollback", "optimized-packages profile rolled back to its previous generation"),
}


if __name__ == "__main__":
    sys.exit(main())
