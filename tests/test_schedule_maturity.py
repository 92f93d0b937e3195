"""When to build, by the profile (pgod/schedule/maturity.py), with the real daemon, real clang 14
profiles and real llvm-profdata: the first build waits until the profile has settled; a package
whose profile stopped changing is not rebuilt at the next threshold; one whose workload changed
is; status and `pgoctl show` say why a package waits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.clangs import run_instrumented
from testbed.daemon import wait_for
from testbed.programs import workload_inputs

pytestmark = pytest.mark.skipif(not Path("/usr/bin/nix-store").exists(), reason="nix-store not installed (apt-get install nix-bin)")

SAME = ["27", "hello 42"]  # one input, run again and again: a profile that stops changing
CHANGED = ["97", "0123456789" * 40]  # another mix: the digits branch of classify() dominates


def _store_path(tmp_path: Path) -> str:
    folder = tmp_path / "optimized" / "bin"
    folder.mkdir(parents=True)
    (folder / "workload").write_text("#!/bin/sh\necho optimized\n")
    (folder / "workload").chmod(0o755)
    return subprocess.run(["nix-store", "--add", str(folder.parent)], check=True, capture_output=True,
                          text=True).stdout.strip()


def _run_size(workload: Path, tmp_path: Path) -> int:
    probe = tmp_path / "probe"
    probe.mkdir()
    run_instrumented(workload / "bin" / "workload", SAME, probe / "one.profraw")
    return (probe / "one.profraw").stat().st_size


def _show(daemon) -> dict:
    return json.loads(daemon.pgoctl("show", "workload", "--json").stdout)


def _runs(pgod, daemon, workload: Path, inputs: list[list[str]]) -> dict:
    """Run the program once per input, wait until all are merged and a checkpoint measured the
    profile they made; the package's detail then."""
    before = daemon.package("workload")["total_files"]
    for args in inputs:
        run_instrumented(workload / "bin" / "workload", args, pgod.spool / "%p.profraw")

    def measured():
        document = _show(daemon)
        done = (document["total_files"] == before + len(inputs)
                and document["maturity"]["checkpoint_generation"] == document["profile_generation"])
        return document if done else None

    return wait_for(measured, 60, f"{len(inputs)} runs merged and measured", interval=0.2)


def _builds(document: dict) -> int:
    return len([b for b in document["builds"] if b["stage"] == "optimize"])


def test_a_profile_builds_once_settled_and_again_only_when_its_workload_changed(pgod, workload, llvm_profdata_14, tmp_path):
    size = _run_size(workload, tmp_path)
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["echo", _store_path(tmp_path)],
                      "llvm_profdata": llvm_profdata_14, "threshold_mb": 8 * size / 2**20}},
        settled_percent=1, rebuild_change_percent=5, build_idle_cpu_percent=100, build_on_battery=True,
    )
    daemon = pgod.daemon()

    # Varied inputs up to the threshold: each step moves the profile, so no build yet.
    document = None
    for chunk in range(4):
        document = _runs(pgod, daemon, workload, workload_inputs(8)[2 * chunk:2 * chunk + 2])
    assert document["raw_bytes"] >= document["threshold_bytes"]
    assert document["maturity"]["step_changed_percent"] > 1, document["maturity"]
    assert _builds(document) == 0 and not document["build_due"]
    assert document["waiting"].startswith("settling: "), document["waiting"]
    assert "build waits: settling: " in daemon.pgoctl("status").stdout
    assert "waiting:    settling: " in daemon.pgoctl("show", "workload").stdout

    # One input again and again: the steps shrink until the profile counts as settled.
    for _ in range(12):
        document = _runs(pgod, daemon, workload, [SAME, SAME])
        if _builds(document):
            break
    document = wait_for(lambda: (d := _show(daemon))["state"] == "ready" and d, 60, "the first build done")
    assert _builds(document) == 1
    assert "settled: " in daemon.log() and "building anyway" not in daemon.log()

    # The same mix past the next threshold: the profile is what the build was made from.
    for _ in range(5):
        document = _runs(pgod, daemon, workload, [SAME, SAME])
    assert document["raw_bytes"] >= document["threshold_bytes"]
    assert document["maturity"]["changed_since_build_percent"] < 5, document["maturity"]
    assert document["waiting"].startswith("unchanged: "), document["waiting"]
    assert _builds(document) == 1 and not document["build_due"]
    assert "build waits: unchanged: " in daemon.pgoctl("status").stdout

    # The workload changes: its profile moves away from the build's, and it builds again.
    for _ in range(3):
        document = _runs(pgod, daemon, workload, [CHANGED, CHANGED])
        if _builds(document) == 2:
            break
    document = wait_for(lambda: (d := _show(daemon))["state"] == "ready" and _builds(d) == 2 and d, 60,
                        "a second build for the changed workload")
    due = [json.loads(line) for line in daemon.log().splitlines() if '"build.due"' in line]
    assert len(due) == 2 and due[1]["why"].startswith("changed "), due
    assert document["checkpoints"] and document["checkpoints"][0]["count_sum"] > 0

    # The report charts and tables the same checkpoints.
    out = tmp_path / "report"
    daemon.pgoctl("report", "workload", "--config", str(pgod.config_path), "--output", str(out))
    maturity = json.loads((out / "report.json").read_text())["packages"][0]["maturity"]
    assert maturity["settled_percent"] == 1 and maturity["rebuild_change_percent"] == 5
    assert maturity["points"][-1]["generation"] == document["checkpoints"][0]["generation"]
    assert max(p["since_build_changed"] or 0 for p in maturity["points"]) >= 5
    assert (out / "workload-maturity.svg").exists()
    assert "### Maturity: has the profile settled?" in (out / "ANALYSIS.md").read_text()


@pytest.mark.slow
def test_lua_on_the_demo_mix_is_not_rebuilt_until_its_mix_changes(pgod, llvm_profdata_14, tmp_path):
    """The same decisions for the demo's Lua, IR-instrumented by clang 14 (the sources and the
    build are benchmarks.maturity's, cached under demo-state/): after its first build, the demo's
    mix goes on past the next threshold and pgod does not rebuild; the mix changes to strings.lua
    and json.lua only (the demo workload's) and it does."""
    import random

    from benchmarks.maturity import build_lua, lua_mixes, lua_sources

    src, _version = lua_sources()
    package = tmp_path / "lua-profiling"
    (package / "bin").mkdir(parents=True)
    exe = package / "bin" / "lua"
    exe.write_bytes(build_lua(src, ["-O2", "-fprofile-generate"]).read_bytes())
    exe.chmod(0o755)
    mixes, draw = lua_mixes(exe), random.Random(22)
    pgod.write_config(
        {"lua": {"profile_build": [str(package)], "build": ["echo", _store_path(tmp_path)],
                 "llvm_profdata": llvm_profdata_14, "threshold_mb": 2}},
        settled_percent=1, rebuild_change_percent=5, build_idle_cpu_percent=100, build_on_battery=True,
    )
    daemon = pgod.daemon()

    def runs(mix: str, count: int) -> dict:
        before = daemon.package("lua")["total_files"]
        for _ in range(count):
            argv, _stdin = mixes[mix].draw(draw)
            subprocess.run(argv, env={"LLVM_PROFILE_FILE": str(pgod.spool / "%p.profraw")}, check=True,
                           stdout=subprocess.DEVNULL, cwd=tmp_path)
        return wait_for(lambda: (d := json.loads(daemon.pgoctl("show", "lua", "--json").stdout))["total_files"]
                        == before + count and d, 60, f"{count} Lua runs merged", interval=0.2)

    def builds(document: dict) -> int:
        return len([b for b in document["builds"] if b["stage"] == "optimize"])

    for _ in range(40):  # the first build: settled, or at 4x the threshold at the latest
        if builds(runs("demo", 6)):
            break
    wait_for(lambda: daemon.package("lua")["state"] == "ready", 60, "the first build done")

    for _ in range(20):  # the demo's mix again, past the next threshold: no rebuild
        document = runs("demo", 6)
        if document["raw_bytes"] >= document["threshold_bytes"] and (document["waiting"] or "").startswith("unchanged"):
            break
    assert (document["waiting"] or "").startswith("unchanged: "), (document["waiting"], document["maturity"])
    assert builds(document) == 1 and not document["build_due"]

    for _ in range(20):  # only strings.lua and json.lua: the profile moves away from the build's
        if builds(runs("strings+json", 6)) == 2:
            break
    due = [json.loads(line) for line in daemon.log().splitlines() if '"build.due"' in line]
    assert len(due) == 2 and due[1]["why"].startswith("changed "), due


@pytest.fixture
def profdata_that_cannot_show(llvm_profdata_14):
    """llvm-profdata whose `show` fails (merges work): a profile pgod cannot measure. In a folder
    the merge user can enter (pytest's tmp_path is 0700)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pgod-no-show-", dir="/tmp"))
    folder.chmod(0o755)
    tool = folder / "llvm-profdata"
    tool.write_text(f'#!/bin/sh\n[ "$1" = show ] && {{ echo "error: show refused" >&2; exit 1; }}\n'
                    f'exec {llvm_profdata_14} "$@"\n')
    tool.chmod(0o755)
    yield str(tool)
    shutil.rmtree(folder)


def test_a_profile_that_cannot_be_measured_is_retried_later_and_builds_at_the_ceiling(pgod, workload, tmp_path,
                                                                                     profdata_that_cannot_show):
    """A failing checkpoint is neither retried at every merge (a loop of llvm-profdata runs) nor
    allowed to hold the build for ever: past 4× the threshold the package builds unmeasured."""
    size = _run_size(workload, tmp_path)
    pgod.write_config(
        {"workload": {"profile_build": [str(workload)], "build": ["echo", _store_path(tmp_path)],
                      "llvm_profdata": profdata_that_cannot_show, "threshold_mb": 4 * size / 2**20}},
        settled_percent=1, rebuild_change_percent=5, build_idle_cpu_percent=100, build_on_battery=True,
    )
    daemon = pgod.daemon()
    for _ in range(12):  # 2 runs a merge, up to 6x the threshold
        before = daemon.package("workload")["total_files"]
        for args in [SAME, SAME]:
            run_instrumented(workload / "bin" / "workload", args, pgod.spool / "%p.profraw")
        wait_for(lambda: daemon.package("workload")["total_files"] == before + 2, 60, "2 runs merged", interval=0.2)
        if _builds(_show(daemon)):
            break
    wait_for(lambda: daemon.package("workload")["state"] == "ready", 60, "built unmeasured")
    log = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    due = [entry for entry in log if entry["event"] == "build.due"]
    assert len(due) == 1 and "building anyway" in due[0]["why"], due
    failed = [entry for entry in log if entry["event"] == "maturity.failed"]
    assert len(failed) == 1 and "show refused" in failed[0]["error"], failed  # one try, then 60 s of quiet
    assert _show(daemon)["maturity"]["checkpoint_generation"] == 0
