"""Power loss, as such: a booted guest killed (not shut down) at random moments while raw
profiles arrive and merge, booted again on the same disk, until the last boot, whose final
profile must equal one `llvm-profdata merge` of exactly what was sent.

The guest's disk runs with cache=none: what the guest kernel had not yet written to its disk
when QEMU is killed (dirty pages, an unflushed journal) is really lost, as at a power cut. The
sender (sender.py) records on the host which files reached the spool durably, so the expected
profile is known whatever the cuts did to the guest's own records.

Used by tests/test_guest_power_loss.py (a few cuts) and scripts/guest-power-loss (any number).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.clangs import Clang, run_instrumented

from .machine import Machine
from .pgod_in_guest import WORKLOAD_SOURCE, install, prepare_share

SENDER = "systemd-run --unit=pgod-test-sender --uid=bob --collect -p Type=exec /usr/bin/python3 /mnt/host/sender.py " \
         "/mnt/host/raw /mnt/host/sent.log /var/spool/pgod /var/tmp/pgod-sender"


@dataclass
class Cut:
    """One power cut: when, and what the guest was doing just before it."""

    after_s: float  # seconds after the sender started
    merging: bool  # an llvm-profdata was running 0.1 s or so before the cut
    sent_before: int  # files recorded as sent when the cut fell
    recovery: dict = field(default_factory=dict)  # what pgod's start-up found (its recovery.summary)


@dataclass
class Result:
    cuts: list[Cut]
    files_sent: int
    files_counted: int
    same_as_one_merge: bool
    quarantined: int
    seconds: float

    def summary(self) -> str:
        merging = sum(cut.merging for cut in self.cuts)
        reexamined = sum(cut.recovery.get("reexamined", 0) for cut in self.cuts)
        settled = sum(cut.recovery.get("settled", 0) for cut in self.cuts)
        generations = sum(cut.recovery.get("uncommitted_generations", 0) for cut in self.cuts)
        pending = sum(cut.recovery.get("claimed_pending", 0) for cut in self.cuts)
        interrupted = sum(bool(cut.recovery.get("claimed_pending") or cut.recovery.get("uncommitted_generations"))
                          for cut in self.cuts)
        return (
            f"power loss: {len(self.cuts)} cuts ({merging} with llvm-profdata running just before, "
            f"{interrupted} leaving claimed files uncounted or a profile generation uncommitted); "
            f"recovery found {pending} claimed files not yet counted, re-examined {reexamined} unrecorded ones, "
            f"settled {settled} counted ones, "
            f"removed {generations} uncommitted profile generations; "
            f"{self.files_sent} files sent, {self.files_counted} counted, "
            f"final profile {'==' if self.same_as_one_merge else '!='} one llvm-profdata merge of what was sent, "
            f"{self.quarantined} quarantined, {self.seconds:.0f} s"
        )


def make_raw_files(directory: Path, clang: Clang, count: int) -> list[Path]:
    """``count`` distinct raw profiles of the instrumented workload, made on the host."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory.parent / "raw-workload"
    clang.compile(WORKLOAD_SOURCE, exe, ir=True)
    scratch = directory.parent / "raw-scratch"
    files = []
    for number in range(count):
        scratch.mkdir(exist_ok=True)
        run_instrumented(exe, [str(number * 7 + 3), "x" * (number % 50) + " 12 ab"], scratch / "%p.profraw")
        (made,) = scratch.iterdir()
        target = directory / f"{number:05d}.profraw"
        made.rename(target)
        files.append(target)
    return files


def run(workdir: Path, clang: Clang, cuts: int, files: int = 300, max_delay_s: float = 25.0,
        seed: int | None = None, log=print) -> Result:
    """Boot, cut power ``cuts`` times at random moments, then finish and compare."""
    started = time.monotonic()
    rng = random.Random(seed)
    machine = Machine(workdir, disk_cache="none")
    share = machine.share
    prepare_share(share, clang, threshold_mb=1024)
    # The workload the raw files come from is the package pgod watches.
    raw = make_raw_files(share / "raw", clang, files)
    (share / "workload" / "bin" / "workload").unlink()
    (share / "raw-workload").rename(share / "workload" / "bin" / "workload")
    (share / "sender.py").write_bytes((Path(__file__).parent / "sender.py").read_bytes())
    # The sender runs as bob: it reads the share and appends to its log there.
    for path in (share, share / "raw"):
        path.chmod(0o755)
    (share / "sent.log").touch(mode=0o666)
    (share / "sent.log").chmod(0o666)
    history: list[Cut] = []
    try:
        machine.start()
        install(machine)
        machine.succeed("sync")  # the installation itself is not what is being cut
        for number in range(cuts):
            machine.succeed(SENDER)
            delay = rng.uniform(1.0, max_delay_s)
            time.sleep(delay)  # a random moment is the point: no event to wait for
            # Anchored: the agent's own bash, whose command line holds this text, must not match.
            merging = machine.run("pgrep -f '^/usr/bin/llvm-profdata-14 merge' >/dev/null", timeout=10)[0] == 0
            machine.power_cut()
            cut = Cut(delay, merging, _sent(share))
            history.append(cut)
            machine.start()
            machine.wait_until_succeeds("systemctl is-active pgod.service", timeout=180)
            cut.recovery = _recovery(machine)
            log(f"cut {number + 1}/{cuts} after {delay:.1f} s: merging={merging}, sent so far {cut.sent_before}, "
                f"recovery {cut.recovery}")
        machine.succeed(SENDER.replace("-p Type=exec", "-p Type=oneshot --wait"), timeout=1800)
        sent = sorted(_sent_numbers(share))
        machine.wait_until_succeeds(
            "pgoctl status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); "
            f"p=d[\"packages\"][0]; sys.exit(not (p[\"total_files\"] + p[\"quarantined\"] >= {len(sent)} and d[\"daemon\"][\"spool_backlog\"] == 0))'",
            timeout=900)
        document = json.loads(machine.succeed("pgoctl show workload --json"))
        machine.succeed(f"cp {document['profile']} /mnt/host/final.profdata")
        expected = share / "expected.profdata"
        subprocess.run([str(clang.profdata), "merge", "-o", str(expected), *(str(raw[n]) for n in sent)], check=True)
        same = _show(clang, share / "final.profdata") == _show(clang, expected)
        return Result(history, len(sent), document["total_files"], same, document["quarantined"], time.monotonic() - started)
    finally:
        machine.close()


def _sent_numbers(share: Path) -> set[int]:
    log = share / "sent.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return {int(line.split()[1]) for line in lines if line.startswith("sent ")}


def _sent(share: Path) -> int:
    return len(_sent_numbers(share))


def _recovery(machine: Machine) -> dict:
    """pgod's own account of what its start-up recovered, from this boot's journal."""
    out = machine.run("journalctl -b -u pgod.service -o cat | grep recovery.summary | tail -n 1", timeout=60)[1].strip()
    try:
        return {k: v for k, v in json.loads(out).items() if k in ("settled", "reexamined", "uncommitted_generations", "claimed_pending")}
    except ValueError:
        return {}


def _show(clang: Clang, path: Path) -> str:
    return subprocess.run([str(clang.profdata), "show", "--all-functions", "--counts", str(path)],
                          check=True, capture_output=True, text=True).stdout
