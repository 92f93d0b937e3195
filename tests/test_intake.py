"""The fair intake's own logic, on real files owned by two uids: who is served when, which bound
stops whom, and what a queued name carries to the claim. The daemon-level proof (a flood and
another user's profiles, the real daemon) is test_fairness.py."""

from __future__ import annotations

import itertools
import os

import pytest

from pgod.intake import fair as intake
from pgod.intake.fair import FairIntake

FLOODER, OTHER = 65534, 4321


@pytest.fixture
def spool(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to other uids (make test runs as root)")
    return tmp_path


def make(spool, uid: int, count: int, prefix: str) -> list[str]:
    names = []
    for i in range(count):
        path = spool / f"{prefix}{i}.profraw"
        path.write_bytes(b"x")
        os.chown(path, uid, uid)
        names.append(path.name)
    return names


def test_each_uid_is_served_in_turn_however_many_names_another_has(spool):
    fair = FairIntake(str(spool))
    fair.offer(make(spool, FLOODER, 500, "f"))
    fair.offer(make(spool, OTHER, 3, "o"))
    taken = [name for name, _at_start, _info in fair.take(100)]
    assert len(taken) == 100
    # The other user's three files are in the first batch, not behind the flooder's 500.
    assert {"o0.profraw", "o1.profraw", "o2.profraw"} <= set(taken)
    # Within one uid, arrival order.
    flood = [name for name in taken if name.startswith("f")]
    assert flood == [f"f{i}.profraw" for i in range(len(flood))]


def test_a_uid_at_its_pending_bound_gets_nothing_more_and_others_still_do(spool):
    fair = FairIntake(str(spool))
    fair.offer(make(spool, FLOODER, 20, "f"))
    fair.offer(make(spool, OTHER, 5, "o"))
    fair.pending = {FLOODER: (intake.PENDING_FILES_PER_UID, 0)}
    taken = [name for name, _at_start, _info in fair.take(100)]
    assert sorted(taken) == [f"o{i}.profraw" for i in range(5)]
    assert fair.over_pending(FLOODER) == "pending_files"
    assert [row["over"] for row in fair.report() if row["uid"] == FLOODER] == [["pending_files"]]
    fair.pending = {FLOODER: (0, intake.PENDING_BYTES_PER_UID)}
    assert fair.over_pending(FLOODER) == "pending_bytes" and not fair.waiting()


def test_names_past_the_queue_bound_are_dropped_and_a_rescan_owed(spool, monkeypatch):
    monkeypatch.setattr(intake, "NAMES_PER_UID", 10)
    fair = FairIntake(str(spool))
    fair.offer(make(spool, FLOODER, 25, "f"))
    assert len(fair) == 10 and fair.rescan_owed
    assert [row["over"] for row in fair.report()] == [["queued_names"]]
    fair.rescan_started()
    assert not fair.rescan_owed


def test_every_sighting_refreshes_what_a_queued_name_carries_to_the_claim(spool):
    """A rescan is how lost close events are made good, so a scan's sighting refreshes the
    lstat too (an old "empty" one would leave a finished profile alone for good)."""
    fair = FairIntake(str(spool))
    (name,) = make(spool, OTHER, 1, "o")
    fair.offer([name], at_start=True)  # seen by a scan while one byte long
    (spool / name).write_bytes(b"longer now")
    fair.offer([name], at_start=True)  # the rescan after lost events
    [(taken, at_start, info)] = fair.take(10)
    assert (taken, at_start, info.st_size, info.st_uid) == (name, True, 10, OTHER)
    fair.offer([name], at_start=True)
    fair.offer([name])  # a close event: no longer "found at start"
    [(_taken, at_start, _info)] = fair.take(10)
    assert at_start is False


def test_a_uids_bytes_are_counted_as_its_names_are_taken(spool, monkeypatch):
    monkeypatch.setattr(intake, "PENDING_BYTES_PER_UID", 25)
    fair = FairIntake(str(spool))
    names = make(spool, OTHER, 5, "o")
    for name in names:
        (spool / name).write_bytes(b"x" * 10)
    fair.offer(names)
    # Counted before they are read: a third file would make 30 bytes, past the bound of 25.
    assert [name for name, _a, _i in fair.take(100)] == names[:2]
    assert fair.pending[OTHER] == (2, 20) and fair.over_pending(OTHER) == "pending_bytes"
    assert not fair.waiting() and fair.take(100) == []


def test_a_file_larger_than_the_bytes_bound_goes_alone(spool, monkeypatch):
    """Else it would wait for good; alone, what is read stays one file (within the per-file cap)."""
    monkeypatch.setattr(intake, "PENDING_BYTES_PER_UID", 25)
    fair = FairIntake(str(spool))
    names = make(spool, OTHER, 3, "o")
    (spool / names[0]).write_bytes(b"x" * 100)
    fair.offer(names)
    assert [name for name, _a, _i in fair.take(100)] == names[:1]
    assert fair.take(100) == [] and fair.over_pending(OTHER) == "pending_bytes"
    fair.pending = {}  # merged
    assert [name for name, _a, _i in fair.take(100)] == names[1:]


def test_squatting_names_are_taken_first_whatever_their_owner_has_pending(spool):
    """A squatter over its pending bound must not keep the pid names it took (a program that
    later gets such a pid could not write its profile)."""
    fair = FairIntake(str(spool))
    fair.offer(make(spool, FLOODER, 50, "f"))
    free_pid = next(pid for pid in range(400000, 4000000) if not os.path.exists(f"/proc/{pid}"))
    squat = spool / f"{free_pid}.profraw"
    squat.touch()
    os.chown(squat, FLOODER, FLOODER)
    fair.offer([squat.name])
    fair.pending = {FLOODER: (intake.PENDING_FILES_PER_UID, 0)}
    assert [name for name, _a, _i in fair.take(10)] == [squat.name]
    assert FLOODER not in fair.pending or fair.pending[FLOODER][0] == intake.PENDING_FILES_PER_UID
    # Filled meanwhile (a forked child's exit write, say): an ordinary name of its owner again.
    fair.offer([squat.name])
    squat.write_bytes(b"a profile")
    fair.offer([squat.name])
    fair.pending = {}
    assert squat.name in [name for name, _a, _i in fair.take(100)]


def test_a_name_that_is_gone_when_offered_is_not_queued(spool):
    """Claimed already, or deleted by its maker (a churn of names costs no queue room): should
    it come back, its new events bring it again."""
    fair = FairIntake(str(spool))
    fair.offer(["gone.profraw"])
    assert len(fair) == 0 and fair.take(10) == [] and fair.report() == []


def test_a_single_user_is_never_a_light_user_beside_a_flood(spool):
    fair = FairIntake(str(spool))
    fair.pending = {0: (5000, 1 << 20)}
    assert not fair.light_user_waiting()
    fair.pending = {0: (5000, 1 << 20), OTHER: (3, 1000)}
    assert fair.light_user_waiting()


def test_a_flood_of_files_never_merged_still_makes_another_user_light(spool):
    """Unattributed files or junk are never pending: the flood's queued names say it is one."""
    fair = FairIntake(str(spool))
    fair.offer(make(spool, FLOODER, 200, "f"))
    fair.pending = {OTHER: (1, 100)}
    assert fair.light_user_waiting()
    fair.pending = {FLOODER: (1, 100)}  # its own names make no one else wait
    assert not fair.light_user_waiting()


def test_squatting_names_take_no_more_than_their_share_of_a_batch(spool):
    """Squatting names jump the queues, so making many of them must not starve anyone else."""
    fair = FairIntake(str(spool))
    free = list(itertools.islice((pid for pid in range(400000, 4000000) if not os.path.exists(f"/proc/{pid}")), 100))
    for pid in free:
        squat = spool / f"{pid}.profraw"
        squat.touch()
        os.chown(squat, FLOODER, FLOODER)
    fair.offer([f"{pid}.profraw" for pid in free])
    fair.offer(make(spool, OTHER, 50, "o"))
    taken = [name for name, _a, _i in fair.take(40)]
    assert len(taken) == 40 and sum(name.startswith("o") for name in taken) == 40 - 40 // intake.SQUATS_SHARE
