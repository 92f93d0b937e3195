"""The booted Debian guest (tests/guest) by hand.

  scripts/guest image                 build the guest image, or find it cached; print its folder
  scripts/guest run [options] 'CMD'   boot a throwaway guest, run CMD (bash, as root), print its
                                      output, power off; exit with CMD's code
  scripts/guest shell [options]       boot a throwaway guest and run each line read from stdin
                                      (no tty: one command at a time, its output after it ends)

  options: --user NAME (run as NAME, in a login shell), --timeout S (per command, default 600),
           --share DIR (a host folder seen as /mnt/host; default an empty one), --keep (keep
           the workdir: overlay, console.log, qemu.log)

Needs root, QEMU and, the first time, mmdebstrap and the package registries (image.py).
Standard library only: runs with any python3, as `python3 -m tests.guest` from the repository
root (scripts/guest runs it so from anywhere).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .image import ensure_image
from .machine import Machine, guest_unavailable


def boot(args) -> tuple[Machine, Path]:
    reason = guest_unavailable()
    if reason:
        sys.exit(f"guest: {reason}")
    ensure_image(progress=lambda line: print(line, file=sys.stderr, flush=True))
    workdir = Path(tempfile.mkdtemp(prefix="pgod-guest."))
    machine = Machine(workdir, share=args.share)
    began = time.monotonic()
    machine.start()
    print(f"guest: ready in {time.monotonic() - began:.1f} s (workdir {workdir})", file=sys.stderr, flush=True)
    return machine, workdir


def finish(machine: Machine, workdir: Path, keep: bool) -> None:
    try:
        machine.shutdown()
    finally:
        machine.close()
        if keep:
            print(f"guest: workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="guest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image", help="build or reuse the guest image; print its folder")
    for name in ("run", "shell"):
        p = sub.add_parser(name)
        p.add_argument("--user")
        p.add_argument("--timeout", type=float, default=600)
        p.add_argument("--share", type=Path)
        p.add_argument("--keep", action="store_true")
        if name == "run":
            p.add_argument("cmd")
    args = parser.parse_args()

    if args.command == "image":
        print(ensure_image(progress=lambda line: print(line, file=sys.stderr, flush=True)).folder)
        return 0

    machine, workdir = boot(args)
    rc = 0
    try:
        if args.command == "run":
            rc, output = machine.run(args.cmd, timeout=args.timeout, user=args.user)
            sys.stdout.write(output)
        else:
            prompt = f"{args.user or 'root'}@guest$ " if sys.stdin.isatty() else ""
            while True:
                try:
                    line = input(prompt)
                except EOFError:
                    break
                if line.strip():
                    rc, output = machine.run(line, timeout=args.timeout, user=args.user)
                    sys.stdout.write(output)
                    if rc:
                        print(f"[rc {rc}]")
                    sys.stdout.flush()
    finally:
        finish(machine, workdir, args.keep)
    return rc


if __name__ == "__main__":
    sys.exit(main())
