"""The three failures pgod met under its own unit, shown in the booted guest with the pgod from
before their fixes, and gone with today's (test_guest_service.py runs today's pgod through the
same steps). As they were first found: each by relaxing the unit just enough to get past the
one before, with a drop-in.

1. start: EPERM chmod-ing the merge folder it had handed to the merge user (needs CAP_FOWNER);
2. every merge: setpriv's capset, refused by `~@privileged` ("activate capabilities");
3. every merge after that: EACCES removing llvm-profdata's output from the merge user's 0700
   folder (needs CAP_DAC_OVERRIDE).

The pre-fix tree is read from git (BEFORE_FIXES), so this needs the checkout's history.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

import pytest

from guest.machine import Machine, guest_unavailable
from guest.pgod_in_guest import REPO, install, journal, prepare_share

pytestmark = [pytest.mark.guest, pytest.mark.skipif(bool(guest_unavailable()), reason=guest_unavailable() or "")]

#: main before pgod was fixed to run under its unit (the last commit of the earlier session).
BEFORE_FIXES = "dd00c7e"


def _old_pgod(share) -> None:
    """Put the pre-fix pgod package in the share in place of today's (kept as new-pgod), with
    today's unit and system files: the old tree had none, its unit lived in the NixOS module
    only, with the same settings line by line."""
    today = share / "src" / "pgod"
    shutil.copytree(today, share / "new-pgod")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_FIXES, "pgod"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(share / "old", filter="data")
    shutil.rmtree(today)
    shutil.copytree(share / "old" / "pgod", today)
    shutil.rmtree(today / "data")
    shutil.copytree(share / "new-pgod" / "data", today / "data")


def _has_history() -> bool:
    done = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE_FIXES}^{{commit}}"], capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="module")
def guest(tmp_path_factory, clang14, request):
    if not _has_history():
        pytest.skip(f"the checkout has no commit {BEFORE_FIXES} (a shallow clone?): the pre-fix pgod comes from git")
    machine = Machine(tmp_path_factory.mktemp("guest-regressions"))
    prepare_share(machine.share, clang14, schedule={})  # the pre-fix pgod knows no when-to-build keys
    _old_pgod(machine.share)
    try:
        machine.start()
        yield machine
    finally:
        if request.session.testsfailed:
            print("\n----- guest journal (pgod) -----\n" + journal(machine, "pgod.service", lines=100))
        machine.close()


def _relax(guest, name: str, text: str) -> None:
    guest.succeed(f"mkdir -p /etc/systemd/system/pgod.service.d && printf '[Service]\\n{text}\\n' "
                  f"> /etc/systemd/system/pgod.service.d/{name}.conf && systemctl daemon-reload")


def _merge_error(guest) -> str:
    """Run the profiled program once and wait for pgod's first merge failure; its error."""
    guest.succeed("/opt/workload/bin/workload 5 probe >/dev/null", user="bob")
    return guest.wait_until_succeeds(
        "journalctl -b -u pgod.service -o cat | grep profile.merge_failed | tail -n 1 | grep .", timeout=120)


def test_the_pre_fix_pgod_fails_each_of_the_three_ways_under_the_unit(guest):
    guest.run("bash /mnt/host/install-pgod.sh", timeout=300)  # its last step, starting pgod, fails
    guest.wait_until_succeeds("journalctl -b -u pgod.service -o cat | grep -q \"Operation not permitted: '/var/lib/pgod/merge'\"",
                              timeout=120)

    _relax(guest, "fowner", "CapabilityBoundingSet=CAP_FOWNER")
    guest.succeed("systemctl reset-failed pgod.service; systemctl restart pgod.service")
    guest.wait_until_succeeds("pgoctl status --json >/dev/null", timeout=120)
    assert "setpriv: activate capabilities: Operation not permitted" in _merge_error(guest)

    _relax(guest, "capset", "SystemCallFilter=capset")
    guest.succeed("systemctl restart pgod.service")
    guest.wait_until_succeeds("journalctl -b -u pgod.service -o cat | grep -q \"Permission denied: '/var/lib/pgod/merge/\"",
                              timeout=180)


def test_todays_pgod_runs_and_merges_under_the_unit_as_it_ships(guest):
    guest.succeed("systemctl stop pgod.service && rm -rf /etc/systemd/system/pgod.service.d /var/lib/pgod/* "
                  "&& systemctl daemon-reload && rm -rf /mnt/host/src/pgod && cp -r /mnt/host/new-pgod /mnt/host/src/pgod")
    since = guest.succeed("date +%s").strip()
    install(guest)
    guest.succeed("/opt/workload/bin/workload 7 today >/dev/null", user="bob")
    guest.wait_until_succeeds("pgoctl status --json | python3 -c 'import json,sys; "
                              "sys.exit(json.load(sys.stdin)[\"packages\"][0][\"files\"] < 1)'", timeout=120)
    today = guest.succeed(f"journalctl -u pgod.service -o cat --since @{since}")
    assert "profile.merged" in today and "merge_failed" not in today
