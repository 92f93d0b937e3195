#!/usr/bin/python3
"""Runs in the guest during the power-loss test: puts the host's raw profiles into the spool,
one by one, and records on the host (the 9p share, fsynced there) which ones were sent.

A file counts as sent once its rename into the spool is durable. Each file is written under a
private name on the spool's file system, fsynced, announced ("begin N"), renamed into the spool,
the spool folder fsynced, and then recorded ("sent N"). A power cut can fall anywhere; at the
next start the one file announced but not recorded is settled from what the disk kept: its
private copy still there means the rename was lost (not sent; removed), gone means it was made
durable (sent; recorded now).

    sender.py RAW_DIR LOG SPOOL WORK [--until N]
"""

from __future__ import annotations

import os
import sys


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append(log: str, line: str) -> None:
    with open(log, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def settle(log: str, work: str) -> set[int]:
    """The numbers sent so far, after settling the one a cut may have left open."""
    sent: set[int] = set()
    begun: set[int] = set()
    if os.path.exists(log):
        for line in open(log).read().splitlines():
            word, _, number = line.partition(" ")
            if word == "sent":
                sent.add(int(number))
            elif word == "begin":
                begun.add(int(number))
            elif word == "lost":
                begun.discard(int(number))
    for number in sorted(begun - sent):
        private = os.path.join(work, f"{number:05d}.tmp")
        if os.path.exists(private):
            os.unlink(private)
            append(log, f"lost {number}")
        else:
            append(log, f"sent {number}")
            sent.add(number)
    for leftover in os.listdir(work):  # written but never announced
        os.unlink(os.path.join(work, leftover))
    return sent


def main(argv: list[str]) -> int:
    raw_dir, log, spool, work = argv[:4]
    until = int(argv[5]) if len(argv) > 5 and argv[4] == "--until" else None
    os.makedirs(work, exist_ok=True)
    sent = settle(log, work)
    numbers = sorted(int(name.split(".")[0]) for name in os.listdir(raw_dir) if name.endswith(".profraw"))
    for number in numbers:
        if until is not None and number >= until:
            break
        if number in sent:
            continue
        with open(os.path.join(raw_dir, f"{number:05d}.profraw"), "rb") as source:
            data = source.read()
        private = os.path.join(work, f"{number:05d}.tmp")
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        append(log, f"begin {number}")
        os.rename(private, os.path.join(spool, f"sender-{number:05d}.profraw"))
        fsync_dir(spool)
        append(log, f"sent {number}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
