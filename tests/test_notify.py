"""The notification texts: the package, the measured speed-up if any, and the command that acts."""

from __future__ import annotations

from pgod.ctl import notify

OUT = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-lua-5.4.7"


def build(**extra) -> dict:
    return {"id": 3, "status": "succeeded", "finished_at": 1764600000.25, "out_path": OUT, **extra}


def package(**extra) -> dict:
    return {"name": "lua", "state": "ready", "optimized": OUT, "active": False, **extra}


def test_a_measured_ready_build_says_how_much_faster_and_how_to_activate():
    message = notify.build_ready("lua", build(speedup=1.1849), package(), in_use=False)
    assert message.summary == "lua: optimized build ready, 1.18× faster on your benchmark"
    assert "pgoctl activate lua" in message.body and OUT in message.body
    assert "not measured" not in message.body
    assert message.activate == "lua"


def test_an_unmeasured_build_says_so_and_keeps_the_summary_plain():
    message = notify.build_ready("lua", build(), package(), in_use=False)
    assert message.summary == "lua: optimized build ready"
    assert "Speed-up: not measured." in message.body


def test_a_build_in_use_says_how_to_go_back_and_offers_no_activate_action():
    message = notify.build_ready("lua", build(speedup=1.18), package(active=True, state="active"), in_use=True)
    assert message.summary == "lua: optimized build in use, 1.18× faster on your benchmark"
    assert "pgoctl deactivate lua" in message.body and "pgoctl activate" not in message.body
    assert message.activate is None


def test_the_speedup_of_the_current_build_may_come_from_the_package_summary():
    assert notify.speedup_of(build(), package(speedup=1.5)) == 1.5
    assert notify.speedup_of(build(out_path="/nix/store/other"), package(speedup=1.5)) is None
    assert notify.speedup_of(build(speedup=True), package()) is None
    assert notify.speedup_of(build(speedup="1.2"), package()) is None


def test_a_slower_build_is_not_called_faster():
    message = notify.build_ready("lua", build(speedup=0.9), package(), in_use=False)
    assert message.summary == "lua: optimized build ready, 0.90× the speed on your benchmark (slower)"


def test_news_told_late_says_when_it_happened():
    late = notify.build_ready("lua", build(), package(), in_use=False, late=True)
    assert "Finished at " in late.body and "before this agent could tell you" in late.body
    failed = notify.build_failed("lua", "build exited 1: boom", build(status="failed"), late=True)
    assert failed.summary == "lua: optimized build failed"
    assert failed.body.startswith("build exited 1: boom\nThe log: pgoctl logs lua")
    assert "before this agent could tell you" in failed.body


def test_a_failed_activation_is_not_called_a_failed_build():
    message = notify.step_failed("lua", "activation: nix-env exited 1: disk full")
    assert message.summary == "lua: could not put the optimized build in use"
    assert message.body == "nix-env exited 1: disk full\nTo try again: pgoctl activate lua"
    assert notify.step_failed("lua", "profile snapshot: no room").summary == "lua: optimized build failed"
    placing = notify.step_failed("lua", "putting the context-sensitive build in use: nix-env exited 1: read-only")
    assert placing.summary == "lua: the second stage's build is not in use yet"
    assert placing.body.startswith("nix-env exited 1: read-only\npgod tries again by itself")
