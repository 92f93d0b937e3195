"""The package's layers: imports point one way, and pgoctl loads none of the daemon's code.

    daemon → merge → optimize → schedule → intake → state → profiles → shared (pgod/'s top modules)
    ctl → report → profiles → shared
    fleet → shared (the daemon's; state and profiles at most, once it is wired)

Read statically (every import statement, also those inside functions, in every module) and
checked by running the real commands: `pgoctl status` and `pgoctl show` against a running daemon
(`pgoctl report` is checked the same way in test_report.py), listing what Python imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pgod

PACKAGE = Path(pgod.__file__).parent
# Each subpackage and what it may import besides the shared modules (and itself).
MAY_IMPORT = {
    "profiles": set(),  # llvm-profdata's show, parsed; the per-level overlap: the daemon's and the report's
    "state": set(),
    "intake": {"state"},
    "schedule": {"state", "profiles"},
    "optimize": {"schedule", "intake", "state"},
    "merge": {"optimize", "intake", "state"},
    "daemon": {"merge", "optimize", "schedule", "intake", "state"},
    "report": {"profiles"},
    "ctl": {"report"},  # `pgoctl report` hands over to the report's command
    "fleet": set(),  # provenance of store paths for now; it may grow to {"state", "profiles"}, no further
}
DAEMON_ONLY = ("pgod.daemon", "pgod.fleet", "pgod.intake", "pgod.merge", "pgod.optimize", "pgod.schedule",
               "pgod.state")
# What the client side must not load: the daemon's code and the libraries only it needs.
NOT_FOR_CLIENTS = (*DAEMON_ONLY, "elftools", "sqlalchemy", "watchdog")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every pgod module an import statement in the file names (relative ones resolved)."""
    names = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "pgod" or name.startswith("pgod.")}


def layer(module: str) -> str | None:
    """The subpackage a module belongs to; None for the shared modules at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def test_every_module_belongs_to_a_known_layer():
    modules = [module_name(p) for p in PACKAGE.rglob("*.py")]
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(MAY_IMPORT), "a new subpackage needs its place in MAY_IMPORT"
    shared = sorted(m for m in modules if layer(m) is None)
    assert all("." not in m.removeprefix("pgod.") for m in shared), shared


def test_imports_point_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer(module_name(path))
        for target in sorted(imported(path)):
            to = layer(target)
            if to is None or to == own:
                continue
            if own is None or to not in MAY_IMPORT[own]:
                wrong.append(f"{module_name(path)} imports {target}")
    assert wrong == []


def test_the_shared_contract_imports_nothing():
    tree = ast.parse((PACKAGE / "contract.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def modules_loaded(stderr: str) -> set[str]:
    """The modules `python -X importtime` (PYTHONPROFILEIMPORTTIME) reports, one a line:
    'import time:   self |  cumulative | name'."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def client_side_loads(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(NOT_FOR_CLIENTS))


def run_with_import_list(daemon, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([*daemon.pgoctl_argv(), *args], capture_output=True, text=True,
                            env={**daemon.env(), "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    return result, modules_loaded(result.stderr)


def test_pgoctl_status_and_show_load_no_daemon_code(pgod):
    build = pgod.root / "profiling-build"
    build.mkdir()
    pgod.write_config({"prog": {"profile_build": [str(build)], "build": ["true"]}})
    daemon = pgod.daemon()
    for args in (("status",), ("status", "--json"), ("show", "prog"), ("show", "prog", "--json")):
        result, loaded = run_with_import_list(daemon, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "pgod.ctl.main" in loaded and "pgod.ctl.client" in loaded  # the list is real
        assert client_side_loads(loaded) == [], args
    assert json.loads(run_with_import_list(daemon, "status", "--json")[0].stdout)["packages"][0]["name"] == "prog"
