"""The GC roots that keep pgod's builds and profile snapshots in the Nix store.

They live in `<state_dir>/gcroots`, one symlink per store path, named after the package and
what the path is to it:

  <name>-profile               the profile snapshot the last build started from
  <name>-candidate[-<output>]  a final build still in front of its benchmark gate
  <name>-cs-profile[-<output>] the context-sensitive stage's build (stages.py)
  <name>-optimized[-<output>]  the package's optimized build

A build's every output is rooted, not only the one nix-build printed: a substituted `lib` or
`man` output must outlive garbage collection as long as `out` does.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from pgod.optimize import nixstore, substitution

log = structlog.get_logger(__name__)


class GCRoots:
    """The roots folder: adds and removes the roots of a package's builds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add_profile(self, name: str, snapshot: str) -> None:
        """Root the profile snapshot a build of ``name`` starts from."""
        nixstore.add_root(snapshot, self.folder / f"{name}-profile")

    def names(self, name: str, out_path: str, kind: str) -> list[tuple[str, Path]]:
        """Every output of the build of ``out_path`` and its GC root: `<name>-<kind>` for the
        printed output, `<name>-<kind>-<output's store name>` for the others."""
        return [
            (output, self.folder / (f"{name}-{kind}" if output == out_path else f"{name}-{kind}-{substitution.store_name(output)}"))
            for output in nixstore.outputs_of(out_path)
        ]

    def remove(self, name: str, out_path: str | None, kind: str) -> None:
        if out_path is None:
            return
        try:
            for _output, root in self.names(name, out_path, kind):
                root.unlink(missing_ok=True)
        except nixstore.NixError as err:
            log.warning("gcroot.not_removed", package=name, build=out_path, error=str(err))

    def add(self, name: str, out_path: str, kind: str) -> None:
        """Every output, not only the one nix-build printed (see the module's docstring)."""
        for output, root in self.names(name, out_path, kind):
            nixstore.add_root(output, root)
