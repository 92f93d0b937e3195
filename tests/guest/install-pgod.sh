#!/bin/bash
# Runs in the booted guest (as root, from the share): installs this checkout's pgod the way a
# distribution package would, with the shipped system files, and starts it under its unit.
#
# The image has the Python dependencies in /opt/pgod/venv (tests/guest/image.py); pgod's own
# code changes with every commit, so it comes from the share at each boot, with the two
# console programs pip would write. The units, tmpfiles, sysctl, generator and D-Bus policy are
# installed by pgod/data/install-system-files.sh, the script nix/package.nix runs too.
set -euo pipefail
share=${1:-/mnt/host}

rm -rf /opt/pgod/src
mkdir -p /opt/pgod/src
cp -r "$share/src/pgod" /opt/pgod/src/
find /opt/pgod/src -name __pycache__ -prune -exec rm -rf {} +
site=$(/opt/pgod/venv/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo /opt/pgod/src >"$site/pgod-src.pth"
# The entry points as pyproject.toml names them; a tree from before the subpackages (the unit
# regression test installs one) had them at the top.
entry_points="pgod:pgod.daemon.main pgoctl:pgod.ctl.main"
test -f /opt/pgod/src/pgod/daemon/main.py || entry_points="pgod:pgod.daemon pgoctl:pgod.cli"
for program in $entry_points; do
    name=${program%%:*} module=${program#*:}
    printf '#!/opt/pgod/venv/bin/python3\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$module" \
        >/opt/pgod/venv/bin/"$name"
    chmod 755 /opt/pgod/venv/bin/"$name"
    ln -sf /opt/pgod/venv/bin/"$name" /usr/local/bin/"$name"
done

sh /opt/pgod/src/pgod/data/install-system-files.sh /opt/pgod/src/pgod/data /usr /opt/pgod/venv/bin

# The programs pgod watches: root's, as a package's files are.
rm -rf /opt/workload
cp -r "$share/workload" /opt/workload
chown -R root:root /opt/workload
chmod -R go-w /opt/workload
# More packages' programs, when the test brought some (share/opt/<package>).
if [ -d "$share/opt" ]; then
    for folder in "$share"/opt/*/; do
        name=$(basename "$folder")
        rm -rf "/opt/$name"
        cp -r "$folder" "/opt/$name"
        chown -R root:root "/opt/$name"
        chmod -R go-w "/opt/$name"
    done
fi

mkdir -p /etc/pgod
install -m 644 "$share/config.toml" /etc/pgod/config.toml

systemd-tmpfiles --create /usr/lib/tmpfiles.d/pgod.conf
sysctl -q -p /usr/lib/sysctl.d/50-pgod.conf
# The spool for every service and login: what the NixOS module sets (systemd.globalEnvironment,
# environment.sessionVariables); system.conf expands no specifiers, so %p stays as it is.
mkdir -p /etc/systemd/system.conf.d
printf '[Manager]\nDefaultEnvironment="LLVM_PROFILE_FILE=/var/spool/pgod/%%p.profraw"\n' \
    >/etc/systemd/system.conf.d/50-pgod.conf
echo 'LLVM_PROFILE_FILE=/var/spool/pgod/%p.profraw' >/etc/environment
systemctl daemon-reexec
systemctl reload dbus
systemctl enable --now pgod-substitute.service pgod.service
