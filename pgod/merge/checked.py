"""The raw-profile bytes ingest checked, kept in memory for their merge, within one budget.

Ingest reads each lone part whole to check it; keeping those bytes for the part's merge spares
reading and hashing them again (confined.gather_inputs takes them from here, and reads again,
against the recorded digest, only what is not here). Everything pgod holds of raw profiles at
once, these bytes and the one file or part being read, stays within CHECKED_CACHE_BYTES:
ingest and the merge make room here before they read anything whole. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# Raw-profile bytes pgod holds in memory at once: those ingest checked and keeps for their merge,
# and the one file or part being read (make_room). With the per-file cap at most this, the
# daemon's RSS stays about this much above its idle size, whatever the spool holds.
CHECKED_CACHE_BYTES = 64 << 20


class CheckedBytes:
    """Part path → the bytes ingest checked, oldest first, and their total size."""

    def __init__(self) -> None:
        self._held: dict[str, bytes] = {}
        self._size = 0

    @property
    def held(self) -> Mapping[str, bytes]:
        """The kept bytes by part path, for confined.gather_inputs (read only)."""
        return self._held

    def __contains__(self, path: str) -> bool:
        return path in self._held

    def remember(self, path: str, data: bytes) -> None:
        """Keep the bytes ingest just checked for the merge of their part (engine thread), so
        it need not read and hash them again; within CHECKED_CACHE_BYTES, else they are read."""
        if self._size + len(data) <= CHECKED_CACHE_BYTES:
            self.forget(path)
            self._held[path] = data
            self._size += len(data)

    def make_room(self, size: int, spare: Collection[str] = ()) -> None:
        """Drop kept bytes, oldest first (those in ``spare`` last), until ``size`` more bytes fit
        beside them within CHECKED_CACHE_BYTES (engine thread). Called before any whole file or
        part is read into memory, so what pgod holds of raw profiles stays within that budget,
        whatever the spool holds; a dropped part is read again for its merge and matched to its
        digest, as after a restart."""
        if self._size + size <= CHECKED_CACHE_BYTES:
            return
        order = [path for path in self._held if path not in spare] + [path for path in self._held if path in spare]
        for path in order:
            self.forget(path)
            if self._size + size <= CHECKED_CACHE_BYTES:
                return

    def forget(self, path: str) -> None:
        """Drop a part's bytes, if kept (its merge has them now, or they made room)."""
        data = self._held.pop(path, None)
        if data is not None:
            self._size -= len(data)
