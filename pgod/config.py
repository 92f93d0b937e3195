"""Load and validate pgod's TOML configuration into typed, immutable objects.

Every error names the file and the dotted key, so a person can fix it in one go; nothing else
in pgod reads the TOML, so the rest of the code can trust these types.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/pgod/config.toml")
# The Nix profile of the optimized builds in use: a link in a directory of its own, which the
# shipped unit (ReadWritePaths) and tmpfiles give pgod; never a link beside the system profile.
DEFAULT_PROFILE_LINK = Path("/nix/var/nix/profiles/pgod/optimized")
ACTIVATION_MODES = ("notify", "auto")
MB = 1024 * 1024
DEFAULT_MAX_COUNTER = 1 << 56
# Maturity (pgod/schedule/maturity.py): the defaults, and what they rest on, are in DESIGN.md
# "When to build".
DEFAULT_SETTLED_PERCENT = 1.0
DEFAULT_REBUILD_CHANGE_PERCENT = 5.0
DEFAULT_MERGE_USER = "pgod-merge"  # the system user the install and the NixOS module create


class ConfigError(Exception):
    """A configuration problem, always tied to a file and (when known) a key."""

    def __init__(self, path: Path, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class PackageConfig:
    """One watched package: where its profiling build lives and how to rebuild it optimized."""

    name: str
    profile_build: tuple[Path, ...]
    build: tuple[str, ...]
    threshold_bytes: int
    llvm_profdata: Path | None = None
    # The context-sensitive stage (stages.py): the argv that builds the IR-optimized variant
    # instrumented again (`{profile}` as in `build`), and the data it collects before the final
    # build. None: one stage, `build` straight from the first profile.
    cs_build: tuple[str, ...] | None = None
    cs_threshold_bytes: int | None = None
    # The benchmark gate (gate.py): an argv run on baseline and candidate (`{bin}` is the store
    # path of either), the baseline's store path, and the speedup a build must reach.
    benchmark: tuple[str, ...] | None = None
    baseline_build: Path | None = None
    min_speedup: float = 1.0
    benchmark_rounds: int = 5
    benchmark_timeout_seconds: float = 600.0


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    path: Path
    spool_dir: Path
    state_dir: Path
    profile_link: Path
    threshold_bytes: int
    activation: str
    admin_group: str
    max_file_bytes: int
    unattributed_max_files: int
    build_retry_seconds: float
    packages: dict[str, PackageConfig] = field(default_factory=dict)
    merge_user: str = DEFAULT_MERGE_USER  # whom llvm-profdata runs as when the daemon is root
    # Intake pauses while staging or state has less free space than this; None: 15 % of each
    # file system's size, at most 4 GiB, as systemd's KeepFree (room.py).
    keep_free_bytes: int | None = None
    kept_max_bytes: int = 64 * MB  # quarantine and unattributed copies, each, at most
    # Where the system path's stand-in links for each package live (pgod/optimize/substitution.py);
    # None: no binary substitution, the optimized builds are only in profile_link.
    substitute_dir: Path | None = None
    # A counter above this is no real run's (2^56: a billion increments a second for two
    # years): the file is refused. Any user's runs count, but not with any value.
    max_counter: int = DEFAULT_MAX_COUNTER
    # Whose profiles count: None, anyone's; else only files owned by these uids.
    accept_uids: frozenset[int] | None = None
    # Live runs (programs that keep running, intake/live.py): how often their snapshots are read,
    # and per uid how many runs are followed and how many bytes are read per poll.
    live_interval_s: float = 300.0
    live_max_runs_per_uid: int = 1024
    live_max_bytes_per_poll: int = 32 * MB
    # When a package past its threshold builds (pgod/schedule): the first build once the profile
    # changed at most `settled_percent` over the last checkpoint step, later ones once it changed
    # at least `rebuild_change_percent` since the profile the build in use was made from
    # (100 and 0: bytes alone decide, as before); and the machine: on AC unless
    # `build_on_battery`, and idle: CPU use below `build_idle_cpu_percent` over the last
    # `build_idle_seconds` (100: never wait).
    settled_percent: float = DEFAULT_SETTLED_PERCENT
    rebuild_change_percent: float = DEFAULT_REBUILD_CHANGE_PERCENT
    build_on_battery: bool = False
    build_idle_cpu_percent: float = 25.0
    build_idle_seconds: float = 60.0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "pgod.sqlite"


class _Reader:
    """Typed access to one TOML table, raising ConfigError with the dotted key on mismatch."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path = path
        self.table = table
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., what: str = "") -> Any:
        if name not in self.table:
            if default is ...:
                raise self.error(name, "missing required key")
            return default
        value = self.table[name]
        # bool is an int in Python; a threshold of `true` is a mistake, not 1.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {what or _kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {what or _kind_name(kind)}, got {_toml_type(value)}")
        return value

    def absolute_path(self, name: str, default: Any = ...) -> Path:
        raw = self.get(name, str, default, what="an absolute path (string)")
        if raw is None:
            return None  # type: ignore[return-value]
        path = Path(raw)
        if not path.is_absolute():
            raise self.error(name, f"must be an absolute path, got {raw!r}")
        return path

    def megabytes(self, name: str, default: Any = ..., allow_zero: bool = False) -> int:
        value = self.get(name, (int, float), default, what="a number of megabytes")
        if value < 0 or (value == 0 and not allow_zero):
            raise self.error(name, f"must be {'zero or more' if allow_zero else 'positive'}, got {value}")
        return int(value * MB)

    def string_list(self, name: str, allow_empty_items: bool = False) -> tuple[str, ...]:
        value = self.get(name, list, what="a list of strings")
        if not value:
            raise self.error(name, "must not be empty")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(self.path, f"{self.key(name)}[{index}]", f"expected a string, got {_toml_type(item)}")
            if not item and (index == 0 or not allow_empty_items):
                raise ConfigError(self.path, f"{self.key(name)}[{index}]", "must not be empty")
        return tuple(value)

    def reject_unknown(self, known: set[str]) -> None:
        for name in self.table:
            if name not in known:
                raise self.error(name, f"unknown key (known: {', '.join(sorted(known))})")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _toml_type(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


_TOP_KEYS = {
    "spool_dir",
    "state_dir",
    "profile_link",
    "threshold_mb",
    "activation",
    "admin_group",
    "max_file_mb",
    "unattributed_max_files",
    "build_retry_seconds",
    "merge_user",
    "keep_free_mb",
    "kept_max_mb",
    "substitute_dir",
    "max_counter",
    "accept_uids",
    "live_interval_s",
    "live_max_runs_per_uid",
    "live_max_mb_per_poll",
    "settled_percent",
    "rebuild_change_percent",
    "build_on_battery",
    "build_idle_cpu_percent",
    "build_idle_seconds",
    "packages",
}
# Package names become file names under state_dir (profiles/<name>/, logs): no "/" and no "..".
# Dots stay: NixOS attribute paths such as "xorg.xeyes" are package names.
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")
_PACKAGE_KEYS = {
    "profile_build", "build", "threshold_mb", "llvm_profdata", "cs_build", "cs_threshold_mb", "benchmark",
    "baseline_build", "min_speedup", "benchmark_rounds", "benchmark_timeout_s",
}
MIN_BENCHMARK_ROUNDS = 5  # fewer gives no median worth a decision


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read, parse and validate the config file; raise ConfigError naming file and key."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied reading the file") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(path, None, f"cannot read: {err.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, None, f"invalid TOML: {err}") from None
    return parse_config(document, path)


def parse_config(document: dict[str, Any], path: Path) -> Config:
    """Validate an already parsed TOML document (split out so tests can feed dicts)."""
    top = _Reader(path, document)
    top.reject_unknown(_TOP_KEYS)
    threshold_bytes = top.megabytes("threshold_mb", 64)
    activation = top.get("activation", str, "notify")
    if activation not in ACTIVATION_MODES:
        raise top.error("activation", f"must be one of {', '.join(map(repr, ACTIVATION_MODES))}, got {activation!r}")
    packages_table = top.get("packages", dict, {})
    packages = {}
    for name, table in packages_table.items():
        if not _PACKAGE_NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(
                path, f"packages.{name}", "a package name is letters, digits and . _ + - (it names files in state_dir), "
                "at most 100 characters, not . or .."
            )
        if not isinstance(table, dict):
            raise ConfigError(path, f"packages.{name}", f"expected a table, got {_toml_type(table)}")
        packages[name] = _parse_package(path, name, table, threshold_bytes)
    unattributed_max_files = top.get("unattributed_max_files", int, 1000)
    if unattributed_max_files < 0:
        raise top.error("unattributed_max_files", "must not be negative")
    max_counter = top.get("max_counter", int, DEFAULT_MAX_COUNTER)
    if not 0 < max_counter < 1 << 64:
        raise top.error("max_counter", f"must be between 1 and 2^64 - 1, got {max_counter}")
    accept_uids = top.get("accept_uids", list, None)
    if accept_uids is not None and not all(isinstance(u, int) and not isinstance(u, bool) and 0 <= u < 1 << 32 for u in accept_uids):
        raise top.error("accept_uids", "must be a list of uids (integers from 0), e.g. [0, 1000]")
    build_retry_seconds = top.get("build_retry_seconds", (int, float), 30, what="a number of seconds")
    if build_retry_seconds <= 0:
        raise top.error("build_retry_seconds", f"must be positive, got {build_retry_seconds}")
    live_interval_s = top.get("live_interval_s", (int, float), 300, what="a number of seconds")
    if not 1 <= live_interval_s <= 86400:
        raise top.error("live_interval_s", f"must be between 1 and 86400 seconds, got {live_interval_s}")
    live_max_runs = top.get("live_max_runs_per_uid", int, 1024)
    if live_max_runs < 1:
        raise top.error("live_max_runs_per_uid", f"must be at least 1, got {live_max_runs}")
    percents = {}
    for key, default in (("settled_percent", DEFAULT_SETTLED_PERCENT),
                         ("rebuild_change_percent", DEFAULT_REBUILD_CHANGE_PERCENT), ("build_idle_cpu_percent", 25)):
        percents[key] = float(top.get(key, (int, float), default, what="a percentage"))
        if not 0 <= percents[key] <= 100:
            raise top.error(key, f"must be between 0 and 100, got {percents[key]:g}")
    build_idle_seconds = top.get("build_idle_seconds", (int, float), 60, what="a number of seconds")
    if not 1 <= build_idle_seconds <= 86400:
        raise top.error("build_idle_seconds", f"must be between 1 and 86400 seconds, got {build_idle_seconds}")
    return Config(
        path=path,
        build_retry_seconds=float(build_retry_seconds),
        spool_dir=top.absolute_path("spool_dir", "/var/spool/pgod"),
        state_dir=top.absolute_path("state_dir", "/var/lib/pgod"),
        profile_link=top.absolute_path("profile_link", DEFAULT_PROFILE_LINK),
        threshold_bytes=threshold_bytes,
        activation=activation,
        admin_group=top.get("admin_group", str, "wheel"),
        # A file is read whole to be checked: this cap bounds pgod's memory (merge/checked.py).
        max_file_bytes=top.megabytes("max_file_mb", 64),
        unattributed_max_files=unattributed_max_files,
        packages=packages,
        merge_user=top.get("merge_user", str, DEFAULT_MERGE_USER),
        keep_free_bytes=top.megabytes("keep_free_mb", allow_zero=True) if "keep_free_mb" in document else None,
        kept_max_bytes=top.megabytes("kept_max_mb", 64, allow_zero=True),
        substitute_dir=top.absolute_path("substitute_dir", None),
        max_counter=max_counter,
        accept_uids=None if accept_uids is None else frozenset(accept_uids),
        live_interval_s=float(live_interval_s),
        live_max_runs_per_uid=live_max_runs,
        live_max_bytes_per_poll=top.megabytes("live_max_mb_per_poll", 32),
        **percents,
        build_on_battery=top.get("build_on_battery", bool, False),
        build_idle_seconds=float(build_idle_seconds),
    )


def _parse_package(path: Path, name: str, table: dict[str, Any], default_threshold: int) -> PackageConfig:
    reader = _Reader(path, table, prefix=f"packages.{name}.")
    reader.reject_unknown(_PACKAGE_KEYS)
    profile_build = reader.string_list("profile_build")
    for index, item in enumerate(profile_build):
        if not item.startswith("/"):
            raise ConfigError(path, f"packages.{name}.profile_build[{index}]", f"must be an absolute path, got {item!r}")
    benchmark = reader.string_list("benchmark", allow_empty_items=True) if "benchmark" in table else None
    baseline_build = reader.absolute_path("baseline_build", None)
    if benchmark is not None and baseline_build is None:
        raise reader.error("benchmark", "needs baseline_build, the store path of the package as built without PGO"
                           " (the NixOS module fills it in)")
    min_speedup = reader.get("min_speedup", (int, float), 1.0, what="a ratio such as 1.0")
    if not 0 < min_speedup < 100:
        raise reader.error("min_speedup", f"must be a ratio above 0 (1.0: never slower than the baseline), got {min_speedup}")
    rounds = reader.get("benchmark_rounds", int, MIN_BENCHMARK_ROUNDS)
    if not MIN_BENCHMARK_ROUNDS <= rounds <= 1000:
        raise reader.error("benchmark_rounds", f"must be from {MIN_BENCHMARK_ROUNDS} to 1000, got {rounds}")
    timeout = reader.get("benchmark_timeout_s", (int, float), 600, what="a number of seconds")
    if timeout <= 0:
        raise reader.error("benchmark_timeout_s", f"must be positive, got {timeout}")
    cs_build = reader.string_list("cs_build", allow_empty_items=True) if "cs_build" in table else None
    if cs_build is None and "cs_threshold_mb" in table:
        raise reader.error("cs_threshold_mb", "only means something with cs_build (the context-sensitive stage)")
    threshold_bytes = reader.megabytes("threshold_mb", default_threshold / MB)
    return PackageConfig(
        name=name,
        cs_build=cs_build,
        cs_threshold_bytes=reader.megabytes("cs_threshold_mb", threshold_bytes / MB) if cs_build else None,
        benchmark=benchmark,
        baseline_build=baseline_build,
        min_speedup=float(min_speedup),
        benchmark_rounds=rounds,
        benchmark_timeout_seconds=float(timeout),
        profile_build=tuple(Path(p) for p in profile_build),
        # An argv: empty arguments are legitimate (`--option substituters ""`), an empty program is not.
        build=reader.string_list("build", allow_empty_items=True),
        threshold_bytes=threshold_bytes,
        llvm_profdata=reader.absolute_path("llvm_profdata", None),
    )
