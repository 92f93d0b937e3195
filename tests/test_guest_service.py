"""pgod as a NixOS user meets it, in a booted Debian guest: systemd 252 as PID 1, the shipped
unit with its capability set, syscall filter and read-only system, the real system bus with the
shipped policy, a login shell, a hardened service and a timer as the programs' sources.

One guest for the module (a boot costs 20-35 s under emulation); the tests run in file order and
each leaves the machine as the next expects. The guest's journal is printed when one fails.
"""

from __future__ import annotations

import json
import shlex

import pytest

from guest.machine import Machine, guest_unavailable
from guest.pgod_in_guest import install, journal, package, prepare_share, status

pytestmark = [pytest.mark.guest, pytest.mark.skipif(bool(guest_unavailable()), reason=guest_unavailable() or "")]

# The unit's four capabilities: CAP_CHOWN (0), CAP_DAC_READ_SEARCH (2), CAP_SETGID (6), CAP_SETUID (7).
UNIT_CAPABILITIES = (1 << 0) | (1 << 2) | (1 << 6) | (1 << 7)

HARDENED_SERVICE = """\
[Unit]
Description=a service hardened as NixOS services are, running a profiled program
[Service]
Type=oneshot
ExecStart=/opt/workload/bin/workload 31 hardened-service
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
"""

TIMER = """\
[Timer]
OnActiveSec=1
AccuracySec=1ms
"""
TIMER_SERVICE = """\
[Service]
Type=oneshot
# A cleared environment: no LLVM_PROFILE_FILE, the binary's baked-in path only.
ExecStart=/usr/bin/env -i /opt/workload/bin/workload 33 timer
"""

#: The three runs, each as its source starts it: (the program's arguments).
RUNS = [("31", "hardened-service"), ("33", "timer"), ("35", "login")]


@pytest.fixture(scope="module")
def guest(tmp_path_factory, clang14, request):
    machine = Machine(tmp_path_factory.mktemp("guest-service"))
    prepare_share(machine.share, clang14)
    for name, text in [("pgod-test-hardened.service", HARDENED_SERVICE), ("pgod-test-timer.timer", TIMER),
                       ("pgod-test-timer.service", TIMER_SERVICE)]:
        (machine.share / name).write_text(text)
    try:
        machine.start()
        install(machine)
        yield machine
    finally:
        if request.session.testsfailed:
            print("\n----- guest journal (pgod) -----\n" + journal(machine, "pgod.service"))
            print("\n----- console (tail) -----\n" + machine.console_tail())
        machine.close()


def test_pgod_runs_under_the_shipped_unit_with_its_capabilities_and_filter(guest):
    assert guest.succeed("systemctl is-active pgod.service").strip() == "active"
    # The file install-system-files.sh put there (Debian's /lib is /usr/lib), no drop-in.
    fragment = guest.succeed("readlink -f \"$(systemctl show -p FragmentPath --value pgod.service)\"").strip()
    assert fragment == "/usr/lib/systemd/system/pgod.service"
    assert guest.succeed("systemctl show -p DropInPaths --value pgod.service").strip() == ""
    pid = guest.succeed("systemctl show -p MainPID --value pgod.service").strip()
    fields = dict(line.split(":\t", 1) for line in guest.succeed(f"cat /proc/{pid}/status").splitlines() if ":\t" in line)
    assert int(fields["CapBnd"], 16) == UNIT_CAPABILITIES
    assert int(fields["CapEff"], 16) == UNIT_CAPABILITIES
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # the SystemCallFilter is in force
    # The merge folder stays pgod's, writable by the merge user's group only.
    assert guest.succeed("stat -c '%U %G %a' /var/lib/pgod/merge").split() == ["root", "pgod-merge", "770"]


def test_status_is_open_to_an_unprivileged_user_over_the_system_bus(guest):
    document = status(guest, user="bob")
    assert [p["name"] for p in document["packages"]] == ["workload"]
    assert document["packages"][0]["state"] == "profiling"


def test_profiles_from_a_login_shell_a_hardened_service_and_a_timer_are_all_counted(guest):
    guest.succeed("cp /mnt/host/pgod-test-* /etc/systemd/system/ && systemctl daemon-reload")
    # The spool generator gave the hardened service (and only such services) the spool.
    assert "/var/spool/pgod" in guest.succeed("systemctl show -p ReadWritePaths --value pgod-test-hardened.service")
    assert guest.succeed("ls /run/systemd/generator/pgod-test-hardened.service.d/").split() == ["50-pgod-spool.conf"]
    assert guest.succeed("systemctl show -p ReadWritePaths --value pgod-test-timer.service").strip() == ""

    guest.succeed("systemctl start pgod-test-hardened.service")
    guest.succeed("systemctl start pgod-test-timer.timer")
    guest.wait_until_succeeds("test \"$(systemctl show -p Result --value pgod-test-timer.service)\" = success "
                              "&& systemctl show -p ExecMainStartTimestampMonotonic --value pgod-test-timer.service | grep -qv '^0$'",
                              timeout=60)
    guest.succeed("/opt/workload/bin/workload 35 login", user="bob")

    guest.wait_until_succeeds("pgoctl status --json | python3 -c 'import json,sys; "
                              "p=json.load(sys.stdin)[\"packages\"][0]; sys.exit(p[\"files\"] != 3)'", timeout=120)
    assert "LLVM Profile Error" not in guest.succeed("journalctl -b --no-pager -o cat")

    # The merged profile is exactly one llvm-profdata merge of the same three runs.
    reference = " && ".join(
        f"LLVM_PROFILE_FILE=/tmp/reference/%p.profraw /opt/workload/bin/workload {shlex.join(run)} >/dev/null" for run in RUNS
    )
    guest.succeed(f"rm -rf /tmp/reference && mkdir /tmp/reference && {reference} && "
                  "llvm-profdata-14 merge -o /tmp/reference.profdata /tmp/reference/*.profraw")
    profile = package(guest, "workload")["profile"]
    show = "llvm-profdata-14 show --all-functions --counts"
    assert guest.succeed(f"{show} {profile}") == guest.succeed(f"{show} /tmp/reference.profdata")
    assert package(guest, "workload")["quarantined"] == 0
    assert "merge_failed" not in journal(guest, "pgod.service", lines=2000)


def test_each_sources_share_is_counted_under_its_owner(guest):
    """bob's login shell, the service's dynamic user (a uid systemd allocates per run) and root's
    timer: three owners, one file each."""
    shown = json.loads(guest.succeed("pgoctl show workload --json"))
    files = {share["uid"]: share["files"] for share in shown["contributions"]}
    bob = int(guest.succeed("id -u bob").strip())
    assert files.pop(bob) == 1 and files.pop(0) == 1
    (dynamic, count), = files.items()
    assert 61184 <= dynamic <= 65519 and count == 1  # systemd's DynamicUser= range


def test_mutations_are_refused_outside_the_admin_group_and_allowed_inside(guest):
    refused = guest.run("pgoctl rebuild workload", user="bob")
    assert refused[0] == 4, refused
    allowed = guest.run("pgoctl rebuild workload", user="alice")
    assert allowed[0] == 0, allowed
