"""No user can hurt another by volume: intake served per owner uid, in turn, within bounds.

Real daemon; the flood is written as uid nobody, the other user's programs run as uid 4321.
What is checked is order and memory, not time (the latency figures are benchmarks/fairness.py's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_dbus_bounds import rss_mb
from test_merge_isolation import sample_profile, spool_for_everyone  # noqa: F401 (fixtures)
from testbed.daemon import wait_for
from testbed.floods import CHURN, FLOOD
from testbed.programs import workload_inputs
from testbed.users import AS_NOBODY, as_uid

OTHER_UID = 4321
AS_OTHER = as_uid(OTHER_UID)




def shares(daemon) -> dict[int, int]:
    document = json.loads(daemon.pgoctl("show", "workload", "--json").stdout)
    return {share["uid"]: share["files"] for share in document["contributions"]}


def flooded(spool: Path) -> int:
    return sum(1 for entry in spool.iterdir() if entry.name.startswith("flood-"))


def test_another_users_profiles_are_counted_ahead_of_a_flood(pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    flood = 30_000
    subprocess.run([*AS_NOBODY, sys.executable, "-c", FLOOD, str(spool_for_everyone), str(flood)],
                   input=sample_profile, check=True, timeout=300)
    daemon = pgod.daemon()
    for args in workload_inputs(3):
        subprocess.run([*AS_OTHER, str(workload / "bin" / "workload"), *args], check=True, capture_output=True,
                       env={"LLVM_PROFILE_FILE": f"{spool_for_everyone}/%p.profraw", "PATH": "/usr/bin:/bin"})
    wait_for(lambda: shares(daemon).get(OTHER_UID) == 3, 120, "the other user's three profiles merged")
    left = flooded(spool_for_everyone)
    assert left > flood // 3, f"the other user waited behind the flood: only {left} of {flood} flood files were left"
    # The flood is bounded per uid while it lasts, and all of it is counted in the end.
    # Status lists only uids with names queued or files pending: a uid between two scan steps has
    # neither, and is absent.
    intake = {row["uid"]: row for row in daemon.status()["daemon"]["intake"]}
    assert intake.get(65534, {"pending_files": 0})["pending_files"] <= 4000
    wait_for(lambda: shares(daemon).get(65534) == flood, 300, "the whole flood merged", interval=0.5)


def test_a_million_names_churned_cost_no_memory_that_stays(pgod, spool_for_everyone, workload, llvm_profdata_14):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}})
    daemon = pgod.daemon()
    churners = [
        subprocess.Popen([*AS_NOBODY, sys.executable, "-c", CHURN, str(spool_for_everyone), str(500_000)])
        for _ in range(2)
    ]
    peak = 0.0
    while any(churner.poll() is None for churner in churners):
        peak = max(peak, rss_mb(daemon.process.pid))
        try:
            churners[0].wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    assert all(churner.wait() == 0 for churner in churners)
    assert peak < 150, f"RSS reached {peak:.0f} MB"
    # The daemon still works: a real profile afterwards is counted.
    subprocess.run([*AS_OTHER, str(workload / "bin" / "workload"), "5", "after"], check=True, capture_output=True,
                   env={"LLVM_PROFILE_FILE": f"{spool_for_everyone}/%p.profraw", "PATH": "/usr/bin:/bin"})
    wait_for(lambda: daemon.package("workload")["files"] == 1, 120, "a profile after the churn merged")
