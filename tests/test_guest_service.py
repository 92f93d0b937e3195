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

# The unit's five capabilities: CAP_CHOWN (0), CAP_DAC_READ_SEARCH (2), CAP_SETGID (6), CAP_SETUID (7),
# CAP_SYS_NICE (23).
UNIT_CAPABILITIES = (1 << 0) | (1 << 2) | (1 << 6) | (1 << 7) | (1 << 23)

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

LIVE_SERVICE = """\
[Unit]
Description=a hardened service that never exits, built with the live object
[Service]
Type=simple
ExecStart=/opt/liveserver/bin/liveserver
Environment=PGOD_LIVE_INTERVAL_S=2
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
"""

#: The three runs, each as its source starts it: (the program's arguments).
RUNS = [("31", "hardened-service"), ("33", "timer"), ("35", "login")]


@pytest.fixture(scope="module")
def guest(tmp_path_factory, clang14, request):
    machine = Machine(tmp_path_factory.mktemp("guest-service"))
    prepare_share(machine.share, clang14, live_server=True, live_interval_s=2)
    for name, text in [("pgod-test-hardened.service", HARDENED_SERVICE), ("pgod-test-timer.timer", TIMER),
                       ("pgod-test-timer.service", TIMER_SERVICE), ("pgod-test-live.service", LIVE_SERVICE)]:
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
    assert [p["name"] for p in document["packages"]] == ["workload", "liveserver"]
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


SERVE_CALLS = """\
import json, subprocess
for _ in range(20):  # a newer generation may replace the one named between the two commands
    profile = json.loads(subprocess.run(["pgoctl", "show", "liveserver", "--json"], capture_output=True, check=True).stdout)["profile"]
    shown = subprocess.run(["llvm-profdata-14", "show", "--counts", "--function=step", profile], capture_output=True, text=True)
    if shown.returncode == 0:
        print(sum(int(n) for n in shown.stdout.split("Block counts: [", 1)[1].split("]", 1)[0].split(",")))
        break
else:
    raise SystemExit("no generation of liveserver's profile could be read")
"""


def test_a_hardened_service_that_never_exits_is_counted_while_it_runs(guest):
    """The live object in a service with ProtectSystem=strict and DynamicUser=yes: its counts
    reach pgod's profile while it runs, rising, under the service's dynamic uid; never stopped."""
    guest.succeed("cp /mnt/host/pgod-test-live.service /etc/systemd/system/ && systemctl daemon-reload")
    guest.succeed("systemctl start pgod-test-live.service")
    main_pid = guest.succeed("systemctl show -p MainPID --value pgod-test-live.service").strip()
    guest.wait_until_succeeds("pgoctl show liveserver --json | python3 -c 'import json,sys; "
                              "l=json.load(sys.stdin)[\"live\"]; sys.exit(not (l[\"processes\"] == 1 and l[\"snapshots\"] >= 2))'",
                              timeout=180)
    (guest.share / "serve_calls.py").write_text(SERVE_CALLS)  # step()'s calls in pgod's profile of it
    calls = int(guest.succeed("python3 /mnt/host/serve_calls.py"))
    assert calls > 0 and calls % 1000 == 0, calls  # whole work items: serve(1000) per tick
    guest.wait_until_succeeds(f"test $(python3 /mnt/host/serve_calls.py) -gt {calls}", timeout=120)
    # Still the same process: nothing was stopped or restarted for it.
    assert guest.succeed("systemctl is-active pgod-test-live.service").strip() == "active"
    assert guest.succeed("systemctl show -p MainPID --value pgod-test-live.service").strip() == main_pid
    live_files = guest.succeed("ls /var/spool/pgod").split()
    assert [name for name in live_files if name.startswith("live-")] and not any(
        name.endswith(".profraw") and not name.startswith("live-") for name in live_files), live_files
    owners = guest.succeed("stat -c %u /var/spool/pgod/live-*.profraw").split()
    shown = json.loads(guest.succeed("pgoctl show liveserver --json"))
    uids = {share["uid"] for share in shown["contributions"]}
    assert uids == {int(owners[0])} and 61184 <= int(owners[0]) <= 65519, (uids, owners)
    assert "LLVM Profile" not in guest.succeed("journalctl -b --no-pager -o cat -u pgod-test-live.service")
    assert "live.not_a_snapshot" not in journal(guest, "pgod.service", lines=2000)
