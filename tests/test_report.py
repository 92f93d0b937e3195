"""`pgoctl report`: a real report from a real profile, its figures held against llvm-profdata's own."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from test_layers import client_side_loads, run_with_import_list

from testbed.clangs import run_instrumented
from testbed.daemon import wait_for

PROGRAM_C = Path(__file__).parent / "programs" / "report_workload.c"
RUNS = [["3", "alpha"], ["7", "banana"], ["5", "x"], ["40", "aeiou aeiou"], ["2", ""], ["11", "report"]]
TOP = 5
FUNCTIONS = 11  # in report_workload.c


@pytest.fixture(scope="module")
def program(tmp_path_factory, clang14) -> Path:
    """An instrumented program in a folder of its own (the package's profile_build)."""
    root = tmp_path_factory.mktemp("report-program")
    (root / "bin").mkdir()
    clang14.compile(PROGRAM_C, root / "bin" / "report-workload")
    return root


def profdata_text(profdata: str, *args: str) -> str:
    return subprocess.run([profdata, *args], capture_output=True, text=True, check=True, timeout=60).stdout


def functions_of(show: str) -> dict[str, list[int]]:
    """name → every counter, from `show --all-functions --counts` (read here on its own, not
    with pgod's parser, so the report's reading is checked, not repeated)."""
    found, name = {}, None
    for line in show.splitlines():
        if re.fullmatch(r"  \S.*:", line):
            name = line.strip()[:-1]
        elif name and (m := re.fullmatch(r"    Function count: (\d+)", line)):
            found[name] = [int(m.group(1))]
        elif name and (m := re.fullmatch(r"    Block counts: \[(.*)\]", line)):
            found[name] += [int(v) for v in m.group(1).split(",") if v.strip()]
    return found


def summary_figure(text: str, key: str) -> int:
    return int(re.search(rf"^{re.escape(key)}: (\d+)", text, re.M).group(1))


def state_listing(state: Path) -> dict[str, tuple[int, int]]:
    """Every file under the state folder with its size and modification time."""
    listing = {}
    for folder, _dirs, files in os.walk(state):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            listing[os.path.relpath(os.path.join(folder, name), state)] = (info.st_size, info.st_mtime_ns)
    return listing


def report(daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return daemon.pgoctl("report", *args, check=check)


def test_report_figures_match_llvm_profdata_with_and_without_the_daemon(pgod, program, llvm_profdata_14, tmp_path):
    pgod.write_config({"prog": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    exe = program / "bin" / "report-workload"
    for args in RUNS:
        run_instrumented(exe, args, pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("prog")["total_files"] == len(RUNS), 60, "every run merged")

    out = tmp_path / "report"
    done, loaded = run_with_import_list(daemon, "report", "prog", "--config", str(pgod.config_path), "--output", str(out), "--top", str(TOP))
    assert done.returncode == 0, done.stderr[-2000:]
    # The report reads the state itself: none of the daemon's code, no pyelftools (test_layers.py).
    assert {"pgod.report.collect", "pgod.report.charts"} <= loaded and client_side_loads(loaded) == []
    assert done.stdout.strip().splitlines()[-1] == f"report: {out}"
    document = json.loads((out / "report.json").read_text())
    package = document["packages"][0]
    assert package["name"] == "prog" and package["llvm_profdata"] == llvm_profdata_14
    profile = package["profile"]["path"]
    assert profile == daemon.package("prog")["profile"]

    # Every figure against llvm-profdata's own output for the same file.
    show = profdata_text(llvm_profdata_14, "show", profile)
    counts = functions_of(profdata_text(llvm_profdata_14, "show", "--all-functions", "--counts", profile))
    assert len(counts) == summary_figure(show, "Total functions") == package["profile"]["total_functions"] == FUNCTIONS
    assert package["profile"]["maximum_function_count"] == summary_figure(show, "Maximum function count")
    assert package["profile"]["maximum_internal_block_count"] == summary_figure(show, "Maximum internal block count")
    # `show --covered` lists the functions that ran, one name a line.
    covered = profdata_text(llvm_profdata_14, "show", "--covered", profile).split()
    coverage = package["coverage"]
    assert coverage["covered_functions"] == len(covered) == sum(1 for c in counts.values() if any(c))
    assert set(coverage["never_run"]) == set(counts) - set(covered)
    assert coverage["instrumented_functions"] == FUNCTIONS
    assert {n.split(":")[-1] for n in coverage["never_run"]} >= {"never_a", "never_b", "never_c", "only_for_big"}

    hot = package["hot_functions"]
    everything = sum(sum(c) for c in counts.values())
    self_overlap = profdata_text(llvm_profdata_14, "overlap", profile, profile)
    assert hot["total_count"] == everything == int(re.search(r"base count sum: (\d+)", self_overlap).group(1))
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1]), item[0]))
    assert [(f["name"], f["total_count"]) for f in hot["functions"]] == [(n, sum(c)) for n, c in ranked[:TOP]]
    assert hot["functions"][0]["name"].endswith("hot_loop")
    for listed, (_name, values) in zip(hot["functions"], ranked):
        assert listed["share"] == pytest.approx(sum(values) / everything)
        assert listed["function_count"] == values[0] and listed["max_count"] == max(values)
    cumulative = 0
    for needed, (_name, values) in enumerate(ranked, start=1):
        cumulative += sum(values)
        if cumulative >= 0.9 * everything:
            break
    assert hot["functions_for_share"] == needed
    # `show --topn` ranks by the largest counter: the same functions, the same maxima.
    topn = profdata_text(llvm_profdata_14, "show", f"--topn={len(counts)}", profile)
    maxima = dict(re.findall(r"^  (\S+), max count = (\d+)$", topn, re.M))
    assert {n: int(v) for n, v in maxima.items()} == {n: max(c) for n, c in counts.items()}

    growth = package["growth"]
    assert growth["total_files"] == len(RUNS) and growth["points"][-1]["total_files"] == len(RUNS)
    assert growth["points"][-1]["generation"] == package["profile"]["generation"]
    assert package["change_since_build"] == {"unavailable": "no optimized build yet"}
    assert package["builds"] == [] and package["profile_match"] is None

    # The folder: a person's text, a script's JSON, charts in both formats.
    assert package["charts"] == {"growth": {"svg": "prog-growth.svg", "png": "prog-growth.png"},
                                 "hot_functions": {"svg": "prog-hot-functions.svg", "png": "prog-hot-functions.png"}}
    for chart in package["charts"].values():
        assert (out / chart["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / chart["svg"]).read_text()[:2000]
    analysis = (out / "ANALYSIS.md").read_text()
    assert f"{hot['functions_for_share']} of {FUNCTIONS} functions hold 90 %" in analysis
    assert f"{coverage['covered_functions']} of {FUNCTIONS} instrumented functions ran" in analysis
    assert "prog-hot-functions.svg" in analysis and "prog-growth.svg" in analysis

    # --json: report.json's content on stdout.
    as_json = json.loads(report(daemon, "--config", str(pgod.config_path), "--output", str(tmp_path / "j"), "--json").stdout)
    assert [p["name"] for p in as_json["packages"]] == ["prog"]
    assert as_json == json.loads((tmp_path / "j" / "report.json").read_text())
    assert as_json["packages"][0]["hot_functions"]["functions"][:TOP] == hot["functions"]

    # The daemon stopped: the same figures, from the state folder alone, which stays untouched.
    assert daemon.stop() == 0
    before = state_listing(pgod.state)
    offline = tmp_path / "offline"
    done = report(daemon, "prog", "--state-dir", str(pgod.state), "--config", str(pgod.config_path),
                  "--output", str(offline), "--top", str(TOP))
    assert done.returncode == 0, done.stderr
    after = state_listing(pgod.state)
    # Only SQLite's shared-memory index of the WAL may see a reader's locks; nothing is created.
    assert after.keys() == before.keys(), "the report created or removed files in the state folder"
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {k: v for k, v in before.items() if not k.endswith("-shm")}
    again = json.loads((offline / "report.json").read_text())["packages"][0]
    for key in ("profile", "hot_functions", "coverage", "growth", "builds"):
        assert again[key] == package[key], key


@pytest.fixture
def merge_user_only_profdata(llvm_profdata_14):
    """An llvm-profdata that works only as the merge user: any other uid gets exit 3 and a line
    naming it. In a root-owned folder the merge user can enter (pytest's tmp_path is 0700)."""
    import pwd
    import tempfile

    try:
        merge_uid = pwd.getpwnam("pgod-merge").pw_uid
    except KeyError:
        pytest.fail("no user pgod-merge: scripts/install-deps.sh creates it")
    folder = Path(tempfile.mkdtemp(prefix="pgod-report-tool-", dir="/tmp"))
    folder.chmod(0o755)
    tool = folder / "llvm-profdata"
    tool.write_text(f"#!/bin/sh\n[ \"$(id -u)\" = {merge_uid} ] || {{ echo \"ran as uid $(id -u)\" >&2; exit 3; }}\n"
                    f"exec {llvm_profdata_14} \"$@\"\n")
    tool.chmod(0o755)
    yield str(tool)
    shutil.rmtree(folder)


def test_report_run_as_root_runs_llvm_profdata_as_the_merge_user(pgod, program, merge_user_only_profdata, tmp_path):
    """A merged profile is still what llvm-profdata made of files any user wrote: the report,
    run as root, parses it as the daemon's merge user, as merges do."""
    if os.geteuid() != 0:
        pytest.skip("the report drops privileges only when run as root (make test runs as root)")
    pgod.write_config({"prog": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": merge_user_only_profdata}})
    daemon = pgod.daemon()
    for args in RUNS[:2]:
        run_instrumented(program / "bin" / "report-workload", args, pgod.spool / "%p.profraw")
    wait_for(lambda: daemon.package("prog")["total_files"] == 2, 60, "both runs merged (by the merge user)")
    done = report(daemon, "prog", "--config", str(pgod.config_path), "--output", str(tmp_path / "report"), check=False)
    assert done.returncode == 0, done.stderr
    package = json.loads((tmp_path / "report" / "report.json").read_text())["packages"][0]
    assert package["profile"]["total_functions"] == FUNCTIONS


def test_report_usage_errors_exit_2_naming_the_argument(pgod, program, llvm_profdata_14, tmp_path):
    pgod.write_config({"prog": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    unknown = report(daemon, "nosuch", "--config", str(pgod.config_path), "--output", str(tmp_path / "r"), check=False)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    missing = report(daemon, "--config", str(tmp_path / "absent.toml"), check=False)
    assert missing.returncode == 2 and "absent.toml" in missing.stderr
    no_state = report(daemon, "--state-dir", str(tmp_path / "nothing-here"), "--config", str(pgod.config_path), check=False)
    assert no_state.returncode == 2 and "--state-dir" in no_state.stderr
    zero = report(daemon, "--top", "0", "--config", str(pgod.config_path), check=False)
    assert zero.returncode == 2
    # A package with no profile yet still gets its report, saying so.
    empty = report(daemon, "prog", "--config", str(pgod.config_path), "--output", str(tmp_path / "r"))
    assert empty.returncode == 0
    assert "No merged profile yet" in (tmp_path / "r" / "ANALYSIS.md").read_text()


@pytest.mark.skipif(not Path("/usr/bin/nix-build").exists(), reason="nix-build not installed (apt-get install nix-bin)")
def test_report_after_a_real_optimized_build_shows_change_match_builds_and_generation(pgod, tmp_path):
    from test_closed_loop import configure, nix_build, run_hello

    from pgod.optimize.nixstore import profile_generation

    profiling = nix_build("profiling", pgod.spool)
    configure(pgod, profiling, "auto")
    daemon = pgod.daemon()
    run_hello(Path(profiling) / "bin" / "hello-pgo", 20)
    active = wait_for(lambda: (p := daemon.package("hello"))["state"] == "active" and p, 180, "optimized build active")
    # More runs after the build (each a program and a library part), below the next threshold.
    run_hello(Path(profiling) / "bin" / "hello-pgo", 5)
    wait_for(lambda: daemon.package("hello")["total_files"] == 50, 60, "all 25 runs merged")

    out = tmp_path / "report"
    document = json.loads(report(daemon, "hello", "--config", str(pgod.config_path), "--output", str(out), "--json").stdout)
    package = document["packages"][0]
    profdata = package["llvm_profdata"]
    manifest = json.loads((Path(profiling) / "nix-support" / "pgo.json").read_text())
    assert profdata == manifest["llvm_profdata"], "the llvm-profdata the profiling build's pgo.json names"
    current = package["profile"]["path"]
    builds = json.loads(daemon.pgoctl("show", "hello", "--json").stdout)["builds"]
    assert len(package["builds"]) == len(builds) == 1
    build = package["builds"][0]
    assert (build["id"], build["status"], build["out_path"]) == (builds[0]["id"], "succeeded", active["optimized"])
    assert build["seconds"] == pytest.approx(builds[0]["finished_at"] - builds[0]["started_at"], abs=0.1)
    assert build["speedup"] is None and build["speedup_text"] == "unmeasured"

    # The change since the build: for a one-level profile, what llvm-profdata's overlap says (pgod
    # computes it from the per-function counts; test_report_overlap.py has the two-level case).
    change = package["change_since_build"]
    assert change["base_profile"] == builds[0]["profile"] and change["build"] == build["id"]
    overlap = profdata_text(profdata, "overlap", builds[0]["profile"], current)
    tools = float(re.search(r"Edge profile overlap: ([\d.]+)%", overlap).group(1))
    assert change["overlap_percent"] == pytest.approx(tools, abs=0.002)
    assert change["context_sensitive"] is None
    assert 0 < change["changed_percent"] < 100
    assert change["current_count_sum"] == int(re.search(r"test count sum: (\d+)", overlap).group(1))

    # How well the build matched: the adapter's own record, as written.
    warnings = json.loads((Path(active["optimized"]) / "nix-support" / "pgo-warnings.json").read_text())
    match = package["profile_match"]
    for key in ("profile", "profile_functions", "mismatched_functions", "missing_functions", "unprofiled_files"):
        assert match[key] == warnings[key], key

    activation = package["activation"]
    assert activation["in_use"] is True and activation["current"] == profile_generation(pgod.root / "profile") == 1
    assert activation["rollback"] == "pgoctl rollback"
    growth = package["growth"]
    assert growth["builds"][0]["profile_generation"] == builds[0]["profile_generation"]
    assert growth["points"][-1]["total_files"] == 50 and len(growth["points"]) >= 2
    analysis = (out / "ANALYSIS.md").read_text()
    assert f"**{change['changed_percent']:.3f} %** of the profile changed" in analysis
    assert "unmeasured" in analysis and "nothing to roll back to" in analysis
    assert (out / "hello-growth.png").exists() and (out / "hello-hot-functions.svg").exists()

    # A build record with a measured speedup (the column the benchmark gate writes) is shown as such.
    assert daemon.stop() == 0
    copy = tmp_path / "state-copy"
    copy.mkdir()
    for name in ("pgod.sqlite", "pgod.sqlite-wal", "pgod.sqlite-shm"):
        if (pgod.state / name).exists():
            shutil.copy2(pgod.state / name, copy / name)
    with sqlite3.connect(copy / "pgod.sqlite") as db:
        db.execute("UPDATE builds SET speedup = 1.174")
    measured = tmp_path / "measured"
    report(daemon, "hello", "--state-dir", str(copy), "--config", str(pgod.config_path), "--output", str(measured))
    build = json.loads((measured / "report.json").read_text())["packages"][0]["builds"][0]
    assert (build["speedup"], build["speedup_text"]) == (1.174, "1.17x")
    assert "| 1.17x |" in (measured / "ANALYSIS.md").read_text()


def test_llvm_profdata_runs_are_bounded_in_time_and_output():
    from pgod.profiles.tool import ToolError, run_tool

    with pytest.raises(ToolError, match="printed more than 1 MiB"):
        run_tool(["yes", "a line that llvm-profdata could print"], max_bytes=1 << 20)
    started = time.monotonic()
    with pytest.raises(ToolError, match="ran past 1 s"):
        run_tool(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10
    with pytest.raises(ToolError, match="exited 1"):
        run_tool(["false", "x"])


def test_a_user_who_cannot_read_the_state_gets_exit_4(pgod, program, llvm_profdata_14, tmp_path):
    pgod.write_config({"prog": {"profile_build": [str(program)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    assert daemon.stop() == 0
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *daemon.pgoctl_argv()]
    if subprocess.run([*argv, "--help"], capture_output=True, env=daemon.env()).returncode != 0:
        pytest.skip("uid nobody cannot run this pgoctl (its venv is in a folder only root may enter)")
    os.chmod(pgod.state, 0o700)
    done = subprocess.run([*argv, "report", "--state-dir", str(pgod.state), "--output", "/nonexistent/never-written"], capture_output=True, text=True, env=daemon.env())
    assert done.returncode == 4, done.stderr
    assert "permission denied" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ir", [False, True], ids=["front-end", "ir"])
@pytest.mark.parametrize("version", [13, 14, 16, 19])
def test_show_and_overlap_are_read_alike_from_every_llvm_release(version, ir, tmp_path):
    """The parser of report_tool against each installed release's own figures, for both kinds
    of instrumentation: the functions, their counts summed, what ran."""
    from conftest import require_clang

    from pgod.profiles.tool import parse_overlap, parse_show, percent, run_tool

    clang = require_clang(version)
    exe = clang.compile(PROGRAM_C, tmp_path / "prog", ir=ir)
    for number, args in enumerate(RUNS[:3]):
        run_instrumented(exe, args, tmp_path / f"run{number}.profraw")
    profile = tmp_path / "merged.profdata"
    subprocess.run([str(clang.profdata), "merge", "-o", str(profile), *map(str, tmp_path.glob("run*.profraw"))], check=True)
    shown = parse_show(run_tool([str(clang.profdata), "show", "--all-functions", "--counts", str(profile)]))
    # IR instrumentation comes after clang's early inlining: fewer functions are left.
    assert len(shown.functions) == int(shown.summary["Total functions"].split()[0]) >= (1 if ir else FUNCTIONS)
    overlap = parse_overlap(run_tool([str(clang.profdata), "overlap", str(profile), str(profile)]))
    assert percent(overlap["Edge profile overlap"]) == 100.0
    assert sum(f.total for f in shown.functions) == int(overlap["Edge profile base count sum"])
    if version >= 14:  # `show --covered` came with LLVM 14
        covered = profdata_text(str(clang.profdata), "show", "--covered", str(profile)).split()
        assert sorted(f.name for f in shown.functions if any(f.counters)) == sorted(covered)
