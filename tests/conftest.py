"""Shared fixtures: an instrumented C program, a private bus, and a daemon to run against them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from demo.nixlocal import describe as describe_local_nix
from demo.nixlocal import use_local_nix
from testbed.bus import PrivateBus
from testbed.clangs import elf_build_id, find_clang, missing_packages_message
from testbed.config import SCHEDULE_OFF, write_config
from testbed.daemon import Daemon
from testbed.notifications import NotificationServer
from testbed.programs import WORKLOAD_C

# Every Nix command of the run, and of the daemons it starts, gets the fixture builds' settings.
use_local_nix()


def require_clang(version: int):
    """The installed clang-N with its llvm-profdata, or skip naming the Debian packages."""
    clang = find_clang(version)
    if clang is None:
        pytest.skip(missing_packages_message(version))
    return clang


@pytest.fixture(scope="session")
def clang14():
    return require_clang(14)


@pytest.fixture(scope="session")
def workload(tmp_path_factory, clang14) -> Path:
    """An instrumented executable in a folder of its own (the package's `profile_build`): the
    workload program, whose counters depend on its input (testbed.programs.workload_inputs), so
    200 runs give 200 different profiles."""
    root = tmp_path_factory.mktemp("workload")
    (root / "bin").mkdir()
    source = root / "workload.c"
    source.write_text(WORKLOAD_C)
    exe = clang14.compile(source, root / "bin" / "workload")
    assert elf_build_id(exe), "the instrumented program must carry a build-id"
    return root


@pytest.fixture
def bus(tmp_path):
    private = PrivateBus(tmp_path)
    yield private
    private.close()


@pytest.fixture
def notification_server(tmp_path, bus):
    """dunst on an Xvfb screen and the test's bus: what it received, the test can read."""
    directory = tmp_path / "dunst"
    directory.mkdir()
    server = NotificationServer(directory, bus.env())
    yield server
    server.close()


class PgodSetup:
    """Folders and config for one test's daemon; `daemon()` starts it."""

    def __init__(self, root: Path, bus: PrivateBus) -> None:
        self.root = root
        self.bus = bus
        self.spool = root / "spool"
        self.state = root / "state"
        self.spool.mkdir()
        self.config_path = root / "pgod.toml"
        self.log_path = root / "pgod.log"
        self.daemons: list[Daemon] = []

    def write_config(self, packages: dict[str, dict], **top) -> Path:
        settings = {
            "spool_dir": str(self.spool),
            "state_dir": str(self.state),
            "profile_link": str(self.root / "profile"),
            "threshold_mb": 64,
            # Bytes alone decide when a build is due, and the machine's load never delays it:
            # the tests of maturity and scheduling (test_schedule_*.py) set their own.
            **SCHEDULE_OFF,
            **top,
        }
        return write_config(self.config_path, settings, packages)

    def daemon(self, prefix: list[str] | None = None, **kwargs) -> Daemon:
        daemon = Daemon(self.config_path, self.bus, self.log_path, prefix=prefix or [])
        self.daemons.append(daemon)
        return daemon.start(**kwargs)


@pytest.fixture
def pgod(tmp_path, bus, request):
    setup = PgodSetup(tmp_path, bus)
    yield setup
    for daemon in setup.daemons:
        daemon.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and setup.log_path.exists():
        print(f"\n----- pgod log ({setup.log_path}) -----\n{setup.log_path.read_text(errors='replace')[-20000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def llvm_profdata_14(clang14) -> str:
    return str(clang14.profdata)


def pytest_report_header(config):
    tools = {name: shutil.which(name) for name in ("dbus-daemon", "nix-build", "clang-14", "llvm-profdata-14")}
    return ["tools: " + ", ".join(f"{k}={v or 'MISSING'}" for k, v in tools.items()), describe_local_nix()]


@pytest.fixture(scope="module", params=[14, 19], ids=lambda v: f"clang{v}")
def built(request, tmp_path_factory):
    """The live-object test programs (testbed/live_programs.py) built by clang 14, then 19."""
    from testbed.clangs import find_clang, missing_packages_message
    from testbed.live_programs import build

    clang = find_clang(request.param)
    if clang is None:
        pytest.skip(missing_packages_message(request.param))
    return build(clang, tmp_path_factory.mktemp(f"live-clang{request.param}"))


@pytest.fixture
def programs():
    """Programs a test started (testbed.live_programs.start), killed if still running at its end."""
    started: list = []
    yield started
    for program in started:
        program.kill()
