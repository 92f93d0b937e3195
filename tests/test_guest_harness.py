"""The booted-guest harness itself (tests/guest): the image boots to a clean systemd, has what
pgod's guest tests rely on, and the harness's commands, share, timeouts, power cut, reboot and
shutdown do what they say. If this fails, every guest test would fail for the same reason."""

from __future__ import annotations

import time

import pytest

from guest.machine import GuestError, Machine, guest_unavailable

pytestmark = pytest.mark.guest


@pytest.fixture
def machine(tmp_path, request):
    reason = guest_unavailable()
    if reason:
        pytest.skip(reason)
    guest = Machine(tmp_path / "guest")
    failed_before = request.session.testsfailed
    yield guest
    if request.session.testsfailed > failed_before:
        if guest.running:
            try:
                print(guest.run("journalctl -b --no-pager -p warning | tail -n 60", timeout=30)[1])
            except GuestError as error:
                print(f"(no journal: {error})")
        print(guest.console_tail(80))
    guest.close()


def timed(function, *args, **kwargs):
    began = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - began


def assert_running(machine: Machine) -> None:
    rc, state = machine.run("systemctl is-system-running --wait", timeout=120)
    if state.strip() != "running":
        failed = machine.run("systemctl --failed --no-legend --plain; journalctl -b -p warning --no-pager | tail -40")[1]
        pytest.fail(f"the guest is {state.strip()!r} (rc {rc}), not running:\n{failed}")


def test_guest_boots_runs_commands_and_survives_a_power_cut(machine):
    times = {}
    machine.start()
    times["boot to agent ready"] = machine.boot_seconds[-1]
    _, times["run('true')"] = timed(machine.run, "true")
    assert_running(machine)

    # The users pgod's tests use: alice (wheel, lingering), bob (not in wheel), the merge user.
    assert "(wheel)" in machine.succeed("id alice")
    assert "wheel" not in machine.succeed("id bob")
    machine.succeed("getent passwd pgod-merge | grep -q :/usr/sbin/nologin$")
    assert machine.succeed("id -un; echo $HOME", user="alice").split() == ["alice", "/home/alice"]
    machine.wait_until_succeeds("systemctl is-active user@$(id -u alice).service", timeout=30)

    # What pgod runs with in the guest (llvm-profdata 14 has --version only on its subcommands).
    machine.succeed("/opt/pgod/venv/bin/python -c 'import sqlalchemy, pydbus, structlog, watchdog, elftools, gi'")
    assert "LLVM version 14" in machine.succeed("llvm-profdata-14 merge --version")

    # The share, both ways.
    (machine.share / "from-host.txt").write_text("hello guest\n")
    assert machine.succeed("cat /mnt/host/from-host.txt") == "hello guest\n"
    machine.succeed("echo hello host > /mnt/host/from-guest.txt")
    assert (machine.share / "from-guest.txt").read_text() == "hello host\n"

    # rc, output (stdout and stderr together), failure, and a timeout that kills what the
    # command started, even in a user's login shell (runuser gives it a session of its own).
    assert machine.run("echo out; echo err >&2; exit 3") == (3, "out\nerr\n")
    machine.fail("false")
    (rc, _), took = timed(machine.run, "sleep 60 & sleep 60", timeout=2, user="bob")
    assert rc == 124 and took < 20
    machine.fail("pgrep -u bob sleep")

    # Power cut: what was synced survives, and the same overlay boots again.
    machine.succeed("echo kept > /root/kept && sync /root/kept")
    machine.power_cut()
    machine.start()
    times["boot after a power cut"] = machine.boot_seconds[-1]
    assert machine.succeed("cat /root/kept") == "kept\n"
    assert_running(machine)

    boot_id = machine.boot_id
    machine.reboot()
    times["clean reboot to agent ready"] = machine.boot_seconds[-1]
    assert machine.boot_id != boot_id
    _, times["clean shutdown"] = timed(machine.shutdown)
    assert not machine.running

    print("\n".join(f"{name}: {seconds:.2f} s" for name, seconds in times.items()))
