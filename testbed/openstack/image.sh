#!/bin/bash
# Build the test bed's guest images and its Debian package mirror from Debian's packages, from one
# debootstrap of bookworm:
#   stock/   `debian-12-generic`: what Debian's generic cloud image holds (kernel, systemd with
#            networkd + resolved, cloud-init, OpenSSH, sudo, curl, ...), Debian's own apt sources
#            (deb.debian.org, signed), empty apt lists; none of the node packages below.
#   node/    `hybridgrid-node`: the stock root + what hybridgrid's nodes use (munge, slurmd,
#            slurmctld, slurm-client, wireguard-tools, nftables, iptables), daemons disabled.
#   mirror/  a partial deb.debian.org: Debian's signed indexes (InRelease of bookworm,
#            bookworm-updates, bookworm-security; the Packages.xz and Translation-en.xz they name,
#            at their paths and by-hash, byte for byte) and the .debs a node installs on top of the
#            stock image (NODE_PKGS + MIRROR_EXTRA, with their dependencies). up.sh serves it on
#            203.0.113.1:80; Neutron's dnsmasq answers deb.debian.org with that address.
# Each image folder holds vmlinuz, initrd.img, root.qcow2.
#
# usage: image.sh CACHE_DIR        prints the folder holding stock/ node/ mirror/ (nothing else)
# The result is cached under CACHE_DIR/osbed-<hash of this script>: an unchanged recipe is not
# rebuilt, unless an index of the mirror expires within a day (bookworm-security's InRelease is
# valid for a week): then everything is built again, with the day's indexes.
# The root file systems are bare ext4 images (no partition table, no boot loader): Nova boots them
# with the kernel and initrd as Glance kernel/ramdisk images (root=/dev/vda), see bootstrap.py.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
umask 022   # the mirror is read by nginx's worker (www-data)
# Only the result's folder may reach stdout (up.sh reads it): everything else goes to stderr.
# (mkfs says "Creating regular file" on stdout even with -q; that once broke every first start.)
exec 3>&1 1>&2
CACHE=$(mkdir -p "${1:?usage: image.sh CACHE_DIR}" && cd "$1" && pwd)
HASH=$(sha256sum "$0" | cut -c1-16)
OUT="$CACHE/osbed-$HASH"

# The stock image (debootstrap --variant=minbase + these). python3-cffi-backend: cloud-init needs it
# and debootstrap does not resolve it. systemd-resolved: the DNS server DHCP names reaches
# /etc/resolv.conf (networkd alone never writes it).
STOCK_PKGS=linux-image-amd64,systemd,systemd-sysv,systemd-resolved,udev,dbus,cloud-init
STOCK_PKGS=$STOCK_PKGS,python3-cffi-backend,isc-dhcp-client,openssh-server,sudo,iproute2,iputils-ping
STOCK_PKGS=$STOCK_PKGS,netbase,ca-certificates,curl,procps,less,kmod,debian-archive-keyring,systemd-timesyncd
# The node image: the stock root + these (from the mirror). The mirror: their .debs and those of
# MIRROR_EXTRA, with dependencies (resolved against the stock root, so exactly what apt in a stock
# guest fetches: the whole set, each package alone, the node set).
NODE_PKGS="munge slurmd slurmctld slurm-client wireguard-tools nftables iptables"
MIRROR_EXTRA="curl awscli keepalived"
SUITES="debian:bookworm debian:bookworm-updates debian-security:bookworm-security"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Valid-Until of every InRelease in mirror $1 at least a day away (bookworm-security: a week)
fresh() {
  local f v
  for f in "$1"/*/dists/*/InRelease; do
    [ -f "$f" ] || return 1
    v=$(sed -n 's/^Valid-Until: //p' "$f" | head -1)
    [ -z "$v" ] || [ "$(date -d "$v" +%s)" -gt $(( $(date +%s) + 86400 )) ] || return 1
  done
}
if [ -f "$OUT/done" ]; then
  if fresh "$OUT/mirror"; then echo "$OUT" >&3; exit 0; fi
  echo "image.sh: the mirror's indexes in $OUT expire within a day: building again" >&2
fi
[ "$(id -u)" = 0 ] || { echo "image.sh: must run as root" >&2; exit 1; }
for c in debootstrap gpgv mkfs.ext4 qemu-img curl; do
  command -v $c >/dev/null || { echo "image.sh: $c missing: run install.sh" >&2; exit 1; }
done
T0=$(date +%s)
lap() { echo "image.sh: [$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { echo "image.sh: $*" >&2; exit 1; }
WORK="$CACHE/build-$HASH.$$"
# The roots and raw file systems live in a tmpfs (~3 GB at the peak): dpkg's many fsyncs cost
# nothing there, and removing the roots is one umount (rm -rf of them on disk: about a minute).
S="$WORK/tmp/stock" N="$WORK/tmp/node" M="$WORK/out/mirror"
cleanup() {
  local rc=$? j
  set +e
  for j in $(jobs -p); do kill "$j" 2>/dev/null; done; wait 2>/dev/null
  # unmount whatever is still mounted below WORK (debootstrap's, ours), deepest first
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r umount -l 2>/dev/null
  if findmnt -rn -o TARGET | grep -q "^$WORK/"; then echo "image.sh: mounts left below $WORK, not removed" >&2
  else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
mkdir -p "$WORK/tmp" "$M" "$WORK/out/stock" "$WORK/out/node"
mount -t tmpfs -o size=8G,mode=755 osbed-image "$WORK/tmp"
mkdir -p "$S" "$N"

# --- Debian's signed indexes, byte for byte (in the background, beside debootstrap): InRelease
# (signature checked with Debian's keyring), then each index it names by its SHA256 through
# by-hash (what apt asks for; stable while the suite moves on), checked, and linked to its name.
indexes() {
  local as arch suite d f h size
  for as in $SUITES; do
    arch=${as%%:*} suite=${as#*:} d="$M/$arch/dists/$suite"
    mkdir -p "$d"
    curl -fsS --retry 3 -o "$d/InRelease" "http://deb.debian.org/$arch/dists/$suite/InRelease"
    gpgv --keyring "$KEYRING" "$d/InRelease" 2>/dev/null || { echo "bad signature: $d/InRelease"; return 1; }
    for f in main/binary-amd64/Packages.xz main/i18n/Translation-en.xz; do
      h=$(awk -v f="$f" '/^SHA256:/{x=1;next} /^[^ ]/{x=0} x && $3==f {print $1}' "$d/InRelease")
      size=$(awk -v f="$f" '/^SHA256:/{x=1;next} /^[^ ]/{x=0} x && $3==f {print $2}' "$d/InRelease")
      [ -n "$h" ] || { echo "$f not in $d/InRelease"; return 1; }
      mkdir -p "$d/$(dirname "$f")/by-hash/SHA256"
      curl -fsS --retry 3 -o "$d/$(dirname "$f")/by-hash/SHA256/$h" \
        "http://deb.debian.org/$arch/dists/$suite/$(dirname "$f")/by-hash/SHA256/$h"
      echo "$h  $d/$(dirname "$f")/by-hash/SHA256/$h" | sha256sum -c --quiet || return 1
      [ "$(stat -c %s "$d/$(dirname "$f")/by-hash/SHA256/$h")" = "$size" ] || { echo "size of $f"; return 1; }
      ln "$d/$(dirname "$f")/by-hash/SHA256/$h" "$d/$f"
    done
  done
}
indexes >"$WORK/indexes.log" 2>&1 & IDX=$!

# --- the stock root
debootstrap --variant=minbase --include="$STOCK_PKGS" bookworm "$S" http://deb.debian.org/debian \
  >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
lap "debootstrap done"
wait $IDX || { cat "$WORK/indexes.log" >&2; die "fetching Debian's indexes failed"; }

# A fresh identity per server: cloud-init sets the hostname, SSH host keys are made on first boot.
: >"$S/etc/machine-id"; rm -f "$S/var/lib/dbus/machine-id" "$S"/etc/ssh/ssh_host_*
echo localhost >"$S/etc/hostname"
echo 'LABEL=root / ext4 defaults,discard 0 1' >"$S/etc/fstab"
# Debian's own sources, as a stock bookworm cloud image has them (deb822, signed by Debian's keyring)
rm -f "$S/etc/apt/sources.list"
cat >"$S/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# DNS: resolved's list of the servers DHCP named (as Debian's cloud images link it), not the
# host's resolv.conf that debootstrap copied (resolved's postinst kept it as a .bak).
ln -sfn ../run/systemd/resolve/resolv.conf "$S/etc/resolv.conf"
rm -f "$S/etc/.resolv.conf.systemd-resolved.bak"
cat >"$S/etc/cloud/cloud.cfg.d/90-osbed.cfg" <<'EOF'
# hybridgrid test bed image: metadata from the OpenStack metadata service only.
datasource_list: [ OpenStack, None ]
datasource:
  OpenStack:
    max_wait: 60
    timeout: 5
    retries: 3
# Without a generated locale, cloud-init's locale step fails.
locale: C.UTF-8
EOF
# systemd-networkd-wait-online waits ~13 s for IPv6 router advertisements the bed never sends.
mkdir -p "$S/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$S/etc/systemd/system/systemd-networkd-wait-online.service.d/ipv4.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --ipv4 --timeout=60
EOF
mkdir -p "$S/etc/systemd/network"
cat >"$S/etc/systemd/network/99-osbed-noRA.network" <<'EOF'
[Match]
Name=*
[Network]
IPv6AcceptRA=no
EOF
chroot "$S" systemctl enable systemd-networkd systemd-resolved >/dev/null 2>&1
# as a stock image ships: no downloaded .debs, empty apt lists
rm -rf "$S"/var/cache/apt/archives/*.deb "$S"/var/lib/apt/lists/* "$S"/var/cache/apt/*.bin \
       "$S"/usr/share/doc/* "$S"/usr/share/man/*
mkdir -p "$S/var/lib/apt/lists/partial"

# 2 GiB file systems; the flavor's disk may be larger (cloud-init grows the file system).
image() {   # root folder, output folder
  cp "$1"/boot/vmlinuz-* "$2/vmlinuz"
  cp "$1"/boot/initrd.img-* "$2/initrd.img"
  mkfs.ext4 -q -L root -d "$1" "$1.raw" 2G
  qemu-img convert -O qcow2 "$1.raw" "$2/root.qcow2"
  rm -f "$1.raw"
}
# --- the stock image's file system (in the background) while the node root is made from a copy
image "$S" "$WORK/out/stock" >"$WORK/stock-image.log" 2>&1 & IMG_STOCK=$!
cp -a "$S/." "$N/"
lap "stock root configured and copied"

# --- apt in the node root, against the mirror folder (file:, signed indexes checked as over http),
# with its own sources, lists and cache below /tmp: the root's own apt state stays as shipped
mkdir -p "$N/osbed-mirror" "$N/tmp/osbed-apt/sources.d" "$N/tmp/osbed-apt/lists/partial" "$N/tmp/osbed-apt/cache"
mount --bind "$M" "$N/osbed-mirror"
mount -t proc proc "$N/proc"
sed 's#http://deb.debian.org/#file:/osbed-mirror/#' "$S/etc/apt/sources.list.d/debian.sources" \
  >"$N/tmp/osbed-apt/sources.d/mirror.sources"
cat >"$N/tmp/osbed-apt/apt.conf" <<'EOF'
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "/tmp/osbed-apt/sources.d";
Dir::State::Lists "/tmp/osbed-apt/lists";
Dir::Cache "/tmp/osbed-apt/cache";
EOF
napt() { chroot "$N" env APT_CONFIG=/tmp/osbed-apt/apt.conf apt-get -q -y --no-install-recommends "$@"; }
napt update >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get update against the mirror's indexes failed"; }
# the .debs: every URI apt names for the whole set, the node set and each package alone
{ napt install --print-uris $NODE_PKGS $MIRROR_EXTRA && napt install --print-uris $NODE_PKGS &&
  for p in $NODE_PKGS $MIRROR_EXTRA; do napt install --print-uris "$p"; done; } >"$WORK/uris.txt" 2>>"$WORK/apt.log" \
  || { cat "$WORK/apt.log" >&2; die "resolving the node packages failed"; }
# Each .deb at every path the indexes give it: the same version is often in bookworm (a point
# release) and bookworm-security, and which of the two apt fetches differs between file: and
# http: sources. Paths, sizes and SHA256 from the signed Packages files; downloads checked.
grep "^'file:/osbed-mirror/" "$WORK/uris.txt" | cut -d"'" -f2 | sed 's#.*/##' |
  while read -r b; do printf '%b\n' "${b//%/\\x}"; done | sort -u >"$WORK/debs.txt"   # URIs %-encode + as %2b
[ -s "$WORK/debs.txt" ] || die "apt named no .deb for the mirror (see $WORK/uris.txt)"
for as in $SUITES; do
  xz -dc "$M/${as%%:*}/dists/${as#*:}/main/binary-amd64/Packages.xz" |
    awk -v a="${as%%:*}" -v want="$WORK/debs.txt" '
      BEGIN { while ((getline l < want) > 0) w[l] = 1 }
      function out() { n = f; sub(/.*\//, "", n); if (f != "" && n in w) print h, a "/" f; f = h = "" }
      /^Filename: / { f = $2 } /^SHA256: / { h = $2 } /^$/ { out() } END { out() }'
done | sort -u -k2 >"$WORK/debs.sha256"
[ "$(awk '{sub(/.*\//, "", $2); print $2}' "$WORK/debs.sha256" | sort -u | wc -l)" = "$(wc -l <"$WORK/debs.txt")" ] \
  || die "a .deb apt named is in no Packages index (see $WORK/debs.txt, $WORK/debs.sha256)"
awk -v m="$M" '{printf "url = \"http://deb.debian.org/%s\"\noutput = \"%s/%s\"\n", $2, m, $2}' \
  "$WORK/debs.sha256" >"$WORK/curl.cfg"
curl -fsS --no-progress-meter --retry 3 --parallel --parallel-max 8 --create-dirs -K "$WORK/curl.cfg" \
  || die "downloading the mirror's .debs failed"
(cd "$M" && sha256sum -c --quiet) <"$WORK/debs.sha256" || die "a .deb of the mirror does not match its index"
chmod -R a+rX "$M"   # curl --create-dirs makes its folders 0750
# apt checks each .deb against the signed indexes (size, SHA256) as it "downloads" it
napt install --download-only $NODE_PKGS $MIRROR_EXTRA >>"$WORK/apt.log" 2>&1 \
  || { tail -20 "$WORK/apt.log" >&2; die "the mirror's .debs do not match Debian's indexes"; }
lap "mirror: $(wc -l <"$WORK/debs.sha256") .debs ($(wc -l <"$WORK/debs.txt") distinct), $(du -sh "$M" | cut -f1)"

# --- the node root: the node packages from the mirror; no service starts during the install
printf '#!/bin/sh\nexit 101\n' >"$N/usr/sbin/policy-rc.d"; chmod 755 "$N/usr/sbin/policy-rc.d"
napt install $NODE_PKGS >>"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; die "installing the node packages failed"; }
umount "$N/proc" "$N/osbed-mirror"
rm -rf "$N/usr/sbin/policy-rc.d" "$N/osbed-mirror" "$N/tmp/osbed-apt"
# Services the node packages enable but a fresh node must not run before hybridgrid configures
# it: munged (no key yet), slurmd/slurmctld (no slurm.conf).
for s in munge slurmd slurmctld; do chroot "$N" systemctl disable "$s" >/dev/null 2>&1 || true; done
rm -f "$N/etc/munge/munge.key"
rm -rf "$N"/usr/share/doc/* "$N"/usr/share/man/* "$N"/var/cache/apt/*.bin
image "$N" "$WORK/out/node" >"$WORK/node-image.log" 2>&1 || { cat "$WORK/node-image.log" >&2; die "node image failed"; }
wait $IMG_STOCK || { cat "$WORK/stock-image.log" >&2; die "stock image failed"; }
for f in vmlinuz initrd.img; do   # the same kernel and initrd (the node packages touch neither): one copy
  cmp -s "$WORK/out/stock/$f" "$WORK/out/node/$f" && ln -f "$WORK/out/stock/$f" "$WORK/out/node/$f"
done
lap "images done"

date -u +%FT%TZ >"$WORK/out/done"
sizes="root file systems: stock $(du -sh "$S" | cut -f1), node $(du -sh "$N" | cut -f1)"
rm -rf "$OUT"; mv "$WORK/out" "$OUT"
echo "image.sh: built $OUT in $(( $(date +%s) - T0 )) s ($sizes; mirror $(du -sh "$OUT/mirror" | cut -f1))" >&2
echo "$OUT" >&3
