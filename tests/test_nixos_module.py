"""The NixOS module (nixos-module/), evaluated by nixpkgs' real module system.

nix/tests/module-eval.nix runs lib.evalModules over the module, the option declarations a NixOS
system would provide (nix/tests/nixos-stubs.nix) and the fake nixpkgs of nix/tests/fixture, whose
`hello` is a real C program built with the host's compilers. The tests read what the module sets,
build the files it writes, feed the TOML to pgod's own config loader, and run the build argv it
generates, end to end, to get an optimized hello.

NIXPKGS_LIB must name a nixpkgs lib checkout (github:nix-community/nixpkgs.lib, or nixpkgs itself).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pgod.config import load_config
from unitfile import PGOD_UNIT, settings

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "nix" / "tests" / "module-eval.nix"
POLICY = "share/dbus-1/system.d/org.pgod.Daemon1.conf"


def _nixpkgs_lib() -> Path | None:
    root = os.environ.get("NIXPKGS_LIB")
    if not root:
        return None
    root_path = Path(root)
    return root_path / "lib" if (root_path / "lib" / "default.nix").exists() else root_path


NIXPKGS_LIB = _nixpkgs_lib()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NIXPKGS_LIB is None,
        reason="NIXPKGS_LIB is not set: point it at a nixpkgs lib checkout (github:nix-community/nixpkgs.lib) "
        "to evaluate the NixOS module with the real module system",
    ),
    pytest.mark.skipif(
        shutil.which("nix-build") is None or not os.access("/usr/bin/clang-14", os.X_OK),
        reason="needs nix-build and /usr/bin/clang-14 (the fixture packages are built with the host's clang)",
    ),
]


class System:
    """One evaluated system configuration."""

    def __init__(self, configuration: dict, overlay: str = "none") -> None:
        self.args = [
            "--arg", "nixpkgsLib", str(NIXPKGS_LIB), "--argstr", "configJSON", json.dumps(configuration),
            "--argstr", "testOverlay", overlay,
        ]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, str(ENTRY), *self.args, *args], capture_output=True, text=True
        )

    def eval(self, attr: str):
        result = self._run("nix-instantiate", "--eval", "--strict", "--json", "-A", attr)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout)

    def build(self, attr: str, link: Path) -> Path:
        result = self._run("nix-build", "-A", attr, "-o", str(link))
        assert result.returncode == 0, result.stderr[-4000:]
        return Path(result.stdout.strip().splitlines()[-1])


def pgod_configuration(tmp: Path, **options) -> dict:
    pgod = {
        "enable": True,
        "packages": ["hello"],
        "settings": {"spool_dir": str(tmp / "spool"), "state_dir": str(tmp / "state")},
    }
    pgod.update(options)
    return {"services": {"pgod": pgod}}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nixos-module")


@pytest.fixture(scope="module")
def system(tmp) -> System:
    return System(pgod_configuration(tmp))


@pytest.fixture(scope="module")
def summary(system) -> dict:
    return system.eval("summary")


@pytest.fixture(scope="module")
def config_file(system, tmp) -> Path:
    return system.build("configFile", tmp / "config.toml")


def test_module_evaluates_without_failed_assertions_or_warnings(summary):
    assert summary["failedAssertions"] == []
    assert summary["warnings"] == []


@pytest.fixture(scope="module")
def package(system, tmp) -> Path:
    """The (placeholder) pgod package, with its system files installed as nix/package.nix does."""
    return system.build("config.services.pgod.package", tmp / "pgod-package")


def test_the_unit_is_the_shipped_file_with_a_drop_in_for_what_nix_decides(summary, package, tmp):
    # systemd.packages: the unit every installation runs, its ExecStart pointing into the package.
    assert summary["systemdPackages"] == [summary["package"]]
    unit_file = package / "lib" / "systemd" / "system" / "pgod.service"
    assert settings(unit_file) == {
        **settings(PGOD_UNIT),
        "ExecStart": [f"{summary['package']}/bin/pgod --config /etc/pgod/config.toml --bus system"],
    }
    unit = settings(unit_file)
    assert unit["Type"] == ["dbus"] and unit["BusName"] == ["org.pgod.Daemon1"]
    # Builds go through nix-daemon: the store and everything else is read-only but what pgod writes.
    assert "NIX_REMOTE=daemon" in unit["Environment"][0].split()
    assert unit["ProtectSystem"] == ["strict"]
    # The drop-in: enabled, ordered after nix-daemon, its PATH, and the folders the settings moved.
    service = summary["service"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert "nix-daemon.socket" in service["requires"] and "nix-daemon.socket" in service["after"]
    assert "/usr" in service["path"]  # the fixture's util-linux (prlimit)
    assert service["serviceConfig"] == {"ReadWritePaths": [str(tmp / "spool"), str(tmp / "state")]}
    # Of /nix/var/nix/profiles only the daemon's own profile's folder, never the system profile.
    assert unit["ReadWritePaths"] == ["/var/spool/pgod /var/lib/pgod /nix/var/nix/profiles/pgod /run/pgod/packages"]
    # llvm-profdata runs as a system user of its own, inside util-linux's prlimit.
    assert summary["users"]["pgod-merge"] == {"isSystemUser": True, "group": "pgod-merge", "description": "pgod's llvm-profdata runs"}


def test_tmpfiles_create_a_sticky_world_writable_spool_and_a_private_state_dir(summary, package, tmp):
    assert summary["tmpfilesPackages"] == [summary["package"]]
    shipped = (package / "lib" / "tmpfiles.d" / "pgod.conf").read_text()
    assert "d /var/spool/pgod 1777 root root -" in shipped.splitlines()
    # The settings here move the spool and state folders: rules of their own.
    assert summary["tmpfiles"] == [f"d {tmp / 'spool'} 1777 root root -", f"d {tmp / 'state'} 0700 root root -"]


def test_the_kernel_protects_the_sticky_spool_from_planted_links_fifos_and_files(summary, package):
    sysctl = summary["etc"]["sysctl.d/50-pgod.conf"]
    assert sysctl == f"{summary['package']}/lib/sysctl.d/50-pgod.conf"
    lines = (package / "lib" / "sysctl.d" / "50-pgod.conf").read_text().splitlines()
    assert {"fs.protected_symlinks = 1", "fs.protected_regular = 2", "fs.protected_fifos = 2"} <= set(lines)


def test_hardened_services_get_the_spool_through_the_shipped_generator(summary, package):
    generator = summary["generators"]["pgod-spool"]
    assert generator == f"{summary['package']}/lib/systemd/system-generators/pgod-spool-generator"
    assert os.access(package / "lib" / "systemd" / "system-generators" / "pgod-spool-generator", os.X_OK)


def test_llvm_profile_file_is_set_for_login_sessions_and_system_services(summary, tmp):
    assert summary["sessionVariables"]["LLVM_PROFILE_FILE"] == f"{tmp / 'spool'}/%p.profraw"
    # Written into every unit's Environment=, where systemd would expand %p: escaped as %%p.
    assert summary["globalEnvironment"]["LLVM_PROFILE_FILE"] == f"{tmp / 'spool'}/%%p.profraw"


def test_a_stand_in_of_the_profiling_variant_is_installed_ahead_of_the_plain_package(summary, config_file):
    installed = {package["name"]: package for package in summary["systemPackages"]}
    stand_in = installed["hello-pgo-1.0"]
    assert stand_in["pgoVariant"] == "substitute"
    assert stand_in["priority"] < 0
    # It stands for exactly the profiling build pgod is configured with.
    assert stand_in["substitutes"] == tomllib.loads(config_file.read_text())["packages"]["hello"]["profile_build"]
    assert any(name.startswith("pgod") for name in installed)


def test_nothing_is_put_ahead_of_the_system_path_and_activation_substitutes(summary, config_file):
    """The optimized builds take the declared package's place (the stand-in), never a PATH entry
    of their own that would shadow users' ~/.nix-profile."""
    assert "profiles" not in summary
    script = summary["activationScripts"]["pgod-substitute"]
    assert f"/bin/pgod --config {config_file.resolve()} --apply-substitution" in script


def test_the_stand_in_mirrors_every_file_through_the_substitution_links(system, config_file, tmp):
    stand_in = system.build("config.environment.systemPackages", tmp / "system-packages")
    profiling = tomllib.loads(config_file.read_text())["packages"]["hello"]["profile_build"]
    exe = stand_in / "bin" / "hello-pgo"
    out_name = Path(profiling[0]).name[33:]
    assert os.readlink(exe) == f"/run/pgod/packages/hello/{out_name}/bin/hello-pgo"
    assert (stand_in / "nix-support" / "pgod-substitute").read_text().split() == [profiling[0]]


def test_notify_agent_runs_in_graphical_sessions(summary, package, tmp):
    agent = summary["userService"]
    assert agent["wantedBy"] == ["graphical-session.target"]
    shipped = package / "lib" / "systemd" / "user" / "pgod-notify-agent.service"
    assert settings(shipped)["ExecStart"] == [f"{summary['package']}/bin/pgoctl notify-agent"]
    assert settings(shipped, "Unit")["PartOf"] == ["graphical-session.target"]
    without = System(pgod_configuration(tmp, notifyAgent={"enable": False})).eval("summary")
    assert without["userService"] is None


def test_dbus_policy_gives_the_admin_group_the_mutating_methods(tmp):
    configuration = pgod_configuration(tmp, adminGroup="pgod-admins")
    configuration["users"] = {"groups": {"pgod-admins": {}}}
    system = System(configuration)
    assert system.eval("summary.failedAssertions") == []
    policy = ET.parse(system.build("dbusPolicy", tmp / "dbus") / POLICY).getroot()
    by_group = {p.get("group"): p for p in policy.iter("policy") if p.get("group")}
    assert set(by_group) == {"pgod-admins"}
    assert by_group["pgod-admins"].find("allow").get("send_destination") == "org.pgod.Daemon1"
    root = next(p for p in policy.iter("policy") if p.get("user") == "root")
    assert root.find("allow").get("own") == "org.pgod.Daemon1"


def test_generated_toml_is_a_valid_pgod_configuration(config_file, system, tmp):
    document = tomllib.loads(config_file.read_text())
    top_keys = ("activation admin_group build_idle_cpu_percent build_idle_seconds build_on_battery live_interval_s merge_user"
                " packages profile_link rebuild_change_percent settled_percent spool_dir state_dir substitute_dir threshold_mb")
    assert sorted(document) == top_keys.split()
    # When to build (pgod/schedule): pgod's own defaults, written out.
    assert (document["settled_percent"], document["rebuild_change_percent"]) == (1, 5)
    assert (document["build_on_battery"], document["build_idle_cpu_percent"], document["build_idle_seconds"]) == (False, 25, 60)
    assert document["threshold_mb"] == 64 and document["activation"] == "notify"
    assert document["live_interval_s"] == 300
    assert document["admin_group"] == "wheel"
    assert document["merge_user"] == "pgod-merge"
    hello = document["packages"]["hello"]
    # The list form takes every default: IR instrumentation and the context-sensitive stage.
    assert set(hello) == {"profile_build", "build", "cs_build", "llvm_profdata"}
    assert hello["llvm_profdata"] == "/usr/lib/llvm-14/bin/llvm-profdata"
    # Both outputs of the profiling variant, each with the manifest pgod attributes profiles by.
    assert len(hello["profile_build"]) == 2
    for output in hello["profile_build"]:
        manifest = json.loads((Path(output) / "nix-support" / "pgo.json").read_text())
        assert manifest["variant"] == "profile" and len(manifest["build_ids"]) == 2
        assert manifest["instrumentation"] == "ir"
        assert manifest["live"] == {"dump_interval_s": 60}, "live reporting is on by default"
    build_nix = system.eval("summary.etc")["pgod/build.nix"]
    assert hello["build"] == [
        "nix-build",
        build_nix,
        "-A",
        "hello",
        "--argstr",
        "profile",
        "{profile}",
        "--out-link",
        f"{tmp / 'state'}/result-hello",
    ]
    assert hello["cs_build"] == [*hello["build"][:7], "--argstr", "stage", "cs-profile", "--out-link",
                                 f"{tmp / 'state'}/result-hello-cs"]
    # pgod's own loader accepts it.
    config = load_config(config_file)
    assert config.packages["hello"].build == tuple(hello["build"])
    assert config.packages["hello"].cs_build == tuple(hello["cs_build"])
    assert config.spool_dir == tmp / "spool"
    assert config.substitute_dir == Path("/run/pgod/packages")
    assert config.profile_link == Path("/nix/var/nix/profiles/pgod/optimized")
    assert config.live_interval_s == 300
    assert (config.settled_percent, config.rebuild_change_percent, config.build_idle_cpu_percent) == (1, 5, 25)


def test_options_reach_the_toml(tmp):
    configuration = pgod_configuration(tmp, thresholdMB=8, activation="auto", acceptUids=[0, 1000], liveIntervalSeconds=60,
                                       buildWhen={"onBattery": True, "idleCpuPercent": 50, "settledPercent": 2.5})
    configuration["services"]["pgod"]["settings"]["packages"] = {"hello": {"threshold_mb": 2}}
    settings = System(configuration).eval("summary.settings")
    assert settings["threshold_mb"] == 8 and settings["activation"] == "auto"
    assert settings["live_interval_s"] == 60
    assert settings["build_on_battery"] is True and settings["build_idle_cpu_percent"] == 50
    assert settings["settled_percent"] == 2.5 and settings["rebuild_change_percent"] == 5
    assert settings["accept_uids"] == [0, 1000]
    assert settings["packages"]["hello"]["threshold_mb"] == 2
    assert "profile_build" in settings["packages"]["hello"]


def test_build_argv_rebuilds_the_package_with_a_merged_profile(config_file, tmp):
    """What pgod does past the threshold: run the argv with {profile} replaced; last line = out path."""
    hello = tomllib.loads(config_file.read_text())["packages"]["hello"]
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    exe = Path(hello["profile_build"][0]) / "bin" / "hello-pgo"
    for text in ("one", "two 2", "three 33"):
        # No LLVM_PROFILE_FILE: the module's spool is baked into the profiling variant.
        subprocess.run([str(exe), text], env={"PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    raw = sorted(spool.glob("*.profraw"))
    # Live reporting: each run leaves one live file per module (program and library).
    assert len(raw) == 6 and all(p.name.startswith("live-") for p in raw)
    assert len({p.name.split("-")[1] for p in raw}) == 3
    merged = tmp / "hello.profdata"
    subprocess.run([hello["llvm_profdata"], "merge", "-o", str(merged), *map(str, raw)], check=True)
    profile = subprocess.run(["nix-store", "--add", str(merged)], check=True, capture_output=True, text=True)
    profile_path = profile.stdout.strip()

    argv = [arg.replace("{profile}", profile_path) for arg in hello["build"]]
    built = subprocess.run(argv, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    optimized = Path(built.stdout.strip().splitlines()[-1])
    report = json.loads((optimized / "nix-support" / "pgo-warnings.json").read_text())
    assert report["profile"] == profile_path
    # IR instrumentation counts functions after the early inliner: 3 of the 5 in the source.
    assert report["mismatched_functions"] == 0 and report["profile_functions"] == 3
    assert (tmp / "state" / "result-hello").resolve() == optimized

    # The context-sensitive stage's build from the same profile: instrumented again, its
    # profiles written to the module's spool.
    staged_argv = [arg.replace("{profile}", profile_path) for arg in hello["cs_build"]]
    staged = subprocess.run(staged_argv, capture_output=True, text=True)
    assert staged.returncode == 0, staged.stderr[-4000:]
    staged_out = Path(staged.stdout.strip().splitlines()[-1])
    manifest = json.loads((staged_out / "nix-support" / "pgo.json").read_text())
    assert (manifest["variant"], manifest["instrumentation"]) == ("cs-profile", "cs-ir")
    before = set(spool.glob("*.profraw"))
    subprocess.run([str(staged_out / "bin" / "hello-pgo"), "four"], env={"PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True)
    assert len(set(spool.glob("*.profraw")) - before) == 2, "live files of the program and its library"


def test_per_package_settings_choose_instrumentation_stages_and_a_benchmark_gate(tmp):
    configuration = pgod_configuration(tmp, packages={
        "hello": {"benchmark": ["{bin}/bin/hello-pgo", "bench"], "minSpeedup": 1.05},
        "testPackages.hello": {"instrumentation": "fe"},
    })
    system = System(configuration)
    settings = system.eval("summary.settings")["packages"]
    hello, other = settings["hello"], settings["testPackages.hello"]
    assert hello["benchmark"] == ["{bin}/bin/hello-pgo", "bench"] and hello["min_speedup"] == 1.05
    # The baseline is the package as the system's nixpkgs builds it, not a profiling variant.
    assert hello["baseline_build"].startswith("/nix/store/") and hello["baseline_build"] not in hello["profile_build"]
    assert "cs_build" in hello
    # Front-end instrumentation has no context-sensitive stage, and no benchmark was asked for.
    assert "cs_build" not in other and "benchmark" not in other and "baseline_build" not in other
    flags = system.eval("config.services.pgod.settings.packages")
    assert set(flags) == {"hello", "testPackages.hello"}
    assert system.eval("summary.warnings") == []


def test_live_reporting_can_be_turned_off_per_package(tmp):
    """packages.<name>.live = false: the profiling variant without the live object ("live": null
    in its pgo.json, the runtime's exit file per run), and build.nix's context-sensitive stage
    asks for the same."""
    configuration = pgod_configuration(tmp, packages={"hello": {"live": False}, "testPackages.hello": {}})
    system = System(configuration)
    assert system.eval("summary.failedAssertions") == []
    config_file = system.build("configFile", tmp / "config-no-live.toml")
    packages = tomllib.loads(config_file.read_text())["packages"]
    off = json.loads((Path(packages["hello"]["profile_build"][0]) / "nix-support" / "pgo.json").read_text())
    on = json.loads((Path(packages["testPackages.hello"]["profile_build"][0]) / "nix-support" / "pgo.json").read_text())
    assert off["live"] is None and on["live"] == {"dump_interval_s": 60}
    spool = tmp / "no-live-spool"
    spool.mkdir()
    run = subprocess.Popen([str(Path(packages["hello"]["profile_build"][0]) / "bin" / "hello-pgo")],
                           env={"PATH": "/usr/bin:/bin", "LLVM_PROFILE_FILE": f"{spool}/%p.profraw"}, stdout=subprocess.DEVNULL)
    assert run.wait() == 0
    assert [p.name for p in spool.iterdir()] == [f"{run.pid}.profraw"]
    build_nix = Path(system.eval("summary.etc")["pgod/build.nix"]).read_text()
    assert '"hello" = optimize [ "hello" ] false;' in build_nix
    assert '"testPackages"."hello" = optimize [ "testPackages" "hello" ] true;' in build_nix


def test_the_live_interval_must_be_whole_seconds_from_1(tmp):
    for bad in (0, 86401):
        result = System(pgod_configuration(tmp, liveIntervalSeconds=bad))._run(
            "nix-instantiate", "--eval", "--strict", "--json", "-A", "summary.settings.live_interval_s")
        assert result.returncode != 0 and "liveIntervalSeconds" in result.stderr, result.stderr[-2000:]


def test_dotted_attribute_paths_name_packages_in_package_sets(tmp):
    system = System(pgod_configuration(tmp, packages=["testPackages.hello"]))
    settings = system.eval("summary.settings")
    assert settings["packages"]["testPackages.hello"]["build"][2:4] == ["-A", "testPackages.hello"]
    build_nix = system.build("buildFile", tmp / "build-dotted.nix")
    # Any store path stands in for the profile: only evaluation is asked for.
    argv = ["nix-instantiate", "--eval", str(build_nix), "--argstr", "profile", str(build_nix)]
    attr = subprocess.run([*argv, "-A", "testPackages.hello.pgo.variant"], capture_output=True, text=True)
    assert attr.returncode == 0, attr.stderr
    assert attr.stdout.strip() == '"optimize"'


@pytest.mark.parametrize(
    ("options", "extra", "message"),
    [
        ({"packages": ["hello", "no-such-package"]}, {}, "`no-such-package` not found in pkgs"),
        ({"adminGroup": "pgod-admins"}, {}, "add `users.groups.pgod-admins = { };`"),
        ({"settings": {"spool_dir": "spool"}}, {}, "must be absolute paths"),
        ({"settings": {"packages": {"lua": {"threshold_mb": 2}}}}, {}, "`lua` is not in services.pgod.packages"),
        ({}, {"nix": {"enable": False}}, "needs the Nix daemon"),
        ({"settings": {"profile_link": "/nix/var/nix/profiles/pgod"}}, {}, "give it a directory of its own"),
    ],
    ids=["unknown-package", "undeclared-admin-group", "relative-spool", "orphan-package-table", "no-nix-daemon", "shared-profile-dir"],
)
def test_assertions_say_what_to_change(tmp, options, extra, message):
    configuration = pgod_configuration(tmp, **options)
    if "settings" in options:
        configuration["services"]["pgod"]["settings"] = {
            "spool_dir": str(tmp / "spool"),
            "state_dir": str(tmp / "state"),
            **options["settings"],
        }
    configuration.update(extra)
    failed = System(configuration).eval("summary.failedAssertions")
    assert any(message in text for text in failed), failed


def test_warnings_for_empty_packages_and_overlays(tmp):
    empty = System(pgod_configuration(tmp, packages=[])).eval("summary.warnings")
    assert any("services.pgod.packages is empty" in text for text in empty)
    # Only an overlay that changes a profiled package makes build.nix build something else.
    changed = System(pgod_configuration(tmp), overlay="changesHello").eval("summary.warnings")
    assert len(changed) == 1 and "`hello` in this system's pkgs differs" in changed[0], changed
    assert System(pgod_configuration(tmp), overlay="addsAPackage").eval("summary.warnings") == []


def test_a_missing_pgod_package_says_how_to_get_one(tmp):
    configuration = pgod_configuration(tmp)
    result = subprocess.run(
        [
            "nix-instantiate", "--eval", "--strict", "-E",
            f"""let lib = import {NIXPKGS_LIB}; pkgs = removeAttrs (import {REPO}/nix/tests/fixture {{ inherit lib; }}) [ "pgod" ];
            in (lib.evalModules {{ modules = [ {REPO}/nixos-module {REPO}/nix/tests/nixos-stubs.nix
              {{ _module.args.pkgs = pkgs; }} (builtins.fromJSON ''{json.dumps(configuration)}'') ]; }}).config.services.pgod.package.outPath""",
        ],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "pgod.nixosModules.default" in result.stderr and "pgod.overlays.default" in result.stderr, result.stderr


def test_flake_outputs_offer_lib_overlay_and_module():
    """flake.nix, with a stand-in nixpkgs input: its system-independent outputs are usable."""
    expression = f"""
      let
        fixture = {REPO}/nix/tests/fixture;
        nixpkgs = {{ lib = import {NIXPKGS_LIB}; legacyPackages = {{ }}; }};
        outputs = (import {REPO}/flake.nix).outputs {{ self = outputs; inherit nixpkgs; }};
        pkgs = import fixture {{ overlays = [ outputs.overlays.default ]; }};
      in {{
        outputs = builtins.attrNames outputs;
        lib = builtins.attrNames outputs.lib;
        overlay = builtins.attrNames pkgs.stdenvAdapters ++ builtins.attrNames pkgs.pgo;
        profiled = (pkgs.pgo.profile pkgs.hello).pgo.variant;
        module = builtins.isFunction outputs.nixosModules.default;
      }}
    """
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    flake = json.loads(result.stdout)
    assert set(flake["outputs"]) >= {"packages", "overlays", "nixosModules", "lib", "checks", "devShells"}
    assert set(flake["lib"]) == {"withPgoProfile", "withPgoCsProfile", "withPgoOptimize", "makePgo"}
    assert set(flake["overlay"]) == {"withPgoProfile", "withPgoCsProfile", "withPgoOptimize", "profile", "profileWith",
                                     "csProfile", "optimize"}
    assert flake["profiled"] == "profile" and flake["module"] is True
