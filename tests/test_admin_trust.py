"""Admin configuration checked like sshd's StrictModes: what pgod runs or trusts as root must be
root's alone. Each refused path: exit 2, one line naming the config file and the key, nothing
started."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from test_config import refused
from testbed.daemon import BIN

NOBODY = 65534


def config_text(tmp_path: Path, *, build0: str = "/usr/bin/true", profile_build: Path | None = None,
                llvm_profdata: str | None = None) -> str:
    profile_build = profile_build or make_profile_build(tmp_path / "good-build")
    extra = f'llvm_profdata = "{llvm_profdata}"\n' if llvm_profdata else ""
    return f"""
spool_dir = "{tmp_path}/spool"
state_dir = "{tmp_path}/state"
[packages.lua]
profile_build = ["{profile_build}"]
build = ["{build0}", "{{profile}}"]
{extra}"""


def make_profile_build(path: Path, manifest: dict | None = None) -> Path:
    (path / "nix-support").mkdir(parents=True, exist_ok=True)
    document = {"version": 1, "name": "lua", "variant": "profile", "build_ids": [], **(manifest or {})}
    (path / "nix-support" / "pgo.json").write_text(json.dumps(document))
    return path


def make_tool(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_a_build_program_in_a_folder_another_user_owns_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    tool = make_tool(folder / "build")
    os.chown(folder, NOBODY, -1)
    line = refused(tmp_path, config_text(tmp_path, build0=str(tool)))
    assert f"pgod.toml: packages.lua.build[0]: {folder} is owned by uid {NOBODY}" in line


def test_a_group_writable_build_program_is_refused(tmp_path):
    tool = make_tool(tmp_path / "bin" / "build", 0o775)
    line = refused(tmp_path, config_text(tmp_path, build0=str(tool)))
    assert f"packages.lua.build[0]: {tool} is writable by its group (mode 775)" in line


def test_a_symlink_to_a_world_writable_folder_is_followed_and_refused(tmp_path):
    open_folder = tmp_path / "open"
    tool = make_tool(open_folder / "build")
    open_folder.chmod(0o777)  # world-writable, not sticky: anyone may swap the program
    link = tmp_path / "bin" / "build"
    link.parent.mkdir()
    link.symlink_to(tool)
    line = refused(tmp_path, config_text(tmp_path, build0=str(link)))
    assert f"packages.lua.build[0]: {open_folder} is writable by others (mode 777)" in line


def test_a_profile_build_or_its_manifest_another_user_can_change_is_refused(tmp_path):
    build = make_profile_build(tmp_path / "their-build")
    os.chown(build / "nix-support" / "pgo.json", NOBODY, -1)
    line = refused(tmp_path, config_text(tmp_path, profile_build=build))
    assert f"packages.lua.profile_build[0]: {build}/nix-support/pgo.json is owned by uid {NOBODY}" in line
    os.chown(build / "nix-support" / "pgo.json", 0, -1)
    build.chmod(0o777)
    line = refused(tmp_path, config_text(tmp_path, profile_build=build))
    assert f"packages.lua.profile_build[0]: {build} is writable by others" in line


def test_an_llvm_profdata_others_can_write_is_refused_from_the_config_and_from_pgo_json(tmp_path):
    tool = make_tool(tmp_path / "llvm" / "llvm-profdata", 0o757)
    line = refused(tmp_path, config_text(tmp_path, llvm_profdata=str(tool)))
    assert f"packages.lua.llvm_profdata: {tool} is writable by others" in line
    build = make_profile_build(tmp_path / "named-tool", {"llvm_profdata": str(tool)})
    line = refused(tmp_path, config_text(tmp_path, profile_build=build))
    assert "packages.lua.profile_build: the llvm-profdata named in its nix-support/pgo.json:" in line
    assert f"{tool} is writable by others" in line


def test_root_owned_paths_under_a_sticky_folder_are_accepted(tmp_path):
    sticky = tmp_path / "sticky"
    tool = make_tool(sticky / "build")
    sticky.chmod(0o1777)  # like /tmp or /nix/store: others may add entries, not replace root's
    config = tmp_path / "pgod.toml"
    config.write_text(config_text(tmp_path, build0=str(tool), llvm_profdata="/usr/bin/llvm-profdata-14"))
    result = subprocess.run([str(BIN / "pgod"), "--config", str(config), "--check-config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv0", ["nix-build", "/usr/bin/nix-build"])
def test_programs_found_on_path_are_checked_where_they_are(tmp_path, argv0):
    config = tmp_path / "pgod.toml"
    config.write_text(config_text(tmp_path, build0=argv0))
    result = subprocess.run([str(BIN / "pgod"), "--config", str(config), "--check-config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_symlink_another_user_owns_on_the_way_is_refused(tmp_path):
    """The folder is reached through a root-owned link to a link nobody owns: nobody could point
    theirs at a folder of their own at any time."""
    make_tool(tmp_path / "real" / "build")
    theirs = tmp_path / "theirs-link"
    theirs.symlink_to(tmp_path / "real")
    os.chown(theirs, NOBODY, NOBODY, follow_symlinks=False)
    (tmp_path / "bin").symlink_to(theirs)
    line = refused(tmp_path, config_text(tmp_path, build0=str(tmp_path / "bin" / "build")))
    assert f"packages.lua.build[0]: {theirs} is owned by uid {NOBODY}" in line


def test_an_llvm_profdata_found_on_path_that_others_can_change_is_refused(tmp_path):
    """Neither the config nor pgo.json names the tool, so the one on PATH is used: it is held
    to the same rule."""
    folder = tmp_path / "path-bin"
    make_tool(folder / "llvm-profdata")
    folder.chmod(0o777)
    config = tmp_path / "pgod.toml"
    config.write_text(config_text(tmp_path))
    result = subprocess.run(
        [str(BIN / "pgod"), "--config", str(config), "--check-config"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "PATH": f"{folder}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
    )
    assert result.returncode == 2, result.stderr
    assert ("packages.lua.llvm_profdata: not set, so the llvm-profdata on PATH is used: "
            f"{folder} is writable by others (mode 777)") in result.stderr.strip()
