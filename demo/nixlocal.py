"""Nix settings for the project's own fixture builds (demo, tests, benchmarks), passed through NIX_CONFIG.

The fixture stdenv (nix/tests/fixture) builds with the host's clang and bash, and Debian's
`nix-bin` alone leaves Nix's compiled-in defaults in force: builds as the `nixbld` group, which
nothing created, inside the sandbox, which hides the host. A machine's /etc/nix/nix.conf is its
owner's, so pgod never rewrites it; these settings reach only the Nix commands that the demo,
the tests and the daemons they start run, through the environment those inherit. They are
appended to a NIX_CONFIG already set, and later settings win, so they apply whatever that says.

They are meant for root, as the Makefile runs the demo and the suite: root uses the store
directly even where a Nix daemon runs. Through a daemon (NIX_REMOTE=daemon) the daemon decides,
and it ignores an untrusted client's `sandbox = false`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: Each setting, and why the fixture builds need it.
SETTINGS: dict[str, tuple[str, str]] = {
    "build-users-group": ("", "build as the calling user: Debian's nix-bin creates no nixbld group"),
    "sandbox": ("false", "the fixture stdenv uses the host's /bin/bash and /usr/bin/clang-14"),
    "substituters": ("", "every path is built here; no binary cache is reachable or needed"),
}

_MARKER = "# pgod: settings for its fixture builds (demo/nixlocal.py)"


def config_text() -> str:
    """The settings in nix.conf syntax, under a marker line that says where they come from."""
    return "\n".join([_MARKER, *(f"{name} = {value}" for name, (value, _why) in SETTINGS.items())])


def use_local_nix(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Append the settings to `environ`'s NIX_CONFIG; False when they were there already."""
    current = environ.get("NIX_CONFIG", "")
    if _MARKER in current:
        return False
    environ["NIX_CONFIG"] = f"{current}\n{config_text()}" if current else config_text()
    return True


def describe() -> str:
    """One line for the demo's and the test run's header: what was set, and what was not touched."""
    settings = ", ".join(f"{name} = {value or '(empty)'}" for name, (value, _why) in SETTINGS.items())
    return f"Nix: NIX_CONFIG adds {settings}; /etc/nix/nix.conf is not changed"
