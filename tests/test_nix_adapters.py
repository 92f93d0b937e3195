"""The PGO stdenv adapters, built for real: a C program in its profiling and optimized variants.

nix-build runs the very adapters nixpkgs users get (stdenv-adapters/) over the fixture stdenv of
nix/tests/fixture (the host's clang 14, no nixpkgs needed); nix/tests/adapters.nix is the entry
point. The program, hello-pgo, links a shared library of its own. With live reporting (the
default) each run leaves one live file per module (live-<pid>-<hex>.profraw, its last snapshot),
each naming the build-id of its ELF file; with `live = null` the runtime's exit write leaves one
raw profile of two parts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.atomic import counter_updates
from testbed.clangs import elf_build_id
from testbed.live import is_locked
from pgod.intake.profraw import parse_profraw

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "nix" / "tests" / "adapters.nix"
CLANG = Path("/usr/bin/clang-14")
LLVM_PROFDATA = Path("/usr/bin/llvm-profdata-14")
# What the fixture's clang stdenv gives as its LLVM (Debian's prefix of LLVM 14).
FIXTURE_LLVM_PROFDATA = "/usr/lib/llvm-14/bin/llvm-profdata"


def _missing_tools() -> list[str]:
    missing = [name for name in ("nix-build", "nix-instantiate", "nix-store") if not shutil.which(name)]
    missing += [str(p) for p in (CLANG, LLVM_PROFDATA, Path("/usr/bin/gcc")) if not os.access(p, os.X_OK)]
    return missing


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_missing_tools()),
        reason=f"needs Nix and the host compilers the fixture stdenv uses; missing: {', '.join(_missing_tools())}",
    ),
]


def nix(tool: str, *args: str) -> str:
    """Run a Nix command on the adapters' entry point; its stdout, or a failure showing its stderr."""
    result = subprocess.run([tool, str(ENTRY), *args], capture_output=True, text=True)
    assert result.returncode == 0, f"{tool} {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def nix_eval(attr: str, *args: str):
    return json.loads(nix("nix-instantiate", "--eval", "--strict", "--json", "-A", attr, *args))


def nix_build(attr: str, link: Path, *args: str) -> dict[str, Path]:
    """Build `attr` with its out-link at `link`; the store path of each of its outputs."""
    nix("nix-build", "-A", attr, "-o", str(link), *args)
    outputs = nix_eval(f"{attr}.outputs", *args)
    return {name: Path(nix_eval(f"{attr}.{name}.outPath", *args)) for name in outputs}


def elf_files(roots) -> list[Path]:
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
                found.append(path)
    return found


def run_program(exe: Path, *, profile_file: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if profile_file is not None:
        env["LLVM_PROFILE_FILE"] = profile_file
    return subprocess.run([str(exe), "pgo"], env=env, capture_output=True, text=True, check=True)


def binary_ids(profraw: Path) -> set[str]:
    return {build_id for part in parse_profraw(profraw.read_bytes()) for build_id in part.binary_ids}


LIVE_NAME = re.compile(r"live-(\d+)-[0-9a-f]{32}\.profraw")


def live_runs(files) -> dict[int, list[Path]]:
    """The live files of ended runs by pid; fails on any other file or one still locked."""
    runs: dict[int, list[Path]] = {}
    for path in files:
        match = LIVE_NAME.fullmatch(path.name)
        assert match, f"{path.name} is not a live file"
        assert not is_locked(path), f"{path.name} is still locked after its program ended"
        runs.setdefault(int(match.group(1)), []).append(path)
    return runs


def one_module_each(files: list[Path]) -> list[str]:
    """The build-id of each live file, one part and one module per file."""
    ids = []
    for path in files:
        (part,) = parse_profraw(path.read_bytes())
        (build_id,) = part.binary_ids
        ids.append(build_id)
    return sorted(ids)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nix-adapters")


@pytest.fixture(scope="module")
def baked_spool(work) -> Path:
    spool = work / "baked-spool"
    spool.mkdir()
    return spool


@pytest.fixture(scope="module")
def profiling(work, baked_spool) -> dict[str, Path]:
    """The profiling variant, with the test's own spool baked in as the default profile path."""
    return nix_build("profile", work / "result-profile", "--argstr", "spoolDir", str(baked_spool))


@pytest.fixture(scope="module")
def manifest(profiling) -> dict:
    return json.loads((profiling["out"] / "nix-support" / "pgo.json").read_text())


@pytest.fixture(scope="module")
def raw_profiles(work, profiling) -> list[Path]:
    """Raw profiles of three runs of the instrumented program, written where LLVM_PROFILE_FILE says."""
    spool = work / "env-spool"
    spool.mkdir()
    for _ in range(3):
        run_program(profiling["out"] / "bin" / "hello-pgo", profile_file=f"{spool}/%p.profraw")
    return sorted(spool.iterdir())


@pytest.fixture(scope="module")
def merged_profile(work, raw_profiles) -> Path:
    """The raw profiles merged by llvm-profdata 14 and added to the store, as pgod does."""
    merged = work / "hello-pgo.profdata"
    subprocess.run([str(LLVM_PROFDATA), "merge", "-o", str(merged), *map(str, raw_profiles)], check=True)
    added = subprocess.run(["nix-store", "--add", str(merged)], check=True, capture_output=True, text=True)
    return Path(added.stdout.strip())


@pytest.fixture(scope="module")
def profile_functions(merged_profile) -> int:
    shown = subprocess.run(
        [str(LLVM_PROFDATA), "show", str(merged_profile)], check=True, capture_output=True, text=True
    ).stdout
    return int(next(line.split(":")[1] for line in shown.splitlines() if line.startswith("Total functions:")))


def test_flags_are_appended_to_what_the_package_sets():
    flags = nix_eval("flags")
    assert flags["env"].startswith("-DHELLO_PGO_GREETING_ID=42 ")
    # IR instrumentation by default, the spool's per-process name baked in past the driver (whose
    # own `-fprofile-generate=DIR` would name files default_%m.profraw: online merging).
    # Plain counters by default (atomic ones cost Lua 2.1× against 1.2×: benchmarks/README.md).
    assert flags["env"].split()[1:] == [
        "-fprofile-generate", "-Xclang", "-fprofile-instrument-path=/var/spool/pgod/%p.profraw",
    ]
    # Live reporting by default: the object built for this stdenv on every link, after the rest.
    link = flags["link"].split()
    assert link[:2] == ["-fprofile-generate", "-Wl,--build-id"]
    assert len(link) == 3 and re.fullmatch(r"/nix/store/[0-9a-z]{32}-pgod-live-object-60s/lib/pgod-live\.o", link[2])
    # An older package's top-level NIX_CFLAGS_COMPILE is extended in place, not shadowed by `env`.
    assert flags["topLevel"].startswith("-DTOP_LEVEL=1 -fprofile-generate ")
    # Front-end instrumentation, per package.
    assert "-fprofile-instr-generate=/var/spool/pgod/%p.profraw" in flags["feEnv"].split()


def test_counters_are_plain_by_default_and_atomic_on_clang_14_when_asked(work, profiling):
    """`atomicCounters = true` really makes them atomic on the fixture's clang 14, which ignores
    -fprofile-update=atomic with IR instrumentation: every counter update has a lock prefix."""
    expression = (f"(import {REPO}/stdenv-adapters {{ }}).withPgoProfile {{ atomicCounters = true; }}"
                  f" (import {REPO}/nix/tests/fixture {{ }}).clangStdenv")
    atomic = subprocess.run(
        ["nix-build", "-E", f"(import {REPO}/nix/tests/fixture {{ }}).hello.override {{ stdenv = {expression}; }}",
         "-o", str(work / "result-atomic")], capture_output=True, text=True,
    )
    assert atomic.returncode == 0, atomic.stderr[-4000:]
    plain_updates, plain_locked = counter_updates(profiling["out"] / "bin" / "hello-pgo")
    atomic_updates, atomic_locked = counter_updates(work / "result-atomic" / "bin" / "hello-pgo")
    assert plain_updates > 0 and plain_locked == 0
    assert atomic_updates > 0 and atomic_locked == atomic_updates


def test_pgo_json_lists_the_build_id_of_every_elf_file_in_every_output(profiling, manifest):
    assert set(profiling) == {"out", "lib"}
    elves = elf_files(profiling.values())
    assert {p.name for p in elves} == {"hello-pgo", "libhellowork.so"}
    assert manifest == {
        "version": 1,
        "name": "hello-pgo",
        "variant": "profile",
        "instrumentation": "ir",
        "llvm_profdata": FIXTURE_LLVM_PROFDATA,
        "live": {"dump_interval_s": 60},
        "build_ids": sorted(elf_build_id(p) for p in elves),
    }
    # Every output carries the same manifest, whichever of them pgod's config lists.
    for output in profiling.values():
        assert json.loads((output / "nix-support" / "pgo.json").read_text()) == manifest


def test_pgo_json_names_llvm_profdata_without_keeping_llvm_in_the_runtime_closure(work):
    """The manifest names the store's llvm-profdata, yet the package does not reference it.

    The LLVM is an input of the build, so Nix's reference scanner would find its hash in any
    output file that spells it: this checks the scanner really did not.
    """
    outputs = nix_build("profileWithStoreLlvm", work / "result-store-llvm")
    llvm = Path(nix_eval("storeLlvm.outPath"))
    drv = nix_eval("profileWithStoreLlvm.drvPath")
    build_inputs = subprocess.run(
        ["nix-store", "-q", "--references", drv], check=True, capture_output=True, text=True
    ).stdout.split()
    assert nix_eval("storeLlvm.drvPath") in build_inputs, "the LLVM must be an input of the build for this to mean anything"

    manifest = json.loads((outputs["out"] / "nix-support" / "pgo.json").read_text())
    assert manifest["llvm_profdata"] == f"{llvm}/bin/llvm-profdata"
    closure = subprocess.run(
        ["nix-store", "-q", "--requisites", *map(str, outputs.values())], check=True, capture_output=True, text=True
    ).stdout.split()
    assert str(llvm) not in closure


def test_profile_goes_where_llvm_profile_file_says_and_names_listed_build_ids(profiling, manifest, raw_profiles):
    """Three runs, each a live run per module: the program's and its library's, each file naming
    its own module's build-id only, unlocked once the program ended."""
    runs = live_runs(raw_profiles)
    assert len(runs) == 3
    exe_id = elf_build_id(profiling["out"] / "bin" / "hello-pgo")
    lib_id = elf_build_id(profiling["lib"] / "lib" / "libhellowork.so")
    for files in runs.values():
        assert one_module_each(files) == sorted([exe_id, lib_id])
    assert {exe_id, lib_id} <= set(manifest["build_ids"])


def test_without_the_environment_the_baked_in_spool_is_used(profiling, manifest, baked_spool):
    before = set(baked_spool.iterdir())
    exe = profiling["out"] / "bin" / "hello-pgo"
    process = subprocess.Popen([str(exe)], env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
    assert process.wait() == 0
    written = set(baked_spool.iterdir()) - before
    runs = live_runs(written)
    assert list(runs) == [process.pid] and len(runs[process.pid]) == 2
    assert set(one_module_each(runs[process.pid])) <= set(manifest["build_ids"])


def test_live_off_leaves_the_runtime_exit_write_and_says_so_in_pgo_json(work):
    """`live = null`: no object on the links, "live": null in pgo.json, and a run writes the
    runtime's own exit file: one raw profile of two parts at the %p name."""
    assert nix_eval("live.noLiveLink").split() == ["-fprofile-generate", "-Wl,--build-id"]
    assert nix_eval("live.false")["live"] is None and nix_eval("live.false")["liveObject"] is None
    built = nix_build("profileNoLive", work / "result-profile-no-live")
    manifest = json.loads((built["out"] / "nix-support" / "pgo.json").read_text())
    assert manifest["live"] is None
    spool = work / "no-live-spool"
    spool.mkdir()
    process = subprocess.Popen([str(built["out"] / "bin" / "hello-pgo")], env={"PATH": "/usr/bin:/bin", "LLVM_PROFILE_FILE": f"{spool}/%p.profraw"},
                               stdout=subprocess.DEVNULL)
    assert process.wait() == 0
    assert sorted(spool.iterdir()) == [spool / f"{process.pid}.profraw"]
    assert len(parse_profraw((spool / f"{process.pid}.profraw").read_bytes())) == 2
    assert binary_ids(spool / f"{process.pid}.profraw") == set(manifest["build_ids"])


def test_the_live_object_is_the_stdenvs_clang_uninstrumented_with_only_hidden_symbols(profiling):
    """Built by the package's own compiler, not instrumented (no counters of its own), every
    symbol local or hidden, the interval (60 s, or the one given) baked in."""
    assert nix_eval("live.objectCc") == "/usr/bin/clang-14"
    assert nix_eval("live.default")["live"] == {"dumpIntervalSeconds": 60}
    assert nix_eval("live.every5s")["live"] == {"dumpIntervalSeconds": 5}
    assert nix_eval("live.every5sLink").split()[-1].endswith("-pgod-live-object-5s/lib/pgod-live.o")
    obj = Path(nix_eval("flags")["link"].split()[-1])
    assert obj.exists(), "built as an input of the profiling build"
    sections = subprocess.run(["readelf", "-SW", str(obj)], check=True, capture_output=True, text=True).stdout
    assert "__llvm_prf" not in sections
    symbols = subprocess.run(["readelf", "-sW", str(obj)], check=True, capture_output=True, text=True).stdout
    defined = [line.split() for line in symbols.splitlines() if re.match(r"\s*\d+:", line)]
    exported = [f[7] for f in defined if len(f) >= 8 and f[6] != "UND" and f[4] != "LOCAL" and f[5] != "HIDDEN"]
    assert exported == [], exported


def test_the_context_sensitive_stage_reports_live_too_unless_told_not_to():
    args = ("--argstr", "profile", "/nix/store/00000000000000000000000000000000-x.profdata")
    assert nix_eval("live.csDefault", *args) == {"dumpIntervalSeconds": 60}
    assert nix_eval("live.csOff", *args) is None


def test_optimized_variant_is_built_with_the_merged_profile(work, profiling, merged_profile, profile_functions):
    optimized = nix_build("optimize", work / "result-optimize", "--argstr", "profile", str(merged_profile))
    report = json.loads((optimized["out"] / "nix-support" / "pgo-warnings.json").read_text())
    assert report["variant"] == "optimize"
    assert report["profile"] == str(merged_profile)
    # IR instrumentation counts functions after the early inliner: 3 of the 5 in the source.
    assert report["profile_functions"] == profile_functions == 3
    # The same source as profiled: every function's profile matched.
    assert report["mismatched_functions"] + report["missing_functions"] < profile_functions
    assert report["mismatched_functions"] == 0 and report["unprofiled_files"] == 0
    assert not (optimized["out"] / "nix-support" / "pgo.json").exists()

    # Built with -fprofile-use, not instrumented: it writes no profile.
    spool = work / "optimized-spool"
    spool.mkdir()
    ran = run_program(optimized["out"] / "bin" / "hello-pgo", profile_file=f"{spool}/%p.profraw")
    assert ran.stdout == run_program(profiling["out"] / "bin" / "hello-pgo", profile_file="/dev/null").stdout
    assert ran.stdout.startswith("hello-pgo greeting 42:")
    assert list(spool.iterdir()) == []


def test_optimized_variant_counts_the_function_whose_code_changed(work, merged_profile, profile_functions):
    """hello-pgo with `tweak` changes one function of main.c: clang reports it out of date."""
    optimized = nix_build("optimizeTweaked", work / "result-tweaked", "--argstr", "profile", str(merged_profile))
    report = json.loads((optimized["out"] / "nix-support" / "pgo-warnings.json").read_text())
    assert report["mismatched_functions"] == 1
    assert report["translation_units_warned"] == 1
    assert report["mismatched_functions"] < report["profile_functions"] == profile_functions


def test_front_end_instrumentation_stays_a_choice_and_its_mismatches_are_counted_per_unit(work):
    """The same loop with instrumentation = "fe": front-end raw profiles, and clang's per-unit
    mismatch report, which names how many functions the warned unit has."""
    profiled = nix_build("profileFe", work / "result-profile-fe")
    manifest = json.loads((profiled["out"] / "nix-support" / "pgo.json").read_text())
    assert manifest["instrumentation"] == "fe"
    spool = work / "fe-spool"
    spool.mkdir()
    run_program(profiled["out"] / "bin" / "hello-pgo", profile_file=f"{spool}/%p.profraw")
    (raws,) = live_runs(spool.iterdir()).values()
    assert {part.instrumentation for raw in raws for part in parse_profraw(raw.read_bytes())} == {"fe"}
    merged = work / "hello-pgo-fe.profdata"
    subprocess.run([str(LLVM_PROFDATA), "merge", "-o", str(merged), *map(str, raws)], check=True)
    stored = subprocess.run(["nix-store", "--add", str(merged)], check=True, capture_output=True, text=True).stdout.strip()
    optimized = nix_build("optimizeTweaked", work / "result-tweaked-fe", "--argstr", "profile", stored)
    report = json.loads((optimized["out"] / "nix-support" / "pgo-warnings.json").read_text())
    assert report["mismatched_functions"] == 1
    # main.c has three of the profile's five functions; the other two are the library's.
    assert report["functions_in_warned_units"] == 3 and report["profile_functions"] == 5


def test_the_context_sensitive_stage_writes_cs_profiles_that_complete_the_ir_profile(work, merged_profile, raw_profiles):
    """csProfile: built with the IR profile and instrumented again after inlining; its raw
    profiles merged with the IR profile give one profile with both levels, which the optimized
    variant builds from with every function matched."""
    staged = nix_build("csProfile", work / "result-cs-profile", "--argstr", "profile", str(merged_profile))
    manifest = json.loads((staged["out"] / "nix-support" / "pgo.json").read_text())
    assert (manifest["variant"], manifest["instrumentation"]) == ("cs-profile", "cs-ir")
    spool = work / "cs-spool"
    spool.mkdir()
    ran = run_program(staged["out"] / "bin" / "hello-pgo", profile_file=f"{spool}/%p.profraw")
    assert ran.stdout.startswith("hello-pgo greeting 42:")
    (raws,) = live_runs(spool.iterdir()).values()
    parts = [part for raw in raws for part in parse_profraw(raw.read_bytes())]
    assert {part.instrumentation for part in parts} == {"cs-ir"}
    assert {build_id for part in parts for build_id in part.binary_ids} <= set(manifest["build_ids"])
    final = work / "hello-pgo-cs.profdata"
    subprocess.run([str(LLVM_PROFDATA), "merge", "-o", str(final), str(merged_profile), *map(str, raws)], check=True)
    shown = subprocess.run([str(LLVM_PROFDATA), "show", "--showcs", str(final)], check=True, capture_output=True, text=True).stdout
    assert shown.splitlines()[0].startswith("Instrumentation level: IR") and "Total functions: 0" not in shown, shown
    stored = subprocess.run(["nix-store", "--add", str(final)], check=True, capture_output=True, text=True).stdout.strip()
    optimized = nix_build("optimize", work / "result-optimize-cs", "--argstr", "profile", stored)
    report = json.loads((optimized["out"] / "nix-support" / "pgo-warnings.json").read_text())
    assert report["mismatched_functions"] == 0 and report["missing_functions"] == 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("gccStdenv", "is not clang"),
        ("notElf", "does not produce ELF files"),
        ("oldNixpkgs", "this nixpkgs is too old for pgod"),
        ("relativeSpool", "spoolDir must be an absolute path"),
        ("noOverride", "has no `override`"),
        ("noStdenvArgument", "does not take a `stdenv` argument (it takes: clangStdenv)"),
        ("plainStringProfile", "is a plain string"),
        ("unknownInstrumentation", 'instrumentation must be "ir" or "fe", got "sampling"'),
        ("liveNotASetting", "`live` must be true, false, null or { dumpIntervalSeconds = N; }, got a string"),
        ("liveUnknownKey", "`live` takes only dumpIntervalSeconds, got interval"),
        ("liveZeroInterval", "live.dumpIntervalSeconds must be a whole number of seconds from 1 to 86400, got 0"),
    ],
)
def test_adapters_throw_a_reason_for_what_they_cannot_handle(case, message):
    result = subprocess.run(
        ["nix-instantiate", "--eval", str(ENTRY), "-A", f"errors.{case}"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("digest", ["2bgwiavx8r746v6rlz0hyqq5ng5fcpgp", "mns3ab131xdw6jngnqj5v0x52wdc2n77", "00000000000000000000000000000000"])
def test_the_unreferenced_path_never_spells_the_hash_yet_decodes_to_the_path(digest):
    """Whatever the hash's first and last characters (an escaped digit ends in that digit)."""
    hook = REPO / "stdenv-adapters" / "pgo-setup-hook.sh"
    path = f"/nix/store/{digest}-llvm-14/bin/llvm-profdata"
    script = f'source <(sed -n "/^_pgoJsonString()/,/^}}/p;/^_pgoJsonUnreferencedPath()/,/^}}/p" {hook}); _pgoJsonUnreferencedPath "$1"'
    written = subprocess.run(["bash", "-c", script, "bash", path], check=True, capture_output=True, text=True).stdout
    assert digest not in written
    assert json.loads(written) == path
