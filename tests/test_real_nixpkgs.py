"""pgod's Nix side against a real nixpkgs, opt-in: NIXPKGS=/path/to/a/nixpkgs/checkout.

It needs a Nix of at least 2.18 (nixpkgs' own minimum): the one on PATH, or the one in the
folder NIX_BIN_DIR names. Only evaluation is asked for (instantiating derivations, `nix flake
check --no-build`): building real packages would need the binary cache's bootstrap tools. The
closure of a profiling build (no LLVM in it) is built and checked on the fixture instead, by
test_nix_adapters.py, with an LLVM in the store.

Without NIXPKGS, or with too old a Nix, every test here is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pgod.config import parse_config

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "tests" / "nix" / "real-nixpkgs.nix"
MINIMUM_NIX = (2, 18)
PACKAGES = ["lua", "zstd", "sqlite", "brotli", "snappy", "re2", "hello"]


def _nix_tool(name: str) -> str | None:
    directory = os.environ.get("NIX_BIN_DIR")
    if directory:
        candidate = Path(directory) / name
        return str(candidate) if os.access(candidate, os.X_OK) else None
    return shutil.which(name)


def _why_not() -> str | None:
    nixpkgs = os.environ.get("NIXPKGS")
    if not nixpkgs:
        return "NIXPKGS is not set: point it at a nixpkgs checkout to evaluate pgod against real nixpkgs"
    if not (Path(nixpkgs) / "default.nix").is_file():
        return f"NIXPKGS={nixpkgs} is not a nixpkgs checkout (no default.nix)"
    nix = _nix_tool("nix")
    if nix is None:
        return "no nix found (PATH, or NIX_BIN_DIR)"
    version = subprocess.run([nix, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    if not found or tuple(map(int, found.groups())) < MINIMUM_NIX:
        return (
            f"{nix} is {version.strip() or 'unknown'}; real nixpkgs needs Nix >= 2.18: "
            "set NIX_BIN_DIR to the bin/ of a newer Nix"
        )
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def run_nix(tool: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([_nix_tool(tool), *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{tool} {' '.join(args[:6])} failed:\n{result.stderr[-4000:]}"
    return result


def nix(tool: str, *args: str, timeout: float = 900) -> str:
    return run_nix(tool, *args, timeout=timeout).stdout


def evaluate(attr: str):
    return json.loads(
        nix("nix-instantiate", "--eval", "--strict", "--json", str(ENTRY), "--arg", "nixpkgs", os.environ["NIXPKGS"], "-A", attr)
    )


@pytest.fixture(scope="module")
def adapters() -> dict:
    return evaluate("adapters")


@pytest.fixture(scope="module")
def system() -> dict:
    return evaluate("system")


@pytest.mark.parametrize("name", PACKAGES)
def test_adapters_instrument_real_packages(adapters, name):
    package = adapters[name]
    assert package["isClang"], package["stdenvName"]
    # IR instrumentation, the spool's per-process name baked in through -cc1.
    compile_flags = package["compile"].split()
    assert {"-fprofile-generate", "-fprofile-instrument-path=/var/spool/pgod/%p.profraw"} <= set(compile_flags)
    assert "-fprofile-update=atomic" not in compile_flags  # plain counters by default (benchmarks/README.md)
    assert compile_flags[compile_flags.index("-fprofile-instrument-path=/var/spool/pgod/%p.profraw") - 1] == "-Xclang"
    assert {"-fprofile-generate", "-Wl,--build-id"} <= set(package["link"].split())
    assert package["outputs"] == package["plainOutputs"], "the variants keep the package's outputs"
    # The llvm-profdata of the LLVM the package's clang belongs to.
    assert package["llvmProfdata"] == f"{package['libllvm']}/bin/llvm-profdata"
    assert package["variant"] == "profile" and package["optimizeVariant"] == "optimize"
    optimize = package["optimizeCompile"].split()
    assert any(flag.startswith("-fprofile-use=/nix/store/") for flag in optimize)
    assert "-Wno-error=profile-instr-out-of-date" in optimize
    assert package["drvPath"].endswith(".drv") and package["optimizedDrvPath"] != package["drvPath"]


def test_structured_attrs_packages_get_their_flags_under_env(adapters):
    """nixpkgs refuses NIX_CFLAGS_* at the top level of a structured-attrs package: at least one
    of the packages here is one, and got its flags all the same."""
    assert any(package["structuredAttrs"] for package in adapters.values()) or pytest.fail(
        "none of the packages uses structured attrs any more; add one that does"
    )


def test_a_whole_nixos_system_evaluates_with_the_module(system):
    assert system["toplevel"].endswith(".drv")
    assert system["failedAssertions"] == []
    # pgod's own overlay in nixpkgs.overlays, and nixpkgs' flake internals, change no profiled
    # package: no warning about build.nix.
    assert [w for w in system["warnings"] if "services.pgod" in w] == []
    assert not any("pgod" in profile for profile in system["profiles"]), "nothing of pgod's is put in PATH"
    # A stand-in of each profiling variant, under the package's own name (plain zstd may be in
    # the system path too: NixOS installs it; the stand-in comes first by priority).
    assert sorted(system["standIns"]) == sorted(
        {name for name in system["systemPath"] if name.startswith(("lua-", "zstd-"))}
    )
    assert len(system["standIns"]) == 2
    unit = system["serviceConfig"]
    assert unit["ExecStart"].endswith("/bin/pgod --config /etc/pgod/config.toml --bus system")
    assert "/nix/var/nix/profiles" not in unit["ReadWritePaths"]
    assert "/nix/var/nix/profiles/pgod" in unit["ReadWritePaths"]
    assert "--apply-substitution" in system["activation"]


def test_the_generated_configuration_is_accepted_by_pgods_loader(system):
    config = parse_config(system["settings"], Path("/etc/pgod/config.toml"))
    assert set(config.packages) == {"lua", "zstd"}
    for package in config.packages.values():
        assert package.build[:2] == ("nix-build", package.build[1]) and "{profile}" in package.build
        assert str(package.llvm_profdata).startswith("/nix/store/") and str(package.llvm_profdata).endswith("/bin/llvm-profdata")
        assert all(str(p).startswith("/nix/store/") for p in package.profile_build)
    assert config.substitute_dir == Path("/run/pgod/packages")


def chroot_store_root() -> str:
    """Where a Nix with a store of its own (`store = /some/root`, as a second Nix beside the
    system's has) keeps /nix/store: plain imports of store paths must be read from there. ""
    for the usual store."""
    root = nix("nix", "--extra-experimental-features", "nix-command", "config", "show", "store").strip()
    return root if root.startswith("/") else ""


def test_build_nix_evaluates_to_the_optimized_variants(system, tmp_path):
    # Instantiated, not only evaluated: that puts the sources build.nix names (this nixpkgs, the
    # adapters) in the store, as building the system would.
    nix("nix-instantiate", str(ENTRY), "--arg", "nixpkgs", os.environ["NIXPKGS"], "-A", "system.buildNixFile")
    build_nix = tmp_path / "build.nix"
    build_nix.write_text(system["buildNix"].replace("/nix/store/", f"{chroot_store_root()}/nix/store/"))
    # Any store path stands in for the profile: only evaluation is asked for.
    profile = system["nixpkgsPath"]
    for name in ("lua", "zstd"):
        variant = nix(
            "nix-instantiate", "--eval", str(build_nix), "--argstr", "profile", profile, "-A", f"{name}.pgoVariant"
        )
        assert variant.strip() == '"optimize"'


def flake_reference(checkout: Path) -> str:
    """A git checkout as git+file (its tracked files: copied once, then cached), else path:
    (the whole folder, copied at every use)."""
    return f"git+file://{checkout}" if (checkout / ".git").exists() else f"path:{checkout}"


def test_nix_flake_check_evaluates_with_the_nixpkgs_input_overridden():
    checked = run_nix(
        "nix", "--extra-experimental-features", "nix-command flakes", "flake", "check", "--no-build",
        "--no-write-lock-file", "--override-input", "nixpkgs", flake_reference(Path(os.environ["NIXPKGS"])),
        f"git+file://{REPO}", timeout=1800,
    )
    # The VM test's system imports pgod's overlay: no false warning about it.
    assert "services.pgod" not in checked.stderr, checked.stderr[-2000:]
