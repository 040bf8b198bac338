#!/bin/bash
# Build the test bed's guest image from Debian's packages: debootstrap bookworm with a kernel,
# systemd, cloud-init, openssh-server and what hybridgrid's nodes use on first boot (munge, Slurm,
# WireGuard tools, nftables, curl). Guests reach no package registry, so the image carries them.
#
# usage: image.sh CACHE_DIR        prints the folder holding vmlinuz, initrd.img, root.qcow2
# The result is cached under CACHE_DIR/<hash of this script>: an unchanged recipe is not rebuilt.
# The root file system is a bare ext4 image (no partition table, no boot loader): Nova boots it with
# the kernel and initrd as Glance kernel/ramdisk images (root=/dev/vda), see up.sh.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
CACHE=$(mkdir -p "${1:?usage: image.sh CACHE_DIR}" && cd "$1" && pwd)
HASH=$(sha256sum "$0" | cut -c1-16)
OUT="$CACHE/node-$HASH"
if [ -f "$OUT/done" ]; then echo "$OUT"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "image.sh: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "image.sh: debootstrap missing: run install.sh" >&2; exit 1; }
T0=$(date +%s)
WORK="$CACHE/build-$HASH.$$"
trap 'rc=$?; umount -R "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev" 2>/dev/null || true; rm -rf "$WORK"; exit $rc' EXIT
mkdir -p "$WORK/root"

# python3-cffi-backend: cloud-init needs it and debootstrap does not resolve it.
PKGS=linux-image-amd64,systemd,systemd-sysv,udev,dbus,cloud-init,python3-cffi-backend,isc-dhcp-client
PKGS=$PKGS,openssh-server,sudo,iproute2,iputils-ping,netbase,ca-certificates,curl,procps,less
PKGS=$PKGS,munge,slurmd,slurmctld,slurm-client,wireguard-tools,nftables,iptables,kmod
debootstrap --variant=minbase --include="$PKGS" bookworm "$WORK/root" http://deb.debian.org/debian \
  >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
R="$WORK/root"

# Services the image's packages enable but a fresh node must not run before hybridgrid configures
# it: munged (no key yet), slurmd/slurmctld (no slurm.conf).
for s in munge slurmd slurmctld; do chroot "$R" systemctl disable "$s" >/dev/null 2>&1 || true; done
rm -f "$R/etc/munge/munge.key"
# A fresh identity per server: cloud-init sets the hostname, SSH host keys are made on first boot.
: >"$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_*
echo localhost >"$R/etc/hostname"
echo 'LABEL=root / ext4 defaults,discard 0 1' >"$R/etc/fstab"
cat >"$R/etc/cloud/cloud.cfg.d/90-osbed.cfg" <<'EOF'
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
mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$R/etc/systemd/system/systemd-networkd-wait-online.service.d/ipv4.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --ipv4 --timeout=60
EOF
mkdir -p "$R/etc/systemd/network"
cat >"$R/etc/systemd/network/99-osbed-noRA.network" <<'EOF'
[Match]
Name=*
[Network]
IPv6AcceptRA=no
EOF
chroot "$R" systemctl enable systemd-networkd >/dev/null 2>&1
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/usr/share/doc/* "$R"/usr/share/man/*

mkdir -p "$WORK/out"
cp "$R"/boot/vmlinuz-* "$WORK/out/vmlinuz"
cp "$R"/boot/initrd.img-* "$WORK/out/initrd.img"
# 2 GiB file system; the flavor's disk may be larger (cloud-init grows the file system).
# Only the image's folder may reach stdout (up.sh reads it): mkfs says "Creating regular file"
# there even with -q, which broke every first start of a fresh machine's bed.
mkfs.ext4 -q -L root -d "$R" "$WORK/root.raw" 2G >&2
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/out/root.qcow2" >&2
date -u +%FT%TZ >"$WORK/out/done"
rm -rf "$OUT"; mv "$WORK/out" "$OUT"
echo "image.sh: built $OUT in $(( $(date +%s) - T0 )) s ($(du -sh "$R" | cut -f1) root file system)" >&2
echo "$OUT"
