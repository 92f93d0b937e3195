#!/usr/bin/env bash
# Install the OS packages pgod's demo and tests use, on Debian or Ubuntu. Run by `make demo` and
# `make test` (once; stamp .make/os-deps), as root or through sudo.
#
# Each clang version comes with its llvm (llvm-profdata) and its compiler runtimes: Debian ships
# libclang_rt.profile in libclang-rt-N-dev (from LLVM 14 on), which --no-install-recommends
# would leave out, and without it no instrumented program links. clang 14 is required; the
# other versions the suite reads raw profiles of are installed where the distribution has them
# (a version it lacks is reported here, and its tests skip naming the packages).
set -euo pipefail

# e2fsprogs: chattr, with which a test makes a Nix profile's folder unwritable even to root.
# libdbus-1-dev: dbus-python (python-dbusmock's, for the tests that fake UPower) builds against it.
# qemu-system-x86, qemu-utils, mmdebstrap: the booted-guest tests (tests/guest) build a Debian
# image with mmdebstrap and boot it under QEMU (qemu-img makes each guest's overlay).
REQUIRED=(nix-bin dbus-daemon dbus xvfb dunst libnotify-bin tmux passwd util-linux e2fsprogs
          libgirepository1.0-dev libcairo2-dev libdbus-1-dev pkg-config binutils python3-venv python3-dev git make
          qemu-system-x86 qemu-utils mmdebstrap)
REQUIRED_CLANG=14
OPTIONAL_CLANGS=(13 16 19)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

updated=""
apt_update() {
    [ -n "$updated" ] && return
    $SUDO apt-get update -qq
    updated=1
}

# clang-N, llvm-N, and libclang-rt-N-dev where the distribution has that package (clang 13's
# runtimes are in libclang-common-13-dev, which clang-13 depends on).
clang_packages() {
    local version=$1
    echo "clang-$version" "llvm-$version"
    if apt-cache show "libclang-rt-$version-dev" >/dev/null 2>&1; then
        echo "libclang-rt-$version-dev"
    fi
}

install() {  # install PACKAGE...; fails loudly with apt's own message
    apt_update
    # shellcheck disable=SC2068
    $SUDO apt-get install -y -qq --no-install-recommends $@ >/dev/null
}

# An apt that never ran `update` knows no package: apt-cache show would find nothing.
apt-cache show "clang-$REQUIRED_CLANG" >/dev/null 2>&1 || apt_update
need=$(missing "${REQUIRED[@]}" $(clang_packages "$REQUIRED_CLANG"))
if [ -n "$need" ]; then
    echo "install-deps: installing:" $need
    install $need
fi
for version in "${OPTIONAL_CLANGS[@]}"; do
    # shellcheck disable=SC2046
    need=$(missing $(clang_packages "$version"))
    [ -n "$need" ] || continue
    echo "install-deps: installing clang $version:" $need
    install $need || echo "install-deps: clang $version is not available here ($need); its tests will be skipped"
done

# pgod runs llvm-profdata as an unprivileged system user of its own (merge_user in the config,
# pgod/confine.py); on NixOS the module declares it.
if ! getent passwd pgod-merge >/dev/null; then
    $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgod-merge
    echo "install-deps: created the system user pgod-merge, whom pgod runs llvm-profdata as"
fi
echo "install-deps: OS packages present"
