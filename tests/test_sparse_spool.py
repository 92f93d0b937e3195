"""A file's size is bounded by what it holds, and a uid's bytes by its pending bound, before pgod
reads a byte: nobody's sparse files (a few KB on disk that say 64 or 256 MiB) are refused unread,
its dense files at the per-file cap are merged, and pgod's memory stays under 150 MB all the
while; another user's profiles are counted beside them. Real daemon, files written as nobody."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed import crafted
from testbed.programs import workload_inputs
from testbed.daemon import wait_for
from testbed.users import AS_NOBODY
from pgod.intake import sparse
from test_dbus_bounds import rss_mb
from test_fairness import AS_OTHER, OTHER_UID, shares
from test_hostile_spool import daemon_rejections
from test_merge_isolation import sample_profile, spool_for_everyone  # noqa: F401 (fixtures)

MB = 1 << 20

# Writes stdin's pieces into a new file, holes where asked (argv: w<bytes> or h<bytes> each),
# and renames it into place whole, as nobody would.
SPARSE_WRITER = """
import os, sys
path, pieces = sys.argv[1], sys.argv[2:]
data, pos = sys.stdin.buffer.read(), 0
fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
for piece in pieces:
    size = int(piece[1:])
    if piece[0] == "w":
        os.write(fd, data[pos:pos + size])
        pos += size
    else:
        os.lseek(fd, size, os.SEEK_CUR)
os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
os.close(fd)
os.rename(path + ".part", path)
"""


def write_as_nobody(path: Path, pieces: list[bytes | int]) -> None:
    """``pieces``: bytes written, or an int, a hole of that many bytes."""
    data = b"".join(piece for piece in pieces if isinstance(piece, bytes))
    args = [f"w{len(piece)}" if isinstance(piece, bytes) else f"h{piece}" for piece in pieces]
    subprocess.run([*AS_NOBODY, sys.executable, "-c", SPARSE_WRITER, str(path), *args], input=data, check=True)


def written_mb(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/io").read_text().splitlines() if line.startswith("write_bytes:"))
    return int(line.split()[1]) / MB


def test_the_holes_of_a_file_are_found_where_its_blocks_do_not_cover_it(tmp_path):
    dense, holey = tmp_path / "dense", tmp_path / "holey"
    dense.write_bytes(b"\0" * (4 * MB))
    with open(holey, "wb") as out:
        out.write(b"x" * 4096)
        out.seek(4 * MB, os.SEEK_CUR)
        out.write(b"y" * 4096)
    for path, holes in ((dense, 0), (holey, 4 * MB)):
        fd = os.open(path, os.O_RDONLY)
        try:
            info = os.fstat(fd)
            assert sparse.may_be_sparse(info) == bool(holes)
            assert sparse.hole_bytes(fd, info.st_size) == holes
            assert (sparse.too_sparse(fd, info) is None) == (not holes)
        finally:
            os.close(fd)


def test_sparse_files_are_refused_unread_and_memory_stays_bounded(pgod, spool_for_everyone, workload, llvm_profdata_14, sample_profile):
    pgod.write_config({"workload": {"profile_build": [str(workload)], "build": ["true"], "llvm_profdata": llvm_profdata_14}},
                      threshold_mb=100_000)
    daemon = pgod.daemon()
    pid = daemon.process.pid
    written_before = written_mb(pid)
    at_cap = 64 * MB  # the default max_file_mb
    head, hole, tail = crafted.padded_after_counters(sample_profile, at_cap)
    write_as_nobody(spool_for_everyone / "sparse-at-cap.profraw", [head, hole, tail])
    half_head, half_hole, half_tail = crafted.padded_after_counters(sample_profile, at_cap // 2)
    write_as_nobody(spool_for_everyone / "sparse-two-parts.profraw", [half_head, half_hole, half_tail] * 2)
    big_head, big_hole, big_tail = crafted.padded_after_counters(sample_profile, 4 * at_cap)
    write_as_nobody(spool_for_everyone / "sparse-over-cap.profraw", [big_head, big_hole, big_tail])
    for index in range(2):  # what nobody may really make pgod read: dense files at the cap
        write_as_nobody(spool_for_everyone / f"dense-{index}.profraw", [head + bytes(hole) + tail])
    for args in workload_inputs(3):
        subprocess.run([*AS_OTHER, str(workload / "bin" / "workload"), *args], check=True, capture_output=True,
                       env={"LLVM_PROFILE_FILE": f"{spool_for_everyone}/%p.profraw", "PATH": "/usr/bin:/bin"})
    peak = 0.0

    def settled() -> bool:
        nonlocal peak
        peak = max(peak, rss_mb(pid))
        status = daemon.status()
        return status["packages"][0]["files"] == 5 and status["quarantine"]["files"] == 3

    wait_for(settled, 120, "the dense files and the other user's profiles merged, the sparse ones refused", interval=0.02)
    assert shares(daemon) == {OTHER_UID: 3, 65534: 2}
    reasons = {r["file"]: r["reason"] for r in daemon_rejections(pgod)}
    assert reasons == {"sparse-at-cap.profraw": "sparse", "sparse-two-parts.profraw": "sparse",
                       "sparse-over-cap.profraw": "oversized"}
    assert peak < 150, f"pgod's RSS reached {peak:.0f} MB"
    # Nothing of the holes was written out (the two-part file would have been copied part by part).
    assert written_mb(pid) - written_before < 16
    assert json.loads(daemon.pgoctl("status", "--json").stdout)["quarantine"]["files"] == 3
