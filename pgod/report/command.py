"""`pgoctl report`: find the state folder, collect the figures, write the folder, say where."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

from pgod.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from pgod.contract import EXIT_DENIED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pgod.humanize import human_bytes
from pgod.report.collect import DEFAULT_TOP, NoState, ReportError, Sources, StateDenied, collect, known_packages


def _usage(message: str) -> int:
    print(f"pgoctl: report: {message}", file=sys.stderr)
    return EXIT_USAGE


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except PermissionError:
        raise StateDenied(f"cannot reach {path}: permission denied") from None
    return True


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        raise StateDenied(f"cannot reach {path}: permission denied") from None


def resolve_sources(args: argparse.Namespace) -> Sources:
    """The configuration (``--config``, else the default one, which may be absent only when
    ``--state-dir`` says where to read) and the state folder. Raises ConfigError."""
    config: Config | None = None
    if args.config is not None:
        config = load_config(args.config)
    elif args.state_dir is None:
        config = load_config(DEFAULT_CONFIG_PATH)
    elif DEFAULT_CONFIG_PATH.exists():
        try:
            config = load_config(DEFAULT_CONFIG_PATH)
        except ConfigError:
            config = None  # the state folder was named: the packages' llvm-profdata is then PATH's
    return Sources(args.state_dir if args.state_dir is not None else config.state_dir, config)


def run_report(args: argparse.Namespace) -> int:
    try:
        sources = resolve_sources(args)
    except ConfigError as err:
        print(f"pgoctl: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.state_dir is not None and not _is_dir(args.state_dir):
            return _usage(f"--state-dir {args.state_dir}: not a folder")
        if _exists(args.output) and not _is_dir(args.output):
            return _usage(f"--output {args.output}: exists and is not a folder")
        if args.name is not None:
            known = known_packages(sources)
            configured = sources.config.packages if sources.config else {}
            if args.name not in known and args.name not in configured:
                return _usage(f"unknown package {args.name!r} (known: {', '.join(known) or 'none'})")
        document = collect(sources, None if args.name is None else [args.name], args.top or DEFAULT_TOP)
        from pgod.report.folder import write_folder

        document = write_folder(document, args.output)
    except NoState as err:
        if args.state_dir is not None:
            return _usage(f"--state-dir {args.state_dir}: {err}")
        print(f"pgoctl: report: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (StateDenied, ReportError) as err:
        print(f"pgoctl: report: {err}", file=sys.stderr)
        return EXIT_DENIED if isinstance(err, StateDenied) else EXIT_FAILED
    except PermissionError as err:
        print(f"pgoctl: report: cannot write {err.filename}: permission denied", file=sys.stderr)
        return EXIT_DENIED
    except OSError as err:
        print(f"pgoctl: report: cannot write {err.filename or args.output}: {err.strerror or err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(summary(document))
    return EXIT_OK


def summary(document: dict) -> str:
    """A few lines per package, then the folder (last, for scripts that take the last line)."""
    lines = []
    for package in document["packages"]:
        hot, coverage, change = package["hot_functions"], package["coverage"], package["change_since_build"] or {}
        line = f"{package['name']}: {package['state']}, profile generation {package['profile']['generation']}"
        if hot and coverage:
            line += (f", {coverage['covered_functions']}/{coverage['instrumented_functions']} functions ran,"
                     f" {hot['functions_for_share']} hold {100 * hot['share_target']:.0f} % of counts")
        if change.get("changed_percent") is not None:
            line += f", {change['changed_percent']:.2f} % changed since build #{change['build']}"
        line += f"; {human_bytes(package['growth']['total_raw_bytes'])} merged"
        lines.append(line)
    if not document["packages"]:
        lines.append("no packages recorded yet")
    lines.append(f"report: {Path(document['folder'])}")
    return "\n".join(lines)
