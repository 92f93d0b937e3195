"""What the notify agent has told this user, kept between logins so no build is told twice.

The agent tells, at start, about the builds that finished while it was not running. Without a
record of what it told before, every login would repeat the last "ready", "failed" and
"rejected" (a build the benchmark gate refused). One small
JSON file per user, `$XDG_STATE_HOME/pgod/notified.json` (`~/.local/state/pgod/` by default),
holds for each package the identity of the last build told of each outcome: one entry per
package, at most MAX_PACKAGES of them, so the file stays small however long the history.
It is replaced atomically (durable.replace_file): a crash leaves the old record or the new one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

from pgod.durable import replace_file

log = structlog.get_logger(__name__)

RECORD_VERSION = 1
MAX_PACKAGES = 256  # entries kept; past that the least recently told package is forgotten
MAX_RECORD_BYTES = 1 << 20  # a larger file is not ours: it is ignored, not read


def default_path(environ=os.environ) -> Path:
    """`$XDG_STATE_HOME/pgod/notified.json`; the XDG default `~/.local/state` when the variable
    is unset, empty or relative (as the base directory specification says)."""
    state_home = environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "pgod" / "notified.json"


def build_key(build: dict) -> str:
    """A build's identity: its id and the moment it finished. The id alone could come back after
    the daemon's state was wiped; with the finish time (to the microsecond) it does not."""
    return f"{build.get('id')}@{build.get('finished_at')!r}"


class NotifiedRecord:
    """For each package, the last build told as ready and the last told as failed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._packages: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        try:
            with open(self.path, "rb") as record:
                content = record.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as err:
            log.warning("notify.record_unreadable", path=str(self.path), error=str(err))
            return {}
        try:
            if len(content) > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
            document = json.loads(content)
            packages = document["packages"]
            if document.get("version") != RECORD_VERSION or not isinstance(packages, dict):
                raise ValueError(f"not a version {RECORD_VERSION} record")
        except (ValueError, KeyError, TypeError) as err:
            # Starting afresh may tell the latest builds once more; that beats never telling.
            log.warning("notify.record_ignored", path=str(self.path), error=str(err))
            return {}
        return {name: entry for name, entry in packages.items() if isinstance(entry, dict)}

    def told(self, package: str, outcome: str, key: str) -> bool:
        return self._packages.get(package, {}).get(outcome) == key

    def remember(self, package: str, outcome: str, key: str) -> None:
        """Record that ``package``'s build ``key`` was told as ``outcome``, on disk at once."""
        entry = self._packages.pop(package, {})  # re-inserted last: the dict is in telling order
        entry[outcome] = key
        entry["at"] = time.time()
        self._packages[package] = entry
        while len(self._packages) > MAX_PACKAGES:
            del self._packages[next(iter(self._packages))]
        self._save()

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            content = json.dumps({"version": RECORD_VERSION, "packages": self._packages}, indent=1)
            replace_file(self.path, content.encode())
        except OSError as err:
            # Not fatal: the user was told; at worst the next login tells it once more.
            log.warning("notify.record_not_saved", path=str(self.path), error=str(err))
