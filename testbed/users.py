"""Commands run as another user (uid nobody, or any uid) that can still reach the caller's folders.

pytest's tmp_path, a venv or a benchmark's scratch folder may sit under folders only root may
enter (Debian's /root is 0700). CAP_DAC_READ_SEARCH, kept as an ambient capability, lets the
command read and traverse them; it gives no right to write, and the kernel, the bus and the
daemon still see the other uid, which is what the tests and the floods are about.
"""

from __future__ import annotations

TRAVERSE = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *TRAVERSE]


def as_uid(uid: int) -> list[str]:
    """The setpriv prefix that runs a command as ``uid`` (and the group of that number)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *TRAVERSE]
