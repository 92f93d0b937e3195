"""Read pgod's shipped systemd unit (pgod/data/systemd/pgod.service), for tests that run the
daemon as that unit runs it: on the host (its capability set, through setpriv) and in the
booted guest (the file itself)."""

from __future__ import annotations

from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parent.parent / "pgod" / "data" / "systemd"
PGOD_UNIT = UNIT_DIR / "pgod.service"


def settings(path: Path = PGOD_UNIT, section: str = "Service") -> dict[str, list[str]]:
    """Each key of ``section`` with its values in file order (a key may repeat, as
    SystemCallFilter= does); comments and other sections left out."""
    found: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current == section and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def capability_bounding_set(path: Path = PGOD_UNIT) -> list[str]:
    """The unit's CapabilityBoundingSet= as setpriv names them (``dac_read_search``)."""
    names: list[str] = []
    for value in settings(path).get("CapabilityBoundingSet", []):
        names += [word.lower().removeprefix("cap_") for word in value.split()]
    return names


def setpriv_as_unit(path: Path = PGOD_UNIT) -> list[str]:
    """A setpriv prefix giving a root process the unit's capabilities and no_new_privs: what
    systemd does to pgod, less the namespaces and the syscall filter (the guest tests have those)."""
    service = settings(path)
    caps = ",".join(f"+{name}" for name in capability_bounding_set(path))
    prefix = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all"]
    if service.get("NoNewPrivileges", ["no"])[-1] in ("yes", "true", "on", "1"):
        prefix.append("--no-new-privs")
    return [*prefix, "--"]
