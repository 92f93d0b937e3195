"""Spool names waiting to be claimed, per owner uid, served in turn: no user can hurt another by volume.

The spool is shared, so one user can flood it. Names are put in a queue of their file's owner (one
lstat, which the claim needs anyway) and each claim batch takes from every user's queue in turn,
so another user's file waits behind at most one batch, not behind the flood. Bounds:

- at most NAMES_PER_UID names wait per uid; past that a user's names are dropped and the spool is
  scanned again later (the files are still there: an overflow costs a rescan, not memory);
- a uid with PENDING_FILES_PER_UID files (or PENDING_BYTES_PER_UID bytes) claimed but not yet
  merged gets nothing more claimed until its merges catch up. Both stay below one merge batch
  (merge/batches.py), so the next merge of a package always reaches other users' files. A file's
  bytes (its size when last seen) count before it is taken, so they are never read past the
  bound: a file that would cross it waits, unless its uid has nothing pending (then it goes
  alone, within the per-file cap), so a file larger than the bound is not stuck for good.

Names squatting a program's (squatting.py) wait in a queue of their own, taken first (a share
of each batch at most: SQUATS_SHARE) and never held back by their owner's pending bounds: a
squatter must not keep its names in place by flooding. They are never pending (they are claimed
and refused, or left for a moment), and are bounded in all by NAMES_PER_UID.

On a single-user machine every name is in one queue and taken in arrival order, as before.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

from pgod.intake.squatting import squat_candidate

NAMES_PER_UID = 20_000
PENDING_FILES_PER_UID = 4_000  # below merge.batches.MERGE_BATCH
PENDING_BYTES_PER_UID = 48 << 20  # below merge.batches.MERGE_BATCH_BYTES
SQUATS_SHARE = 4  # squatting names get at most 1/4 of a claim batch: making them starves no one
LIGHT_USER_FILES = 100  # a uid with fewer pending files than this, beside one with more, is merged at once
UNKNOWN_UID = -1  # a claimed file whose owner was not recorded (rows from before schema 3)


@dataclass
class UserQueue:
    """One uid's waiting names, oldest first: name → (name, found by a scan rather than an
    event, the name's lstat when it was last offered). The claim looks at that lstat instead of
    taking another; every sighting of the name refreshes it."""

    names: OrderedDict = field(default_factory=OrderedDict)
    dropped: int = 0  # names not kept because the queue was full, since the last rescan


class FairIntake:
    def __init__(self, spool: str) -> None:
        self._spool = spool
        self._queues: dict[int, UserQueue] = {}
        self._turn: list[int] = []  # uids in the order they are served next
        self.rescan_owed = False  # names were dropped: the spool must be looked at again
        self.pending: dict[int, tuple[int, int]] = {}  # uid → (files, bytes) claimed, not merged
        self._squats: OrderedDict = OrderedDict()  # names squatting a program's, as in UserQueue
        self.offered: dict[int, int] = {}  # uid → names offered this cycle (cycle_done clears it)

    def __len__(self) -> int:
        return len(self._squats) + sum(len(queue.names) for queue in self._queues.values())

    def offer(self, names, at_start: bool = False) -> None:
        """Queue spool names under their owners, each with its lstat of now. A name already
        waiting keeps its place, and its lstat is refreshed (an event for it also outranks a
        scan's sighting: it is no longer "found at start")."""
        spool = self._spool
        for name in names:
            key = str(name)
            try:
                info = os.lstat(f"{spool}/{name}")
            except OSError:
                # Gone already (claimed, or deleted by its maker): nothing to claim. Should it
                # come back, its new events bring it again.
                continue
            uid = info.st_uid
            queue = self._queues.get(uid)
            if squat_candidate(key, info):  # cheap first: only a folder or an empty file looks in /proc
                if queue is not None:
                    queue.names.pop(key, None)
                self._enqueue(self._squats, key, name, at_start, info)
                continue
            self._squats.pop(key, None)  # filled since: a program's after all
            self.offered[uid] = self.offered.get(uid, 0) + 1
            if queue is None:
                queue = self._queues[uid] = UserQueue()
                self._turn.append(uid)
            if not self._enqueue(queue.names, key, name, at_start, info):
                queue.dropped += 1

    def _enqueue(self, names: OrderedDict, key: str, name, at_start: bool, info) -> bool:
        """Put or refresh one entry; False if the queue is full (then a rescan is owed)."""
        if key in names:
            old_name, old_at_start, _old_info = names[key]
            names[key] = (old_name, old_at_start, info) if at_start else (name, False, info)
            return True
        if len(names) >= NAMES_PER_UID:
            self.rescan_owed = True
            return False
        names[key] = (name, at_start, info)
        return True

    def over_pending(self, uid: int) -> str | None:
        """The bound that holds this uid's next name back, or None: its files, or its bytes,
        counting the next file's size before it is read (unless nothing of the uid's waits)."""
        files, size = self.pending.get(uid, (0, 0))
        if files >= PENDING_FILES_PER_UID:
            return "pending_files"
        if size >= PENDING_BYTES_PER_UID:
            return "pending_bytes"
        queue = self._queues.get(uid)
        if files and queue is not None and queue.names:
            if size + next(iter(queue.names.values()))[2].st_size > PENDING_BYTES_PER_UID:
                return "pending_bytes"
        return None

    def take(self, limit: int) -> list[tuple[str, bool, os.stat_result]]:
        """Up to ``limit`` (name, found at start, lstat) entries: squatting names first (up to a
        share of the batch), then from every uid in turn that is within its pending bounds."""
        taken: list[tuple[str, bool, os.stat_result]] = []
        while self._squats and len(taken) < max(1, limit // SQUATS_SHARE):
            taken.append(self._squats.popitem(last=False)[1])
        while len(taken) < limit:
            ready = [uid for uid in self._turn if self._queues[uid].names and self.over_pending(uid) is None]
            if not ready:
                break
            share = max(1, (limit - len(taken)) // len(ready))
            for uid in ready:
                queue = self._queues[uid].names
                files, size = self.pending.get(uid, (0, 0))
                count = min(share, len(queue), limit - len(taken), PENDING_FILES_PER_UID - files)
                served = 0
                while served < count:
                    key, entry = next(iter(queue.items()))
                    if (files or served) and size + entry[2].st_size > PENDING_BYTES_PER_UID:
                        break  # counted before it is read: it waits for this uid's merges
                    del queue[key]
                    taken.append(entry)
                    served += 1
                    size += entry[2].st_size
                # Counted as pending from now on; the next look at the database corrects it.
                self.pending[uid] = (files + served, size)
            # Whoever was served goes to the back of the line for the next batch.
            self._turn = [uid for uid in self._turn if uid not in ready] + ready
        for uid in [uid for uid in self._turn if not self._queues[uid].names and uid not in self.pending]:
            del self._queues[uid]
            self._turn.remove(uid)
        return taken

    def light_user_waiting(self) -> bool:
        """Do a few files of one uid wait to be merged beside the many of another (a flood)?
        Then the merge should not wait to gather more: that would hold the few up behind the
        flood. A flood counts by its files pending and its names queued: one of files that are
        never merged (unattributed, junk) has none pending, and the spool is never quiet while
        it lasts. Never on a single-user machine."""
        pending = {uid: files for uid, (files, _size) in self.pending.items() if files and uid != UNKNOWN_UID}
        light = [uid for uid, files in pending.items() if files < LIGHT_USER_FILES]
        if not light:
            return False
        load = dict(pending)
        for uid, queue in self._queues.items():
            load[uid] = load.get(uid, 0) + len(queue.names)
        for uid, count in self.offered.items():  # a flood pgod keeps up with queues few names
            load[uid] = load.get(uid, 0) + count
        return any(
            files >= LIGHT_USER_FILES and any(uid != other for uid in light)
            for other, files in load.items() if other != UNKNOWN_UID
        )

    def cycle_done(self) -> None:
        self.offered.clear()

    def waiting(self) -> bool:
        """Are there names that could be taken now?"""
        return bool(self._squats) or any(queue.names and self.over_pending(uid) is None for uid, queue in self._queues.items())

    def rescan_started(self) -> None:
        self.rescan_owed = False
        for queue in self._queues.values():
            queue.dropped = 0

    def report(self, limit: int = 10) -> list[dict]:
        """For status: the uids with names waiting or files pending, the busiest first, and which
        bound each is at (if any)."""
        uids = set(self._queues) | set(self.pending)
        rows = []
        for uid in uids:
            queue = self._queues.get(uid)
            files, size = self.pending.get(uid, (0, 0))
            over = [bound for bound in (self.over_pending(uid),) if bound]
            if queue is not None and len(queue.names) >= NAMES_PER_UID:
                over.append("queued_names")
            rows.append({
                "uid": uid,
                "queued": len(queue.names) if queue else 0,
                "pending_files": files,
                "pending_bytes": size,
                "over": over,
            })
        rows.sort(key=lambda row: (-len(row["over"]), -row["queued"] - row["pending_files"]))
        return rows[:limit]
