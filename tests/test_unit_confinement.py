"""pgod under its own unit's capability set, on the host: what a NixOS user's daemon can do.

Every other host test runs pgod as full root. Under pgod.service it has five capabilities and
no_new_privs; with them it once could not start (EPERM chmod-ing the merge folder it had given
away) nor, after that, finish a merge (EACCES removing the tool's output from that folder). The
booted-machine tests (test_guest_*.py) add the unit's namespaces and syscall filter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_daemon_ingest import reference_profile, run_workload
from testbed.daemon import wait_for
from testbed.profiles import profdata_show
from testbed.programs import workload_inputs
from unitfile import capability_bounding_set, setpriv_as_unit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops capabilities from root: run as root (make test does)")


def test_the_unit_grants_exactly_five_capabilities():
    assert sorted(capability_bounding_set()) == ["chown", "dac_read_search", "setgid", "setuid", "sys_nice"]


def test_pgod_with_only_its_units_capabilities_starts_merges_and_restarts(pgod, workload, llvm_profdata_14, tmp_path):
    exe = workload / "bin" / "workload"
    inputs = workload_inputs(20)
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon(prefix=setpriv_as_unit())
    assert _capabilities(daemon.process.pid)["CapBnd"] == _mask(capability_bounding_set())

    run_workload(exe, pgod.spool, inputs[:10])
    wait_for(lambda: daemon.package("workload")["files"] == 10, 60, "10 files merged under the unit's capabilities")
    # A restart finds the merge folder (and any output a merge left in it) as the daemon left it.
    assert daemon.stop() == 0
    daemon = pgod.daemon(prefix=setpriv_as_unit())
    run_workload(exe, pgod.spool, inputs[10:])
    package = wait_for(lambda: (p := daemon.package("workload"))["files"] == 20 and p, 60, "20 files merged after a restart")

    expected = reference_profile(tmp_path, exe, inputs, llvm_profdata_14)
    assert profdata_show(llvm_profdata_14, Path(package["profile"])) == profdata_show(llvm_profdata_14, expected)
    assert package["quarantined"] == 0 and package["last_error"] is None


def _capabilities(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            fields[key] = int(value.strip(), 16)
    return fields


_CAP_NUMBERS = {"chown": 0, "dac_read_search": 2, "setgid": 6, "setuid": 7, "sys_nice": 23}


def _mask(names: list[str]) -> int:
    return sum(1 << _CAP_NUMBERS[name] for name in names)
