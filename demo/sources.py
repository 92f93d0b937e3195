"""Step a: the Lua 5.4 sources, from the lupa sdist on PyPI (downloaded once, cached under
demo-state/), extracted to demo-state/lua-src.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from demo.common import BIN, LUA_IN_SDIST, LUPA_VERSION, ROOT, DemoError, Layout, indent, say


@dataclass(frozen=True)
class Source:
    dir: Path
    version: str  # e.g. "5.4.8"
    sdist: Path


def fetch_sources(layout: Layout) -> Source:
    """The Lua sources from the lupa sdist on PyPI: downloaded once, extracted to demo-state/lua-src."""
    sdist = layout.download / f"lupa-{LUPA_VERSION}.tar.gz"
    if sdist.exists():
        say(f"    using the cached {sdist.relative_to(ROOT)}")
    else:
        say(f"    pip download lupa=={LUPA_VERSION} (source distribution) from PyPI; pip prepares its metadata, ~30 s, once")
        scratch = layout.download / "tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        python = BIN / "python" if (BIN / "python").exists() else Path(sys.executable)
        argv = [str(python), "-m", "pip", "download", "--no-binary", "lupa", "--no-deps", "--disable-pip-version-check",
                "-d", str(scratch), f"lupa=={LUPA_VERSION}"]
        # lupa's setup.py builds LuaJIT while pip only asks for its metadata: 2 minutes for nothing.
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "LUPA_NO_LUAJIT": "true"})
        got = scratch / sdist.name
        if done.returncode != 0 or not got.exists():
            say(indent("\n".join((done.stdout + done.stderr).splitlines()[-15:])))
            raise DemoError(f"pip download lupa=={LUPA_VERSION} failed (exit {done.returncode})")
        got.rename(sdist)
        shutil.rmtree(scratch, ignore_errors=True)
        say(f"    saved {sdist.relative_to(ROOT)} ({sdist.stat().st_size / 1e6:.1f} MB)")
    if not (layout.src / "onelua.c").exists():
        extract_lua(sdist, layout.src)
    version = lua_version(layout.src / "lua.h")
    count = len(list(layout.src.iterdir()))
    say(f"    Lua {version}: {count} files (.c/.h) of {LUA_IN_SDIST} in {layout.src.relative_to(ROOT)}")
    return Source(layout.src, version, sdist)


def extract_lua(sdist: Path, target: Path) -> None:
    """Only the regular .c/.h files of third-party/lua54 (no links, no sub-folders), atomically."""
    scratch = target.with_name(target.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    scratch.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if not name.startswith(LUA_IN_SDIST):
                continue
            leaf = name[len(LUA_IN_SDIST):]
            if "/" in leaf or not leaf.endswith((".c", ".h")) or not member.isfile():
                continue
            data = archive.extractfile(member).read()
            (scratch / leaf).write_bytes(data)
            (scratch / leaf).chmod(0o644)
    if not (scratch / "onelua.c").exists():
        raise DemoError(f"{sdist.name} has no {LUA_IN_SDIST}onelua.c")
    scratch.rename(target)


def lua_version(header: Path) -> str:
    fields = {}
    for line in header.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("LUA_VERSION_"):
            fields[parts[1]] = parts[2].strip('"')
    return ".".join(fields.get(f"LUA_VERSION_{k}", "?") for k in ("MAJOR", "MINOR", "RELEASE"))
