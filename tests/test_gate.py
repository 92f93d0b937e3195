"""The benchmark gate's measuring, with real processes: order, outputs, failures, timeouts."""

from __future__ import annotations

import time

import pytest

from pgod.optimize.gate import BenchmarkFailed, GateResult, measure


def test_rounds_alternate_which_side_runs_first(tmp_path):
    order = tmp_path / "order"
    argv = ["/bin/sh", "-c", f'echo "$0" >> {order}; echo same', "{bin}"]
    baseline, candidate = measure(argv, "base", "cand", rounds=5, timeout=10, identity=None)
    assert len(baseline) == len(candidate) == 5
    assert order.read_text().split() == ["base", "cand", "cand", "base", "base", "cand", "cand", "base", "base", "cand"]


def test_a_candidate_that_prints_something_else_is_refused(tmp_path):
    argv = ["/bin/echo", "{bin}"]
    with pytest.raises(BenchmarkFailed, match="output differs from the baseline's"):
        measure(argv, "/base", "/cand", rounds=5, timeout=10, identity=None)


def test_a_failing_run_is_named_with_its_last_error_line():
    argv = ["/bin/sh", "-c", 'if [ "$0" = bad ]; then echo "no such script" >&2; exit 3; fi', "{bin}"]
    with pytest.raises(BenchmarkFailed, match=r"exited 3: no such script"):
        measure(argv, "good", "bad", rounds=5, timeout=10, identity=None)


def test_a_run_past_its_timeout_is_killed_with_its_children():
    begun = time.monotonic()
    with pytest.raises(BenchmarkFailed, match="did not finish within 1 s"):
        measure(["/bin/sh", "-c", "sleep 30 & wait"], "a", "b", rounds=5, timeout=1, identity=None)
    assert time.monotonic() - begun < 20


def test_the_verdict_compares_medians_against_min_speedup():
    result = GateResult("lua", 1, 2.0 / 1.6, [2.0, 2.1, 1.9, 2.0, 9.0], [1.6, 1.5, 1.7, 1.6, 1.6], 1.2, 3.0)
    figures = result.figures()
    assert figures["baseline_median_seconds"] == 2.0 and figures["candidate_median_seconds"] == 1.6
    assert figures["speedup"] == 1.25 and figures["verdict"] == "accepted" and figures["rounds"] == 5
    assert figures["baseline_spread"] == pytest.approx((9.0 - 1.9) / 2.0, abs=1e-4)
    slower = GateResult("lua", 1, 0.9, [1.0] * 5, [1.1] * 5, 1.0, 3.0)
    assert not slower.accepted and slower.figures()["verdict"] == "rejected"


def test_a_child_left_holding_the_pipes_does_not_hold_the_gate():
    """A benchmark that leaves a daemon behind (its own session, the pipes still open): the run
    ends soon after the benchmark itself exits."""
    begun = time.monotonic()
    baseline, candidate = measure(["/bin/sh", "-c", "setsid sleep 30 & echo same"], "a", "b", rounds=5, timeout=20,
                                  identity=None)
    assert time.monotonic() - begun < 15
    assert max(baseline + candidate) < 1.0, "the time measured ends at the benchmark's exit"
