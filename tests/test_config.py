"""Bad configurations: `pgod` exits 2 with one line naming the file and the key, and starts nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.daemon import BIN
from pgod.config import MB, ConfigError, load_config

GOOD = """
spool_dir = "/var/spool/pgod"
state_dir = "/var/lib/pgod"
threshold_mb = 64
activation = "auto"

[packages.lua]
profile_build = ["/nix/store/aaaa-lua-5.4.7"]
build = ["nix-build", "/etc/pgod/build.nix", "-A", "lua", "--argstr", "profile", "{profile}"]
threshold_mb = 16
"""


def run_pgod(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "pgod"), "--config", str(config), "--bus", "session"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"},
    )


def test_good_config_is_typed():
    config_path = Path("/etc/pgod/config.toml")
    import tomllib

    from pgod.config import parse_config

    config = parse_config(tomllib.loads(GOOD), config_path)
    lua = config.packages["lua"]
    assert config.activation == "auto"
    assert config.threshold_bytes == 64 * MB
    assert lua.threshold_bytes == 16 * MB
    assert lua.build[-1] == "{profile}"
    assert lua.llvm_profdata is None
    assert config.profile_link == Path("/nix/var/nix/profiles/pgod/optimized")
    # One stage and no gate unless asked for.
    assert lua.cs_build is None and lua.cs_threshold_bytes is None
    assert lua.benchmark is None and lua.baseline_build is None and lua.min_speedup == 1.0
    # No keep_free_mb: the margin scales with each file system (room.py); one written is kept.
    assert config.keep_free_bytes is None
    assert parse_config(tomllib.loads("keep_free_mb = 0\n" + GOOD), config_path).keep_free_bytes == 0
    assert parse_config(tomllib.loads("keep_free_mb = 64\n" + GOOD), config_path).keep_free_bytes == 64 * MB


def test_the_stage_and_gate_keys_are_typed():
    import tomllib

    from pgod.config import parse_config

    text = GOOD + """cs_build = ["nix-build", "/etc/pgod/build.nix", "-A", "lua", "--argstr", "stage", "cs-profile"]
benchmark = ["{bin}/bin/lua", "/etc/bench.lua"]
baseline_build = "/nix/store/bbbb-lua-5.4.7"
min_speedup = 1.05
benchmark_rounds = 7
"""
    lua = parse_config(tomllib.loads(text), Path("/etc/pgod/config.toml")).packages["lua"]
    assert lua.cs_build[-1] == "cs-profile"
    assert lua.cs_threshold_bytes == lua.threshold_bytes == 16 * MB  # the stage's default
    assert lua.benchmark == ("{bin}/bin/lua", "/etc/bench.lua") and lua.baseline_build == Path("/nix/store/bbbb-lua-5.4.7")
    assert (lua.min_speedup, lua.benchmark_rounds, lua.benchmark_timeout_seconds) == (1.05, 7, 600.0)


BAD = [
    ("missing key", GOOD.replace('build = ["nix-build"', 'xbuild = ["nix-build"'), "packages.lua.xbuild"),
    ("missing required", GOOD.replace('profile_build = ["/nix/store/aaaa-lua-5.4.7"]\n', ""), "packages.lua.profile_build"),
    ("wrong type", GOOD.replace("threshold_mb = 64", 'threshold_mb = "64"'), "threshold_mb"),
    ("boolean as number", GOOD.replace("threshold_mb = 16", "threshold_mb = true"), "packages.lua.threshold_mb"),
    ("unknown activation", GOOD.replace('"auto"', '"sometimes"'), "activation"),
    ("relative path", GOOD.replace('"/var/spool/pgod"', '"spool"'), "spool_dir"),
    ("build as a shell string", GOOD.replace('build = ["nix-build", "/etc/pgod/build.nix", "-A", "lua", "--argstr", "profile", "{profile}"]', 'build = "nix-build x"'), "packages.lua.build"),
    ("package name escaping state_dir", GOOD.replace("[packages.lua]", '[packages."../../escape"]'), "packages.../../escape"),
    ("package name with a slash", GOOD.replace("[packages.lua]", '[packages."a/b"]'), "packages.a/b"),
    ("package name ..", GOOD.replace("[packages.lua]", '[packages.".."]'), "packages..."),
    ("not toml", "spool_dir = [", None),
    ("benchmark without a baseline", GOOD + 'benchmark = ["{bin}/bin/lua", "bench.lua"]\n', "packages.lua.benchmark"),
    ("speedup of zero", GOOD + 'min_speedup = 0\n', "packages.lua.min_speedup"),
    ("too few benchmark rounds", GOOD + 'benchmark_rounds = 2\n', "packages.lua.benchmark_rounds"),
    ("cs threshold without a cs stage", GOOD + 'cs_threshold_mb = 4\n', "packages.lua.cs_threshold_mb"),
    ("cs_build as a shell string", GOOD + 'cs_build = "nix-build x"\n', "packages.lua.cs_build"),
]


def refused(tmp_path: Path, text: str) -> str:
    """Start pgod with ``text`` as its config: it must exit 2 with one line on stderr, naming the
    file, having started nothing. Returns that line."""
    config = tmp_path / "pgod.toml"
    config.write_text(text)
    result = run_pgod(config, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert not (tmp_path / "state").exists(), "nothing may be started for a refused configuration"
    return lines[0]


@pytest.mark.parametrize("label,text,key", BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_2_naming_file_and_key(label, text, key, tmp_path):
    line = refused(tmp_path, text)
    if key:
        assert f"{tmp_path / 'pgod.toml'}: {key}:" in line


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.toml"
    result = run_pgod(missing, tmp_path)
    assert result.returncode == 2 and str(missing) in result.stderr and "not found" in result.stderr

    unreadable = tmp_path / "secret.toml"
    unreadable.write_text(GOOD)
    unreadable.chmod(0)
    if os.geteuid() == 0:
        # root reads anything: show the same path through a directory instead.
        with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory"):
            load_config(tmp_path)
    else:
        result = run_pgod(unreadable, tmp_path)
        assert result.returncode == 2 and "permission denied" in result.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    config = tmp_path / "pgod.toml"
    config.write_text(GOOD)
    result = subprocess.run([str(BIN / "pgod"), "--config", str(config), "--check-config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 packages" in result.stdout
