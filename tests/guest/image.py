"""The guest's base image: built once with mmdebstrap, cached outside the checkout.

CI starts from a fresh clone each run, so the image cannot live in the working tree; it lives in
$PGOD_GUEST_CACHE (default /var/cache/pgod/guest), one folder per hash of what goes into it (the
package list, the pip requirements, this file and the agent). Change any of them and the next
run builds a new folder; otherwise the folder is reused as it is. Each folder holds:

  image.raw   the root filesystem (ext4, 4 GiB sparse), read-only: guests boot qcow2 overlays
  vmlinuz     the guest's kernel, and
  initrd.img  its small initrd (initramfs-tools MODULES=list: virtio, 9p, ext4), for -kernel/-initrd
  build.log   what mmdebstrap and the customization printed

Debian packages downloaded for a build are kept in the cache's debs/ folder, so a rebuild (this
file or the agent changed) does not download them again.

Run as a script: `python3 image.py` builds or reuses the image and prints its folder.
mmdebstrap also runs this file for its hooks (`image.py hook setup|essential|customize ROOT`).
Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
    "linux-image-amd64", "initramfs-tools", "kmod",
    "python3", "python3-venv", "python3-gi", "gir1.2-glib-2.0",
    "procps", "util-linux", "e2fsprogs",
    "llvm-14", "nix-bin",
    "xvfb", "xauth", "dunst", "libnotify-bin",
    # For the guest tests' Nix loop (tests/test_guest_nix.py): nix-daemon's units and the
    # nixbld users, and the clang and make its fixture stdenv builds with, with the profile runtime.
    "nix-setup-systemd", "clang-14", "libclang-rt-14-dev", "make",
]
# pgod's own dependencies, less PyGObject (Debian's python3-gi, seen through
# --system-site-packages) and matplotlib (pgoctl report's charts; not needed in the guest).
PIP_REQUIREMENTS = ["SQLAlchemy>=2,<3", "pydbus>=0.6", "structlog>=23", "watchdog>=4", "pyelftools>=0.30"]
VENV = "/opt/pgod/venv"
DISK_SIZE = "4G"
HOSTNAME = "pgod-guest"
AGENT_PATH = "/usr/local/lib/pgod-guest/agent.py"
AGENT_UNIT = "pgod-guest-agent.service"

# In the initrd only what finding the root needs (and the agent's devices, loaded early): the
# stock MODULES=most initrd is ~30 MB of drivers this machine never has.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "virtio_console", "9p", "9pnet_virtio", "ext4"]
# Never unpacked: documentation, translations, and drivers for hardware QEMU does not emulate
# here. Saves about a third of the disk and of mkfs's time.
PATH_EXCLUDES = [
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
    *(f"/lib/modules/*/kernel/{sub}/*" for sub in (
        "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/net/ethernet",
        "drivers/infiniband", "drivers/staging", "drivers/iio", "drivers/bluetooth",
        "drivers/isdn", "drivers/hwmon", "sound", "net/wireless", "net/mac80211",
        "net/bluetooth")),
]
# Units that cost boot time and do nothing for a test guest. The *-update units run on every
# boot of an image whose /etc/.updated is missing (ConditionNeedsUpdate); nothing updates /usr
# under a running guest. No getty: nobody logs in; the console is only a log.
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer",
    "getty@tty1.service", "serial-getty@ttyS0.service", "getty-static.service",
    "systemd-hwdb-update.service", "ldconfig.service", "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
]

AGENT_UNIT_TEXT = f"""\
[Unit]
Description=pgod test harness agent (runs the host's commands; tests/guest/agent.py)
# Once the system is up, so a test's first command sees a booted machine. Type=exec: the start
# job ends as soon as the agent runs, so `systemctl is-system-running --wait` never waits on it.
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/bin/python3 -I {AGENT_PATH}
Restart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
"""

HERE = Path(__file__).resolve().parent
AGENT_SOURCE = HERE / "agent.py"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Image:
    folder: Path

    @property
    def disk(self) -> Path:
        return self.folder / "image.raw"

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"


def cache_root() -> Path:
    return Path(os.environ.get("PGOD_GUEST_CACHE", "/var/cache/pgod/guest"))


def image_key() -> str:
    """Hash of every input of the image: a change to any of them means a new image."""
    digest = hashlib.sha256()
    for part in (json.dumps([SUITE, PACKAGES, PIP_REQUIREMENTS]).encode(),
                 Path(__file__).read_bytes(), AGENT_SOURCE.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def cached_image() -> Image | None:
    image = Image(cache_root() / image_key())
    return image if (image.folder / "complete").exists() else None


def ensure_image(progress=print) -> Image:
    """The cached image for the current inputs, built first if there is none.

    A lock on the cache keeps two runs from building the same image at once: the second waits
    and then finds the first one's. A build goes into a temporary folder renamed into place at
    the end, so an interrupted build leaves nothing that looks finished.
    """
    image = cached_image()
    if image:
        return image
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise RuntimeError(f"cannot create the guest image cache {root}: run as root, "
                           "or set PGOD_GUEST_CACHE to a writable folder") from None
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = cached_image()
        if image:
            return image
        image = Image(root / image_key())
        building = root / f"{image.folder.name}.building"
        shutil.rmtree(building, ignore_errors=True)  # an interrupted build's leftovers
        building.mkdir()
        build(building, progress)
        building.rename(image.folder)
        progress(f"guest image: ready in {image.folder}")
        prune(root, progress)
        return image


def prune(root: Path, progress, keep: int = 3) -> None:
    """Drop all but the `keep` newest images (about 1.5 GB each), and builds left unfinished.

    More than one is kept because checkouts of different commits may share the cache. Called
    under the cache's lock, so no build is under way.
    """
    images = sorted((p for p in root.iterdir() if (p / "complete").exists()),
                    key=lambda p: (p / "complete").stat().st_mtime, reverse=True)
    for old in images[keep:] + list(root.glob("*.building")):
        progress(f"guest image: removing {old}")
        shutil.rmtree(old, ignore_errors=True)


class Steps:
    """Progress lines: each step's name when it starts, its time when it ends."""

    def __init__(self, progress):
        self.progress = progress
        self.start = time.monotonic()

    def run(self, name, function, *args):
        self.progress(f"guest image: {name} ...")
        began = time.monotonic()
        result = function(*args)
        self.progress(f"guest image: {name}: {time.monotonic() - began:.0f} s "
                      f"(build so far {time.monotonic() - self.start:.0f} s)")
        return result


def build(folder: Path, progress) -> None:
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found: apt-get install {package}")
    if os.geteuid() != 0:
        raise RuntimeError("building the guest image needs root (mmdebstrap's root mode, chroot)")
    rootdir = folder / "root"
    log = folder / "build.log"
    steps = Steps(progress)
    progress(f"guest image: building {folder.name} in {folder} (log: {log})")
    steps.run("mmdebstrap (download, install, customize)", mmdebstrap, rootdir, log, progress)
    steps.run("finish the root", finish_root, rootdir, folder)
    steps.run(f"mkfs.ext4 -d ({DISK_SIZE})", make_disk, rootdir, folder / "image.raw", log)
    shutil.rmtree(rootdir)
    (folder / "complete").write_text(json.dumps({
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - steps.start),
        "packages": PACKAGES, "pip": PIP_REQUIREMENTS}, indent=1) + "\n")


def hook_command(stage: str) -> str:
    return f'{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} hook {stage} "$1"'


def mmdebstrap(rootdir: Path, log: Path, progress) -> None:
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            "--skip=essential/unlink", "--skip=download/empty",
            "--aptopt=Acquire::Check-Valid-Until \"false\"",
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in PATH_EXCLUDES),
            f"--setup-hook={hook_command('setup')}",
            f"--essential-hook={hook_command('essential')}",
            f"--customize-hook={hook_command('customize')}",
            SUITE, str(rootdir)]
    env = {**CHROOT_ENV, "PGOD_GUEST_CACHE": str(cache_root())}
    began = time.monotonic()
    with open(log, "a") as out:
        out.write("$ " + shlex.join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            out.write(line)
            # mmdebstrap's own phases and this file's hook steps; the rest only in the log
            if line.startswith(("I: ", "E: ", "W: ", "guest image:")):
                progress(f"  [{time.monotonic() - began:5.0f} s] {line.rstrip()}")
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"mmdebstrap failed (rc {rc}); the end of {log}:\n{tail}")


# --- hooks, run by mmdebstrap as `image.py hook STAGE ROOT` --------------------------------

def deb_cache() -> Path:
    return cache_root() / "debs"


def hook_setup(root: Path) -> None:
    """Put the debs of earlier builds where apt looks first, so only new ones are downloaded."""
    archives = root / "var/cache/apt/archives"
    archives.mkdir(parents=True, exist_ok=True)
    deb_cache().mkdir(parents=True, exist_ok=True)
    for deb in deb_cache().glob("*.deb"):
        try:
            os.link(deb, archives / deb.name)
        except OSError:
            shutil.copy2(deb, archives / deb.name)


def hook_essential(root: Path) -> None:
    """Before the kernel package is unpacked: its initrd is to be built small, and only once.

    conf.d and modules.d are not conffiles of initramfs-tools, so writing them ahead of the
    package raises no dpkg question.
    """
    conf = root / "etc/initramfs-tools/conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "pgod-guest").write_text("MODULES=list\nRESUME=none\n")
    modules = root / "usr/share/initramfs-tools/modules.d"
    modules.mkdir(parents=True, exist_ok=True)
    (modules / "pgod-guest").write_text("\n".join(INITRD_MODULES) + "\n")


def chroot(root: Path, *argv: str, env: dict | None = None) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, env={**CHROOT_ENV, **(env or {})})


def hook_customize(root: Path) -> None:
    steps = Steps(lambda line: print(line, flush=True))
    steps.run("pgod's venv (pip)", make_venv, root)
    steps.run("users, agent, units", configure, root)
    # Every deb this build used goes to the cache; those it did not use leave it.
    used = {deb.name for deb in (root / "var/cache/apt/archives").glob("*.deb")}
    for deb in deb_cache().glob("*.deb"):
        if deb.name not in used:
            deb.unlink()
    for name in used:
        if not (deb_cache() / name).exists():
            shutil.copy2(root / "var/cache/apt/archives" / name, deb_cache() / name)


def make_venv(root: Path) -> None:
    """The venv pgod runs from in the guest. pip reaches PyPI through the host's DNS and CA
    bundle (the registry may sit behind a proxy whose certificate only the host's bundle has)."""
    shutil.copy(Path("/etc/resolv.conf").resolve(), root / "etc/resolv.conf")
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1", "PIP_DEFAULT_TIMEOUT": "120"}
    if ca.exists():
        shutil.copy(ca, root / "tmp/pgod-guest-ca.crt")
        env["PIP_CERT"] = "/tmp/pgod-guest-ca.crt"
    chroot(root, "/usr/bin/python3", "-m", "venv", "--system-site-packages", VENV)
    chroot(root, f"{VENV}/bin/pip", "install", "--quiet", *PIP_REQUIREMENTS, env=env)
    (root / "tmp/pgod-guest-ca.crt").unlink(missing_ok=True)


def configure(root: Path) -> None:
    chroot(root, "groupadd", "--force", "wheel")
    chroot(root, "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", "pgod-merge")
    chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "wheel", "alice")
    chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "bob")
    chroot(root, "passwd", "--lock", "root")
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / "alice").touch()

    agent = root / AGENT_PATH.lstrip("/")
    agent.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(AGENT_SOURCE, agent)
    agent.chmod(0o755)
    (root / "etc/systemd/system" / AGENT_UNIT).write_text(AGENT_UNIT_TEXT)
    chroot(root, "systemctl", "enable", "--quiet", AGENT_UNIT)
    chroot(root, "systemctl", "mask", "--quiet", *MASKED_UNITS)
    (root / "mnt/host").mkdir(parents=True, exist_ok=True)


# --- after mmdebstrap ----------------------------------------------------------------------

def finish_root(rootdir: Path, folder: Path) -> None:
    """What mmdebstrap's clean-up would undo if done in a hook: a machine id (an empty one makes
    every boot a first boot), the host name, the DNS file that was only there for pip."""
    (rootdir / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (rootdir / "etc/hostname").write_text(HOSTNAME + "\n")
    (rootdir / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n"
                                       "::1 localhost ip6-localhost ip6-loopback\n")
    (rootdir / "etc/resolv.conf").unlink(missing_ok=True)
    (rootdir / "etc/fstab").write_text("# The root is mounted by the initrd: root=/dev/vda rw on the kernel's command line.\n")
    kernels = sorted((rootdir / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootdir / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd in {rootdir}/boot, found "
                           f"{[p.name for p in kernels]} and {[p.name for p in initrds]}")
    shutil.copy(kernels[0], folder / "vmlinuz")
    shutil.copy(initrds[0], folder / "initrd.img")


def make_disk(rootdir: Path, disk: Path, log: Path) -> None:
    """An ext4 filesystem made straight from the folder: no loop device, no mount."""
    with open(log, "a") as out:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", HOSTNAME, "-d", str(rootdir), str(disk), DISK_SIZE],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    disk.chmod(0o444)  # guests write to overlays; the base must never change under them


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "hook":
        {"setup": hook_setup, "essential": hook_essential, "customize": hook_customize}[argv[1]](Path(argv[2]))
        return 0
    if argv:
        print("usage: image.py   (build or reuse the guest image; prints its folder)", file=sys.stderr)
        return 2
    print(ensure_image().folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
