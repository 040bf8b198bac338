#!/bin/bash
# Run virtlogd and libvirtd for the test bed in a private mount namespace whose /etc/libvirt,
# /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /run/libvirt are folders of DIR, so
# that nothing libvirt writes (domain definitions, sockets, logs) outlives the bed.
# usage: unshare -m --propagation private libvirt.sh DIR      (started so by up.sh)
set -euo pipefail
B=$1
# DIR/etc/libvirt holds the rendered libvirtd.conf, virtlogd.conf and qemu.conf
mount --bind "$B/etc/libvirt" /etc/libvirt
for d in lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt run:/run/libvirt; do
  mkdir -p "$B/libvirt/${d%%:*}"
  # a mount point the host lacked is recorded, so down.sh removes it again
  [ -d "${d#*:}" ] || { mkdir -p "${d#*:}"; echo "${d#*:}" >>"$B/run/libvirt-mountpoints"; }
  mount --bind "$B/libvirt/${d%%:*}" "${d#*:}"
done
virtlogd -f /etc/libvirt/virtlogd.conf &
exec libvirtd -f /etc/libvirt/libvirtd.conf
