"""The whole loop in a booted guest, through the real nix-daemon: a profiled package installed
behind its stand-in, its profiles merged under pgod's unit, the optimized build made by the Nix
daemon (Debian's nix-bin, the fixture's hello), activated, run by whatever starts the program
through the system path, told once to a user's notify agent in a real user session, and put
back in place by the next boot.

The guest is Debian, not NixOS: what the NixOS module does at activation is done here by the
shipped pgod-substitute.service at boot, and /usr/local/bin/hello-pgo stands for the system
path (a Nix profile holding the stand-in, as /run/current-system/sw holds it on NixOS).
"""

from __future__ import annotations

import json
import shutil

import pytest

from guest.machine import Machine, guest_unavailable
from guest.pgod_in_guest import REPO, install, journal, package, prepare_share

pytestmark = [pytest.mark.guest, pytest.mark.slow, pytest.mark.skipif(bool(guest_unavailable()), reason=guest_unavailable() or "")]

LOOP = "/opt/pgod-nix/tests/nix/loop.nix"
SPOOL = "/var/spool/pgod"
NIX = "NIX_REMOTE=daemon"
#: The fixture's stdenv compiles with the guest's /usr/bin/clang-14 and /bin/bash: no sandbox.
NIX_CONF = """\
build-users-group = nixbld
sandbox = false
substituters =
"""
DUNSTRC = """\
[global]
    font = Monospace 8
[pgod]
    appname = pgod
    script = /home/alice/record-notification
"""
RECORD = '#!/bin/sh\nprintf "%s|%s|%s\\n" "$1" "$2" "$3" >> /home/alice/notifications.log\n'
THRESHOLD_MB = 0.008  # a few runs of hello cross it (tests/test_closed_loop.py)
#: Once a second, from outside: every builder process (the nixbld users') and every nix-daemon
#: process, with its scheduling class as `ps` shows it (its `ni` column shows "-" for SCHED_IDLE,
#: so the nice value is /proc/PID/stat's field 19) and its I/O class (`ionice -p`).
SAMPLER = r"""
while :; do
    ps -eo pid=,ni=,cls=,user=,comm=,args= | while read -r pid ni cls user comm args; do
        case "$user $comm" in nixbld*|*" nix-daemon") ;; *) continue ;; esac
        stat=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null) || continue
        set -- $stat
        echo "$pid ${17} $cls $user $comm $ni | $(ionice -p "$pid" 2>&1) | $args"
    done >> "$1"
    sleep 1
done
"""


def _copy_nix_sources(share) -> None:
    """The fixture nixpkgs, the adapters, the stand-in and loop.nix, at their relative places."""
    target = share / "nix-src"
    for part in ("nix/tests/fixture", "stdenv-adapters", "tests/nix"):
        shutil.copytree(REPO / part, target / part, dirs_exist_ok=True)
    (target / "nixos-module").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "nixos-module" / "substitute.nix", target / "nixos-module" / "substitute.nix")


@pytest.fixture(scope="module")
def guest(tmp_path_factory, clang14, request):
    machine = Machine(tmp_path_factory.mktemp("guest-nix"))
    hello = {
        "profile_build": ["@PROFILING@"],
        "build": ["nix-build", LOOP, "-A", "optimized.out", "--argstr", "spoolDir", SPOOL,
                  "--argstr", "profile", "{profile}", "--out-link", "/var/lib/pgod/result-hello"],
        "llvm_profdata": "/usr/bin/llvm-profdata-14",
        "threshold_mb": THRESHOLD_MB,
    }
    # The build waits for an idle CPU as users' do (schedule/conditions.py reads /proc/stat,
    # which the hardened unit must let it see), over a short window.
    prepare_share(machine.share, clang14, {"hello": hello}, activation="auto", build_idle_cpu_percent=95,
                  build_idle_seconds=2)
    _copy_nix_sources(machine.share)
    (machine.share / "nix.conf").write_text(NIX_CONF)
    (machine.share / "dunstrc").write_text(DUNSTRC)
    (machine.share / "record-notification").write_text(RECORD)
    try:
        machine.start()
        machine.succeed("install -m 644 /mnt/host/nix.conf /etc/nix/nix.conf && systemctl restart nix-daemon.service"
                        " && rm -rf /opt/pgod-nix && cp -r /mnt/host/nix-src /opt/pgod-nix && chown -R root:root /opt/pgod-nix")
        yield machine
    finally:
        if request.session.testsfailed:
            print("\n----- guest journal (pgod) -----\n" + journal(machine, "pgod.service", lines=400))
            print("\n----- console (tail) -----\n" + machine.console_tail())
        machine.close()


def _realpath(guest, path: str) -> str:
    return guest.succeed(f"readlink -f {path}").strip()


def _writes_a_profile(guest) -> bool:
    """Run hello-pgo as a service finds it, through the system path; True when it wrote a raw
    profile (the profiling build does, the optimized one does not)."""
    guest.succeed("rm -rf /tmp/probe && mkdir /tmp/probe && LLVM_PROFILE_FILE=/tmp/probe/%p.profraw hello-pgo 7 probe >/dev/null")
    return guest.succeed("ls /tmp/probe").strip() != ""


def _start_notification_session(guest) -> None:
    """alice (lingering) gets a screen, a real notification server and pgod's agent, all as
    systemd user units in her user manager."""
    user = "systemctl --user -M alice@"
    guest.succeed("install -o alice -m 644 /mnt/host/dunstrc -D /home/alice/.config/dunst/dunstrc"
                  " && install -o alice -m 755 /mnt/host/record-notification /home/alice/record-notification")
    guest.succeed(f"{user} set-environment DISPLAY=:7")
    guest.succeed("systemd-run --user -M alice@ --unit=pgod-test-xvfb Xvfb :7 -nolisten tcp")
    guest.wait_until_succeeds("test -S /tmp/.X11-unix/X7", timeout=60)
    guest.succeed("systemd-run --user -M alice@ --unit=pgod-test-dunst dunst")
    guest.wait_until_succeeds("busctl --user -M alice@ status org.freedesktop.Notifications >/dev/null", timeout=60)
    guest.succeed(f"{user} start pgod-notify-agent.service")
    # Its state line, once it has caught up with the daemon (this boot's journal).
    guest.wait_until_succeeds("journalctl -b -o cat _SYSTEMD_USER_UNIT=pgod-notify-agent.service"
                              " | grep -qx 'pgoctl: notify-agent running'", timeout=120)


def _start_sampler(guest, name: str) -> None:
    guest.succeed(f"systemd-run --unit=pgod-test-ps-{name} /bin/bash /root/sampler.sh /root/ps-{name}.log")


def _sampled(guest, name: str) -> list[tuple[int, str, str, str, str, str]]:
    """The sampler's lines: (pid, nice, cls, user, comm, ionice), builders and daemons."""
    guest.succeed(f"systemctl stop pgod-test-ps-{name}")
    rows = []
    for line in guest.succeed(f"cat /root/ps-{name}.log").splitlines():
        head, io, _args = line.split(" | ", 2)
        pid, nice, cls, user, *comm, _ps_ni = head.split()
        rows.append((int(pid), nice, cls, user, " ".join(comm), io))
    return rows


def _notifications(guest) -> list[str]:
    return guest.run("cat /home/alice/notifications.log")[1].splitlines()


def test_a_profiled_package_is_built_by_the_nix_daemon_activated_and_run_through_the_system_path(guest):
    guest.succeed(f"cat > /root/sampler.sh <<'EOF'\n{SAMPLER}\nEOF")
    _start_sampler(guest, "direct")  # root's own nix-build: the daemon's usual priorities
    profiling = guest.succeed(f"{NIX} nix-build {LOOP} -A profiling --argstr spoolDir {SPOOL} -o /root/hello-profiling",
                              timeout=900).split()[-1]
    stand_in = guest.succeed(f"{NIX} nix-build {LOOP} -A standIn --argstr spoolDir {SPOOL} -o /root/stand-in",
                             timeout=600).split()[-1]
    direct = _sampled(guest, "direct")
    guest.succeed(f"{NIX} nix-env -p /nix/var/nix/profiles/guest-system -i {stand_in}"
                  " && ln -sf /nix/var/nix/profiles/guest-system/bin/hello-pgo /usr/local/bin/hello-pgo")
    guest.succeed(f"sed -i 's|@PROFILING@|{profiling}|' /mnt/host/config.toml")
    install(guest)
    _start_notification_session(guest)
    # At boot (here: its first start) the links behind the stand-in point at the profiling build.
    assert _realpath(guest, "/usr/local/bin/hello-pgo") == f"{profiling}/bin/hello-pgo"
    assert _writes_a_profile(guest)

    _start_sampler(guest, "pgod")  # pgod's optimized build, through the same daemon
    for n in range(20):
        guest.succeed(f"hello-pgo {n * 3 + 1} some text", user="bob")
    active = guest.wait_until_succeeds(
        "pgoctl status --json | python3 -c 'import json,sys; "
        "p=[p for p in json.load(sys.stdin)[\"packages\"] if p[\"name\"]==\"hello\"][0]; "
        "print(p[\"optimized\"]) if p[\"state\"]==\"active\" else sys.exit(1)'", timeout=1200)
    optimized = active.strip()
    assert optimized.startswith("/nix/store/") and optimized != profiling
    assert _realpath(guest, "/usr/local/bin/hello-pgo") == f"{optimized}/bin/hello-pgo"
    assert not _writes_a_profile(guest)
    # The Nix daemon built it: its build log names the store path and no local store was used.
    assert guest.succeed("ls /nix/var/log/nix/drvs").strip() != ""
    assert "LLVM Profile Error" not in guest.succeed("journalctl -b --no-pager -o cat")
    # It waited for the machine as the hardened unit runs it: CPU use measured from /proc/stat.
    looked = [json.loads(line) for line in guest.succeed(
        "journalctl -b -o cat -u pgod.service | grep -e build.conditions -e build.cpu_unknown || true").splitlines()]
    assert looked and all(entry["event"] == "build.conditions" for entry in looked), looked
    assert looked[-1]["waiting"] is None and looked[-1]["cpu_percent"] is not None, looked

    # Seen from outside: the builders nix-daemon ran for root's own nix-build kept the usual
    # priorities; those it ran for pgod's build, and the worker serving pgod, ran at nice 19,
    # SCHED_IDLE (ps: IDL) and I/O idle; the master daemon was not touched.
    pgod_rows = _sampled(guest, "pgod")
    for name, rows in (("root's nix-build", direct), ("pgod's build", pgod_rows)):
        seen = [(r[1], r[2], r[5]) for r in rows if r[3] != "root"]
        print(f"\nbuilder samples (nice, class, I/O), {name}: {len(seen)},",
              {key: seen.count(key) for key in sorted(set(seen))})
    lowered_line = guest.succeed("journalctl -b -o cat -u pgod.service | grep build.lowered | tail -n 1")
    print(lowered_line)
    built_for_root = [r for r in direct if r[3] != "root"]
    built_for_pgod = [r for r in pgod_rows if r[3] != "root"]
    assert built_for_root and built_for_pgod, (direct, pgod_rows)
    assert {(ni, cls) for _pid, ni, cls, _u, _c, _io in built_for_root} == {("0", "TS")}
    assert all(not io.startswith("idle") for *_, io in built_for_root)
    assert {(ni, cls, io) for _pid, ni, cls, _u, _c, io in built_for_pgod} == {("19", "IDL", "idle")}, built_for_pgod
    lowered = json.loads(lowered_line)
    assert lowered["workers"] and not lowered.get("not_lowered") and not lowered.get("child_failed"), lowered
    for worker in lowered["workers"]:  # a sample may straddle its lowering (ps before, stat after): the last one
        samples = [(r[1], r[2], r[5]) for r in pgod_rows if r[0] == worker]
        assert samples and samples[-1] == ("19", "IDL", "idle"), samples
    masters = {r[0] for r in pgod_rows if r[4] == "nix-daemon" and r[0] not in lowered["workers"]
               and r[0] in {q[0] for q in direct}}
    assert masters and all((r[1], r[2]) == ("0", "TS") for r in pgod_rows if r[0] in masters)


def test_the_notify_agent_in_a_user_session_tells_the_finished_build_once(guest):
    guest.wait_until_succeeds("grep -q 'pgod|hello' /home/alice/notifications.log", timeout=120)
    told = [line for line in _notifications(guest) if line.startswith("pgod|hello")]
    assert len(told) == 1, told


def test_a_reboot_puts_the_links_back_and_nothing_is_told_again(guest):
    optimized = package(guest, "hello")["optimized"]
    guest.reboot()
    guest.wait_until_succeeds("systemctl is-active pgod.service", timeout=120)
    assert guest.succeed("systemctl is-active pgod-substitute.service").strip() == "active"
    assert _realpath(guest, "/usr/local/bin/hello-pgo") == f"{optimized}/bin/hello-pgo"
    assert not _writes_a_profile(guest)
    assert package(guest, "hello")["state"] == "active"
    # The agent comes back with alice's lingering user manager and says nothing new.
    _start_notification_session(guest)
    told = [line for line in _notifications(guest) if line.startswith("pgod|hello")]
    assert len(told) == 1, told
    status = json.loads(guest.succeed("pgoctl status --json", user="bob"))
    assert {p["name"]: p["state"] for p in status["packages"]}["hello"] == "active"
