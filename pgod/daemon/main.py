"""`pgod`: wire the daemon's parts together and run them until SIGTERM or SIGINT.

Everything that can fail on bad input (configuration, folders, database, bus name) is done
before any thread starts, so a bad configuration never leaves a half-working daemon behind.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import structlog

from pgod import __version__
from pgod.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from pgod.contract import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pgod.logs import configure_logging

log = structlog.get_logger("pgod")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pgod", description="Profile-guided optimization daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML configuration file")
    parser.add_argument("--bus", choices=("system", "session"), default="system", help="D-Bus bus to serve on")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument(
        "--apply-substitution",
        action="store_true",
        help="point substitute_dir's links at the recorded active builds, as this configuration allows, and exit"
        " (the NixOS activation script runs this at boot and at every switch)",
    )
    parser.add_argument("--version", action="version", version=f"pgod {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(getattr(logging, args.log_level.upper()))
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"pgod: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.check_config:
        from pgod.intake.attribution import scan_packages

        if (refused := check_trust(config, scan_packages(config))) is not None:
            return refused
        print(f"pgod: {args.config}: ok ({len(config.packages)} packages)")
        return EXIT_OK
    if args.apply_substitution:
        return apply_substitution(config)
    return run(config, args.bus)


# The kernel's protections for sticky world-writable folders such as the spool, and the
# lowest value of each that protects it.
SPOOL_PROTECTIONS = {"protected_symlinks": 1, "protected_regular": 1, "protected_fifos": 1}


def warn_about_unprotected_spool() -> None:
    """Say so when the kernel lets one user's planted symlink, FIFO or file in the spool turn
    another user's (or root's) profile write into a write elsewhere."""
    off = []
    for name, lowest in SPOOL_PROTECTIONS.items():
        try:
            value = int(Path(f"/proc/sys/fs/{name}").read_text())
        except (OSError, ValueError):
            continue
        if value < lowest:
            off.append(f"fs.{name}={value}")
    if off:
        log.warning(
            "daemon.spool_unprotected",
            settings=off,
            hint="set fs.protected_symlinks=1, fs.protected_regular=2 and fs.protected_fifos=2 (sysctl; the NixOS module does)",
        )


def check_trust(config, builds) -> int | None:
    """EXIT_USAGE, said on stderr, when the config names a path another user could change.
    `builds` are the packages' profiling builds (attribution.scan_packages), whose manifests
    may name an llvm-profdata to check too."""
    from pgod.daemon.trust import check_config

    try:
        check_config(config, builds)
    except ConfigError as err:
        print(f"pgod: {err}", file=sys.stderr)
        return EXIT_USAGE
    return None


def apply_substitution(config) -> int:
    from pgod.optimize.substitution import apply_recorded

    if config.substitute_dir is None:
        print(f"pgod: {config.path}: substitute_dir is not set, so there is nothing to substitute", file=sys.stderr)
        return EXIT_USAGE
    try:
        changed = apply_recorded(config)
    except OSError as err:
        print(f"pgod: substitute_dir {config.substitute_dir}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"pgod: {config.substitute_dir}: {len(changed)} link(s) changed")
    return EXIT_OK


def run(config, bus_kind: str) -> int:
    # Imported here so `--check-config` and config errors need no GLib or database.
    from gi.repository import GLib
    from pydbus import SessionBus, SystemBus

    from pgod.confine import ConfineError, Identity, prlimit_path, set_no_new_privs
    from pgod.contract import BUS_NAME, OBJECT_PATH
    from pgod.daemon.engine import Engine
    from pgod.daemon.heap import return_large_allocations
    from pgod.daemon.service import DaemonService
    from pgod.intake.attribution import Attributor, scan_packages
    from pgod.intake.spool import SpoolWatcher
    from pgod.merge.confined import MergeSandbox
    from pgod.state.db import SchemaError, open_database
    from pgod.state.layout import StagingError, prepare_layout

    return_large_allocations()  # before any thread or large buffer: see heap.py

    # Before anything is logged or created: a refused path is one line and nothing started.
    builds = scan_packages(config)
    if (refused := check_trust(config, builds)) is not None:
        return refused
    attributor = Attributor(builds)
    try:
        merge_identity = Identity.for_user(config.merge_user)
    except ConfineError as err:
        print(f"pgod: {config.path}: merge_user: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        prlimit_path()
        set_no_new_privs()  # as the unit's NoNewPrivileges=yes: the merge user's runs inherit it
    except ConfineError as err:
        print(f"pgod: {err}", file=sys.stderr)
        return EXIT_FAILED
    try:
        layout = prepare_layout(config, merge_identity.gid if merge_identity else None)
        sessions = open_database(config.db_path)
    except (StagingError, SchemaError, OSError) as err:
        print(f"pgod: {err}", file=sys.stderr)
        return EXIT_FAILED
    sandbox = MergeSandbox(merge_identity, layout.merge_work)
    engine = Engine(config, layout, sessions, attributor, sandbox)
    loop = GLib.MainLoop()
    exit_code = EXIT_OK

    def spool_lost(reason: str) -> None:  # watcher thread
        nonlocal exit_code
        log.error("daemon.spool_lost", reason=reason)
        exit_code = EXIT_FAILED
        GLib.idle_add(loop.quit)

    try:
        watcher = SpoolWatcher(layout.spool, engine.submit, engine.rescan, spool_lost)
    except OSError as err:
        print(f"pgod: {err}", file=sys.stderr)
        return EXIT_FAILED
    from pgod.daemon.dbus_dispatch import install as bound_dbus_dispatch

    bound_dbus_dispatch()
    try:
        bus = SystemBus() if bus_kind == "system" else SessionBus()
        service = DaemonService(config, sessions, engine, __version__, bus, intake=engine.intake, layout=layout,
                                optimizer=engine.optimizer, activation=engine.activation)
        publication = bus.publish(BUS_NAME, (OBJECT_PATH, service))
    except GLib.Error as err:
        print(f"pgod: cannot serve {BUS_NAME} on the {bus_kind} bus: {err.message}", file=sys.stderr)
        return EXIT_FAILED

    def shutdown(signame: str) -> bool:
        log.info("daemon.stopping", signal=signame)
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, shutdown, "SIGTERM")
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, shutdown, "SIGINT")

    watcher.start()  # before the engine's start-up scan, so nothing falls between the two
    engine.start()
    log.info(
        "daemon.started",
        version=__version__,
        bus=bus_kind,
        spool=str(layout.spool),
        state=str(config.state_dir),
        packages=list(config.packages),
    )
    warn_about_unprotected_spool()
    try:
        loop.run()
    finally:
        watcher.stop()
        engine.stop()
        engine.join(timeout=60)
        publication.unpublish()
    log.info("daemon.stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
