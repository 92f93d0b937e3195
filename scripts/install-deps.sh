#!/usr/bin/env bash
# Install the OS packages pgod's demo and tests use, on Debian or Ubuntu.
# Required ones must install; each extra clang version is best effort (tests of a missing
# version are skipped and say which package was missing).
set -euo pipefail

REQUIRED=(clang-14 llvm-14 nix-bin dbus-daemon dbus xvfb dunst libnotify-bin
          libgirepository1.0-dev libcairo2-dev pkg-config binutils python3-venv python3-dev git make)
OPTIONAL=(clang-13 llvm-13 clang-16 llvm-16 clang-19 llvm-19)

missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=$(missing "${REQUIRED[@]}" "${OPTIONAL[@]}")
if [ -z "$need" ]; then
    echo "install-deps: all OS packages present"
    exit 0
fi
echo "install-deps: installing:" $need
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2046
$SUDO apt-get install -y -qq --no-install-recommends $(missing "${REQUIRED[@]}") >/dev/null
for pkg in $(missing "${OPTIONAL[@]}"); do
    $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || echo "install-deps: optional package $pkg is not available here; its tests will be skipped"
done
