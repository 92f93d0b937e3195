"""IR PGO, the context-sensitive stage and the benchmark gate, with real clang, llvm-profdata and
Nix builds of the fixture's hello-pgo (tests/nix/loop.nix)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_closed_loop import LOOP_NIX, THRESHOLD_MB, build_argv, nix_build, run_hello
from testbed.daemon import wait_for

pytestmark = pytest.mark.skipif(not Path("/usr/bin/nix-build").exists(), reason="nix-build not installed (apt-get install nix-bin)")

LLVM_PROFDATA = "/usr/bin/llvm-profdata-14"


def show(profdata: str, *options: str) -> str:
    return subprocess.run([LLVM_PROFDATA, "show", *options, profdata], check=True, capture_output=True, text=True).stdout


def functions(shown: str) -> int:
    return int(next(line.split(":")[1] for line in shown.splitlines() if line.startswith("Total functions:")))


def cs_build_argv(spool: Path) -> list[str]:
    return ["nix-build", str(LOOP_NIX), "-A", "csProfiling.out", "--argstr", "spoolDir", str(spool),
            "--argstr", "profile", "{profile}", "--no-out-link"]


def test_the_ir_loop_merges_ir_profiles_and_builds_from_them_a_binary_that_writes_none(pgod, tmp_path):
    profiling = nix_build("profiling", pgod.spool)
    assert json.loads((Path(profiling) / "nix-support" / "pgo.json").read_text())["instrumentation"] == "ir"
    pgod.write_config({"hello": {"profile_build": [profiling], "build": build_argv(pgod.spool),
                                 "threshold_mb": THRESHOLD_MB}}, activation="auto")
    daemon = pgod.daemon()
    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    package = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "optimized build active")
    assert package["instrumentation"] == "ir" and package["stages"] == 1
    detail = json.loads(daemon.pgoctl("show", "hello", "--json").stdout)
    used = detail["builds"][0]["profile"]
    assert show(used).startswith("Instrumentation level: IR")
    # clang read the profile: every function it names was found, none out of date.
    report = json.loads((Path(package["optimized"]) / "nix-support" / "pgo-warnings.json").read_text())
    assert report["profile"] == used and report["profile_functions"] == functions(show(used)) > 0
    assert report["mismatched_functions"] == 0 and report["missing_functions"] == 0
    assert detail["builds"][0]["speedup"] is None and package["speedup"] is None  # no benchmark: unmeasured
    probe = tmp_path / "probe"
    probe.mkdir()
    run_hello(pgod.root / "profile" / "bin" / "hello-pgo", 3, {"LLVM_PROFILE_FILE": f"{probe}/%p.profraw"})
    assert os.listdir(probe) == []


def test_the_two_stage_loop_puts_the_cs_build_in_use_and_builds_the_final_from_both_profiles(pgod):
    profiling = nix_build("profiling", pgod.spool)
    pgod.write_config({"hello": {
        "profile_build": [profiling], "build": build_argv(pgod.spool), "cs_build": cs_build_argv(pgod.spool),
        "threshold_mb": THRESHOLD_MB, "cs_threshold_mb": THRESHOLD_MB,
    }}, activation="auto")
    daemon = pgod.daemon()
    assert daemon.package("hello")["stage"] == "first"
    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    staged = wait_for(lambda: (p := daemon.package("hello"))["stage"] == "context-sensitive" and p, 180,
                      "the context-sensitive build in use")
    assert staged["state"] == "profiling" and staged["stages"] == 2 and staged["optimized"] is None
    in_use = pgod.root / "profile" / "bin" / "hello-pgo"
    assert staged["in_use"] == staged["stage_build"]
    wait_for(lambda: os.path.realpath(in_use).startswith(staged["stage_build"]), 30, "the stage's build linked in place")
    manifest = json.loads((Path(staged["stage_build"]) / "nix-support" / "pgo.json").read_text())
    assert (manifest["variant"], manifest["instrumentation"]) == ("cs-profile", "cs-ir")

    # A first-stage program still running somewhere: its profile is kept out of the stage's
    # profile, with the reason.
    run_hello(Path(profiling) / "bin" / "hello-pgo", 1)
    left_out = wait_for(lambda: (p := daemon.package("hello"))["quarantined"] == 2 and p, 60, "the first-stage profile refused")
    reasons = {q["reason"] for q in json.loads(daemon.pgoctl("show", "hello", "--json").stdout)["quarantine"]}
    assert reasons == {"first-stage-profile"} and left_out["files"] == 0
    # The programs users now run are the stage's: their profiles are attributed and counted.
    run_hello(in_use, 20)
    final = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "the final build active")
    assert final["stage"] == "context-sensitive" and os.path.realpath(in_use).startswith(final["optimized"])
    builds = json.loads(daemon.pgoctl("show", "hello", "--json").stdout)["builds"]
    assert [(b["stage"], b["status"]) for b in reversed(builds)] == [("cs-profile", "succeeded"), ("optimize", "succeeded")]
    # The final profile holds both levels: the first stage's IR counts, exactly as the stage's
    # build was made from them, and the CS stage's.
    used = builds[0]["profile"]
    assert functions(show(used)) > 0 and functions(show(used, "--showcs")) > 0
    assert show(used, "--all-functions", "--counts") == show(builds[1]["profile"], "--all-functions", "--counts")
    report = json.loads((Path(final["optimized"]) / "nix-support" / "pgo-warnings.json").read_text())
    assert report["mismatched_functions"] == 0


def slow_and_fast_builds(tmp_path: Path) -> tuple[str, str]:
    """Two store paths whose bin/work prints the same, one of them ten times slower."""
    made = []
    for name, loops in (("fast", 20_000), ("slow", 200_000)):
        folder = tmp_path / f"work-{name}" / "bin"
        folder.mkdir(parents=True)
        script = folder / "work"
        script.write_text(f"#!/bin/sh\ni=0\nwhile [ $i -lt {loops} ]; do i=$((i+1)); done\necho done\n")
        script.chmod(0o755)
        made.append(subprocess.run(["nix-store", "--add", str(folder.parent)], check=True, capture_output=True,
                                   text=True).stdout.strip())
    return made[0], made[1]


@pytest.mark.parametrize("candidate_is", ["slow", "fast"])
def test_the_gate_activates_a_faster_build_and_refuses_a_slower_one(pgod, tmp_path, workload, llvm_profdata_14, candidate_is):
    fast, slow = slow_and_fast_builds(tmp_path)
    candidate, baseline = (slow, fast) if candidate_is == "slow" else (fast, slow)
    pgod.write_config({"workload": {
        "profile_build": [str(workload)], "build": ["echo", candidate], "threshold_mb": 0.0001,
        "llvm_profdata": llvm_profdata_14,
        "benchmark": ["{bin}/bin/work"], "baseline_build": baseline, "benchmark_rounds": 5,
    }}, activation="auto")
    daemon = pgod.daemon()
    subprocess.run([str(workload / "bin" / "workload"), "3", "x"], check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": f"{pgod.spool}/%p.profraw"})
    expected = "rejected" if candidate_is == "slow" else "active"
    package = wait_for(lambda: (p := daemon.package("workload"))["state"] == expected and p, 120, f"the build {expected}")
    figures = package["benchmark"]
    assert figures["rounds"] == 5 and len(figures["baseline_seconds"]) == len(figures["candidate_seconds"]) == 5
    assert figures["baseline_median_seconds"] > 0 and figures["candidate_median_seconds"] > 0
    build = json.loads(daemon.pgoctl("show", "workload", "--json").stdout)["builds"][0]
    assert build["speedup"] == pytest.approx(figures["speedup"])
    if candidate_is == "slow":
        # The refused candidate's figure is in `benchmark`; `speedup` is the usable build's: none.
        assert figures["verdict"] == "rejected" and figures["speedup"] < 1.0 and package["speedup"] is None
        assert package["active"] is False and package["optimized"] is None
        assert build["status"] == "rejected" and "below min_speedup 1" in build["error"]
        assert not (pgod.root / "profile").exists() or not (pgod.root / "profile" / "bin" / "work").exists()
    else:
        assert figures["verdict"] == "accepted" and package["speedup"] == figures["speedup"] > 1.0
        assert package["active"] is True and package["optimized"] == candidate
        assert os.path.realpath(pgod.root / "profile" / "bin" / "work").startswith(candidate)


def test_a_stage_build_that_cannot_be_linked_in_place_at_once_is_linked_when_it_can(pgod):
    """Until the stage's build is in place, users run the first stage's programs, whose
    profiles the stage refuses: a failed placement is retried, not left until the next start.
    The cs_build itself makes the profile's folder immutable once it has built, so the first
    placement fails for real (nix-env cannot write there, even as root)."""
    profiling = nix_build("profiling", pgod.spool)
    profiles = pgod.root / "profiles"
    profiles.mkdir()
    locking_cs_build = ["sh", "-c", 'out=$("$@") && chattr +i "$0" && echo "$out"', str(profiles), *cs_build_argv(pgod.spool)]
    pgod.write_config({"hello": {
        "profile_build": [profiling], "build": build_argv(pgod.spool), "cs_build": locking_cs_build,
        "threshold_mb": THRESHOLD_MB, "cs_threshold_mb": 100,
    }}, activation="auto", profile_link=str(profiles / "optimized"), build_retry_seconds=1)
    daemon = pgod.daemon()
    try:
        run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
        stuck = wait_for(lambda: (p := daemon.package("hello"))["last_error"] and p, 180, "the placement failing")
        assert stuck["stage"] == "context-sensitive" and "putting the context-sensitive build in use" in stuck["last_error"]
        assert not (profiles / "optimized").exists()
        # A restart meanwhile forgets nothing: the new daemon tries again too.
        assert daemon.stop() == 0
        daemon = pgod.daemon()
        assert daemon.package("hello")["last_error"].startswith("putting the context-sensitive build in use")
    finally:
        subprocess.run(["chattr", "-i", str(profiles)], check=True)
    in_use = profiles / "optimized" / "bin" / "hello-pgo"
    wait_for(lambda: os.path.realpath(in_use).startswith(stuck["stage_build"]), 30, "the stage's build linked in place")
    assert wait_for(lambda: (p := daemon.package("hello"))["last_error"] is None and p, 30, "the error cleared")["state"] == "profiling"


def test_an_upgrade_mid_stage_takes_the_stage_build_out_and_starts_again_at_the_first_stage(pgod):
    profiling = nix_build("profiling", pgod.spool)
    pgod.write_config({"hello": {
        "profile_build": [profiling], "build": build_argv(pgod.spool), "cs_build": cs_build_argv(pgod.spool),
        "threshold_mb": THRESHOLD_MB, "cs_threshold_mb": 100,
    }}, activation="auto")
    daemon = pgod.daemon()
    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    wait_for(lambda: daemon.package("hello")["stage"] == "context-sensitive", 180, "the second stage")
    in_use = pgod.root / "profile" / "bin" / "hello-pgo"
    wait_for(in_use.exists, 30, "the stage's build linked in place")
    assert daemon.stop() == 0

    upgraded = nix_build("profiling", pgod.spool, tweak=True)
    # The carried profile is built from at once: a failing cs_build keeps the package in its
    # first stage for the test to see.
    pgod.write_config({"hello": {
        "profile_build": [upgraded], "build": build_argv(pgod.spool, tweak=True), "cs_build": ["false"],
        "threshold_mb": 100,
    }}, activation="auto")
    daemon = pgod.daemon()
    package = daemon.package("hello")
    assert (package["stage"], package["stage_build"], package["in_use"]) == ("first", None, None)
    assert package["state"] in ("stale", "building", "failed") and package["threshold_bytes"] == 100 * 1024 * 1024
    wait_for(lambda: not in_use.exists(), 30, "the old version's stage build out of the profile")


def test_profiles_of_another_instrumentation_kind_are_never_mixed(pgod):
    """A package switched from front-end to IR instrumentation: the front-end profile is set
    aside, not carried forward, and the IR build's profiles start a profile of their own."""
    front_end = nix_build("profilingFe", pgod.spool)
    pgod.write_config({"hello": {"profile_build": [front_end], "build": ["false"], "threshold_mb": 100}})
    daemon = pgod.daemon()
    run_hello(Path(front_end) / "bin" / "hello-pgo", 3)
    old = wait_for(lambda: (p := daemon.package("hello"))["total_files"] == 6 and p, 60, "front-end profiles merged")
    assert old["instrumentation"] == "fe" and show(old["profile"]).startswith("Instrumentation level: Front-end")
    assert daemon.stop() == 0

    ir = nix_build("profiling", pgod.spool)
    pgod.write_config({"hello": {"profile_build": [ir], "build": ["false"], "threshold_mb": 100}})
    daemon = pgod.daemon()
    package = daemon.package("hello")
    assert package["instrumentation"] == "ir" and package["profile"] is None
    assert "profile.kind_changed" in daemon.log()
    run_hello(Path(ir) / "bin" / "hello-pgo", 3)
    new = wait_for(lambda: (p := daemon.package("hello"))["files"] == 6 and p["profile"] and p, 60, "IR profiles merged")
    assert show(new["profile"]).startswith("Instrumentation level: IR")
    assert new["quarantined"] == 0


def test_a_raw_profile_of_the_other_kind_is_left_out_of_a_merge(tmp_path, clang14):
    """llvm-profdata would merge a front-end raw profile into an IR profile without a word:
    the merge's input gathering refuses it, with a reason, and keeps the IR one."""
    from testbed.clangs import run_instrumented
    from testbed.programs import WORKLOAD_C
    from pgod.merge.confined import MergeInput, gather_inputs

    source = tmp_path / "workload.c"
    source.write_text(WORKLOAD_C)
    raws = {}
    for kind, ir in (("fe", False), ("ir", True)):
        exe = clang14.compile(source, tmp_path / f"workload-{kind}", ir=ir)
        run_instrumented(exe, ["3", "x"], tmp_path / f"{kind}.profraw")
        raws[kind] = str(tmp_path / f"{kind}.profraw")
    inputs = [MergeInput(path, os.path.getsize(path), None) for path in raws.values()]
    gathered = gather_inputs(inputs, {}, kind="ir")
    try:
        assert gathered.rejected == {raws["fe"]: (
            "instrumentation-mismatch", "a fe raw profile for a package whose profile is ir: kinds are never merged together",
        )}
        assert gathered.size == os.path.getsize(raws["ir"])
    finally:
        gathered.close()


def test_after_an_upgrade_a_rejected_build_leaves_the_old_versions_build_out_of_reach(pgod, tmp_path, workload, llvm_profdata_14):
    fast, slow = slow_and_fast_builds(tmp_path)
    # The workload has no pgo.json naming its llvm-profdata: the config does (a new machine has
    # no unversioned llvm-profdata on PATH).
    config = {"profile_build": [str(workload)], "build": ["echo", fast], "threshold_mb": 0.0001,
              "llvm_profdata": llvm_profdata_14,
              "benchmark": ["{bin}/bin/work"], "baseline_build": slow}
    pgod.write_config({"workload": config}, activation="auto")
    daemon = pgod.daemon()
    subprocess.run([str(workload / "bin" / "workload"), "3", "x"], check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": f"{pgod.spool}/%p.profraw"})
    wait_for(lambda: daemon.package("workload")["state"] == "active", 120, "the first build active")
    assert daemon.stop() == 0

    # A new version (another profiling build path), whose build the gate refuses.
    upgraded = tmp_path / "workload-2"
    shutil.copytree(workload, upgraded)
    slower = slow_and_fast_builds(tmp_path / "slower")[1]
    pgod.write_config({"workload": {**config, "profile_build": [str(upgraded)], "build": ["echo", slower],
                                    "baseline_build": fast}}, activation="auto")
    daemon = pgod.daemon()
    package = wait_for(lambda: (p := daemon.package("workload"))["state"] == "rejected" and p, 120, "the new build refused")
    assert package["active"] is False
    refused = daemon.pgoctl("activate", "workload", check=False)
    assert refused.returncode == 1 and "no optimized build for its current version" in refused.stderr
