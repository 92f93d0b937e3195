#!/bin/sh
# Install pgod's system integration files under PREFIX: the system unit; the boot-time
# substitution unit (for other systems: NixOS's activation script does that); the notify
# agent's user unit; the spool generator; tmpfiles and sysctl settings; the D-Bus policy. The
# one way they are installed, by the Nix package (nix/package.nix, so the NixOS module's
# systemd.packages finds them) and by the booted-machine tests (tests/guest, PREFIX=/usr).
#
#   install-system-files.sh DATA_DIR PREFIX BINDIR [GENERATOR_PATH]
#
# BINDIR: where the pgod and pgoctl programs are (the units' ExecStart=).
# GENERATOR_PATH: PATH for the generator, which runs with an empty environment (mkdir).
set -eu
[ $# -ge 3 ] || { echo "usage: install-system-files.sh DATA_DIR PREFIX BINDIR [GENERATOR_PATH]" >&2; exit 2; }
data=$1 prefix=$2 bindir=$3 generator_path=${4:-/usr/bin:/bin}

substituted() {  # substituted SOURCE TARGET MODE: @bindir@ and @path@ replaced
    mkdir -p "$(dirname "$2")"
    sed -e "s|@bindir@|$bindir|g" -e "s|@path@|$generator_path|g" "$1" >"$2"
    chmod "$3" "$2"
}

substituted "$data/systemd/pgod.service" "$prefix/lib/systemd/system/pgod.service" 644
substituted "$data/systemd/pgod-substitute.service" "$prefix/lib/systemd/system/pgod-substitute.service" 644
substituted "$data/systemd/pgod-notify-agent.service" "$prefix/lib/systemd/user/pgod-notify-agent.service" 644
substituted "$data/systemd/pgod-spool-generator" "$prefix/lib/systemd/system-generators/pgod-spool-generator" 755
substituted "$data/tmpfiles.d/pgod.conf" "$prefix/lib/tmpfiles.d/pgod.conf" 644
substituted "$data/sysctl.d/50-pgod.conf" "$prefix/lib/sysctl.d/50-pgod.conf" 644
substituted "$data/org.pgod.Daemon1.conf" "$prefix/share/dbus-1/system.d/org.pgod.Daemon1.conf" 644
