#!/bin/bash
# Stop everything up.sh DIR started: each recorded PID, its process group and all its descendants,
# and what the services daemonized on their own (QEMU guests, dnsmasq, haproxy: any process whose
# command line names DIR). SIGTERM, wait up to 20 s, then SIGKILL. Then remove the data plane's
# traces: Neutron's router/DHCP namespaces, bridges, taps and VXLAN devices, its iptables/ebtables
# chains and ipsets, the bed's nftables table and bridge osbed-ext.
# Idempotent: nothing recorded/running -> nothing to do.
# usage: down.sh DIR
set -uo pipefail
B=$(cd "${1:?usage: down.sh DIR (the folder given to up.sh)}" 2>/dev/null && pwd) || { echo "down.sh: no such folder $1 (nothing to stop)"; exit 0; }
desc() { local c; for c in $(pgrep -P "$1"); do desc "$c"; done; echo "$1"; }
ours() {   # guard against a stale PID file whose PID now belongs to something else
  grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null && return 2   # a zombie: nothing to stop
  local cwd; cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
  [[ "$cwd" == "$B"* ]] || [ "$(cat "/proc/$1/comm" 2>/dev/null)" = epmd ] ||
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$B/" ||
    grep -qsxzF "OSBED_DIR=$B" "/proc/$1/environ"
}
pids=""
for f in "$B"/run/*.pid; do
  [ -f "$f" ] || continue
  p=$(tr -dc 0-9 <"$f"); [ -n "$p" ] || continue
  # the recorded process, its descendants, and its process group (survivors of a dead leader too)
  for c in $( [ -d "/proc/$p" ] && desc "$p"; pgrep -g "$p" ); do
    ours "$c"; o=$?
    if [ $o = 0 ]; then pids="$pids $c"; elif [ $o = 1 ] && [ -d "/proc/$c" ]; then echo "down.sh: PID $c ($f) is not from $B, left alone" >&2; fi
  done
done
# daemonized helpers (their own session): QEMU (disks under DIR), dnsmasq and haproxy (configs
# under DIR), privsep daemons (OSBED_DIR=DIR in their environment)
for c in $(pgrep -f -- "$B/"; grep -lsxzF "OSBED_DIR=$B" /proc/[0-9]*/environ | cut -d/ -f3); do
  case "$(cat "/proc/$c/comm" 2>/dev/null)" in
    qemu-system-x86|dnsmasq|haproxy|keepalived|radvd|privsep-helper|neutron-*|nova-*|python3) pids="$pids $c";;
  esac
done
pids=$(echo $pids | tr ' ' '\n' | grep -vx "$$" | sort -un | tr '\n' ' ')
n=$(echo $pids | wc -w)
if [ "$n" -gt 0 ]; then
  kill -TERM $pids 2>/dev/null
  alive=""
  for _ in $(seq 1 100); do
    alive=""; for p in $pids; do [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break; sleep 0.2
  done
  if [ -n "$alive" ]; then echo "down.sh: SIGKILL to$alive"; kill -KILL $alive 2>/dev/null; sleep 0.5; fi
fi

# --- the data plane (one test bed per machine: Neutron's names carry no bed prefix of their own)
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(qrouter|qdhcp)-[0-9a-f-]{36}$'); do
  ip netns delete "$ns" 2>/dev/null
done
for dev in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
             grep -E '^(brq[0-9a-f-]{11}|tap[0-9a-f-]{11}|vxlan-[0-9]+|osbed-ext)$'); do
  ip link delete "$dev" 2>/dev/null
done
# iptables/ip6tables/ebtables chains of Neutron's agents (all nftables underneath), and the tables
# they created
PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 "$(dirname "$0")/netclean.py" "$B"
for set in $(ipset list -n 2>/dev/null | grep -E '^NIPv[46]'); do ipset destroy "$set" 2>/dev/null; done
nft delete table inet osbed 2>/dev/null
if [ -f "$B/run/libvirt-mountpoints" ]; then
  while read -r d; do rmdir "$d" 2>/dev/null; done <"$B/run/libvirt-mountpoints"
  rm -f "$B/run/libvirt-mountpoints"
fi
rm -f "$B"/run/*.pid "$B"/clouds.yaml
echo "down.sh: stopped $n processes from $B"
