#!/usr/bin/env bash
# Relay failover on the test bed (issue 22, docs/benchmarks.md "Relay failover"): an openstack
# cluster of two sites from the bed's prepared image, a (master, one worker) and c (a relay pair,
# one worker). Per run: a 10 Hz ping from a's worker to c's (`ping -D`) while c's active relay's
# server is deleted (`openstack server delete`: the guest dies at once), the longest gap; then
# `up` makes the server again, which returns as the standby (the longest gap during that `up`).
# Prints each gap, p50/p95/max, and per takeover the steps from the new active relay's logs
# (keepalived's "Entering MASTER STATE", then the peers applied by `agent relay-state`) against
# the time of the delete call (the guests' clocks follow the bed's time server).
#   scripts/bench-failover-bed.sh BED [RUNS]      (testbed/openstack/up.sh BED first)
set -euo pipefail
BED=${1:?usage: bench-failover-bed.sh BED [RUNS]}
RUNS=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# HYBRIDGRID_BIN: another build to measure (then nothing is built; hybridgrid-agent beside it).
B=${HYBRIDGRID_BIN:-$ROOT/target/release/hybridgrid}
WORK=$(mktemp -d /tmp/hg-bench-fobed.XXXXXX)
export HYBRIDGRID_STATE_DIR=$WORK/state OS_CLIENT_CONFIG_FILE=$BED/clouds.yaml
C=hgfob
F=$WORK/cluster.yaml
cleanup() { "$B" down -f "$F" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap "exit 130" INT TERM

[ -n "${HYBRIDGRID_BIN:-}" ] ||
  (cd "$ROOT" && cargo build --release -q -p hybridgrid -p hybridgrid-agent)
ssh-keygen -q -t ed25519 -N "" -C "$C" -f "$WORK/id_ed25519"
cat >"$F" <<YAML
name: $C
provider: openstack
ssh_public_key: $WORK/id_ed25519.pub
admin_cidrs: [203.0.113.1/32]
sites:
  - name: a
    cloud: site-a
    subnet: 10.71.0.0/24
    master: true
    external_network: public
    gateway: { flavor: g1.node, image: hybridgrid-node }
    workers: [{ count: 1, flavor: g1.node, image: hybridgrid-node }]
  - name: c
    cloud: site-b
    subnet: 10.73.0.0/24
    external_network: public
    gateway: { flavor: g1.node, image: hybridgrid-node, standby: true }
    workers: [{ count: 1, flavor: g1.node, image: hybridgrid-node }]
YAML
HG() { "$B" "$@"; }
VIP=10.73.0.252
active() { # the relay of c's pair holding its virtual address
  for r in c-gw-a c-gw-b; do
    HG exec -f "$F" "$r" -- ip -4 -o addr show to "$VIP/32" 2>/dev/null | grep -q "$VIP" &&
      { echo $r; return; }
  done
  echo none
}
. "$ROOT/scripts/failover-gaps.sh"   # gap FILE SECONDS, stats
ping_for() { # SECONDS FILE: a 10 Hz ping from a's worker to c's, in the background
  HG exec -f "$F" a-worker-1 -- sudo ping -D -n -i 0.1 -W 1 -w "$1" 10.73.0.6 >"$2" 2>/dev/null &
}
steps() { # RELAY T0: keepalived's MASTER and relay-state's apply on the new active relay
  local s
  s=$(HG exec -f "$F" "$1" -- sudo sh -c \
    'grep -h "Entering MASTER STATE" /var/lib/hybridgrid/keepalived.log | tail -1 | cut -c1-24;
     awk "/ MASTER / {print \$1}" /var/lib/hybridgrid/relay-state.log | tail -1' 2>/dev/null) || return 0
  local master applied
  master=$(date -d "$(echo "$s" | sed -n 1p)" +%s 2>/dev/null || true)
  applied=$(echo "$s" | sed -n 2p)
  [ -n "$master" ] && echo "    keepalived MASTER ~$(echo "$master - $2" | bc | cut -d. -f1) s after the delete call (1 s resolution)"
  [ -n "$applied" ] && echo "    the new active relay had applied its peers $(echo "$applied - $2" | bc) s after the delete call"
  return 0
}

t=$(date +%s)
HG up -f "$F" -q >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }
echo "# $(date -u +%FT%TZ) $(nproc) cores; up $(( $(date +%s) - t )) s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/gaps"; : >"$WORK/back"
for i in $(seq "$RUNS"); do
  dead=$(active)
  [ "$dead" != none ] || { echo "run $i: no relay of c holds its virtual address" >&2; exit 1; }
  ping_for 30 "$WORK/ping"
  sleep 6
  t0=$(date +%s.%N)
  openstack --os-cloud site-b server delete "$C-$dead"
  wait
  g=$(gap "$WORK/ping" 30); echo "$g" >>"$WORK/gaps"
  now=$(active)
  echo "run $i: $dead's server deleted → $now active, longest gap $g s"
  [ "$now" = none ] || steps "$now" "$t0"
  ping_for 600 "$WORK/ping"
  t=$(date +%s)
  HG up -f "$F" -q >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }
  took=$(( $(date +%s) - t ))
  HG exec -f "$F" a-worker-1 -- sudo pkill -INT -x ping || true
  wait
  # Up to the pkill: the time after the last reply does not count.
  g=$(gap "$WORK/ping" 0); echo "$g" >>"$WORK/back"
  echo "    up ($took s): $dead back as standby (active: $(active)), longest gap $g s"
done
echo "server deleted, failover: $(stats <"$WORK/gaps")"
echo "the dead relay made again by up: $(stats <"$WORK/back")"
