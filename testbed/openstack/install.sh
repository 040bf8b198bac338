#!/bin/bash
# Install the Debian (bookworm, OpenStack Zed) packages for the local OpenStack test bed, control
# plane and data plane (libvirt/QEMU, Neutron's agents, debootstrap).
# Idempotent: returns at once when everything is already installed.
# Packages must not start their services on install: we start each one by hand under up.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PKGS=$(grep -v '^#' "$HERE/pkgs.txt" | tr -s ' \n' ' ')
missing=""
for p in $PKGS; do
  p=${p%%/*}
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "install.sh: all packages already installed"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root (missing:$missing)" >&2; exit 1; }
# Never let maintainer scripts start services (systemd is not PID 1 here; and we want none running).
set +e; [ -x /usr/sbin/policy-rc.d ] && /usr/sbin/policy-rc.d x start >/dev/null 2>&1; rc=$?; set -e
[ -x /usr/sbin/policy-rc.d ] || rc=0
if [ "$rc" != 101 ]; then
  echo "install.sh: installing /usr/sbin/policy-rc.d (exit 101: no service starts on install)"
  [ -e /usr/sbin/policy-rc.d ] && cp -a /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.osbed-orig
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
fi
export DEBIAN_FRONTEND=noninteractive
BPO=/etc/apt/sources.list.d/osbed-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "install.sh: adding Debian's bookworm-backports ($BPO; QEMU comes from there)"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$BPO"
  rm -f /var/lib/apt/lists/*_Packages*.stamp 2>/dev/null; apt-get update -qq
fi
# apt-get update only when the lists are missing or older than a day
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
echo "install.sh: installing:$missing"
apt-get install -y -qq --no-install-recommends $PKGS >/tmp/osbed-apt.log 2>&1 || { tail -30 /tmp/osbed-apt.log >&2; exit 1; }
echo "install.sh: done"
