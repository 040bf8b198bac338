#!/usr/bin/env bash
# Relay failover (issue 22, docs/benchmarks.md "Relay failover"): a local cluster of three sites,
# relay pairs (`gateway.standby`) at a (the master site) and b, a single gateway at c. Root; the
# release build. Per fault, RUNS times: a 10 Hz ping from b's worker to c's (`ping -D`) while b's
# active relay
#   kill:    dies (every process in its namespace killed, its port down, as a dead server);
#   device:  loses its tunnel device and stops forwarding;
# then `up` brings it back as the standby (the gap during that `up` too). Prints each gap and
# p50/p95/max per fault, and per takeover the steps from the new active relay's logs (keepalived's
# "Entering MASTER STATE", then `agent relay-state`'s apply) against the fault's time.
#   sudo scripts/bench-failover.sh [RUNS]
set -euo pipefail
RUNS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# HYBRIDGRID_BIN: another build to measure (then nothing is built).
B=${HYBRIDGRID_BIN:-$ROOT/target/release/hybridgrid}
WORK=$(mktemp -d /tmp/hg-bench-fo.XXXXXX)
export HYBRIDGRID_STATE_DIR=$WORK/state
C=hgfo
F=$WORK/cluster.yaml
cleanup() { "$B" down -f "$F" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap "exit 130" INT TERM

[ -n "${HYBRIDGRID_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p hybridgrid)
cat >"$F" <<YAML
name: $C
admin_cidrs: [203.0.113.0/24]
tunnel: { cidr: 10.0.0.0/24 }
sites:
  - { name: a, master: true, subnet: 10.61.0.0/24, gateway: { standby: true }, workers: [{ count: 1 }] }
  - { name: b, subnet: 10.62.0.0/24, gateway: { standby: true }, workers: [{ count: 1 }] }
  - { name: c, subnet: 10.63.0.0/24, workers: [{ count: 1 }] }
YAML
HG() { "$B" "$@"; }
ns() { echo "hg-$C-$1"; }
active() { # the relay of b's pair holding its virtual address (a dead one's port is down)
  for r in b-gw-a b-gw-b; do
    ip -n "$(ns $r)" -o -4 addr show up 2>/dev/null | grep -q 'inet 10.62.0.252/' && { echo $r; return; }
  done
  echo none
}
. "$ROOT/scripts/failover-gaps.sh"   # gap FILE SECONDS, stats
ping_for() { # SECONDS FILE: a 10 Hz ping from b's worker to c's, in the background
  HG exec -f "$F" b-worker-1 -- ping -D -n -i 0.1 -W 1 -w "$1" 10.63.0.6 >"$2" 2>/dev/null &
}
steps() { # RELAY T0: seconds from the fault to the new active relay's apply of its peers
  local log=$HYBRIDGRID_STATE_DIR/$C/nodes/$1/relay-state.log applied
  applied=$(awk '/ MASTER / {print $1}' "$log" 2>/dev/null | tail -1)
  [ -n "$applied" ] && echo "    the new active relay had applied its peers $(echo "$applied - $2" | bc) s after the fault"
  return 0
}

HG up -f "$F" -q >/dev/null
echo "# $(date -u +%FT%TZ) $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for fault in kill device; do
  : >"$WORK/$fault.gaps"; : >"$WORK/$fault.back"
  for i in $(seq "$RUNS"); do
    dead=$(active)
    [ "$dead" != none ] || { sleep 2; dead=$(active); }
    [ "$dead" != none ] || { echo "$fault $i: no relay of b holds its virtual address" >&2; exit 1; }
    ping_for 14 "$WORK/ping"
    sleep 3
    t0=$(date +%s.%N)
    case $fault in
      kill) # all at once: stopped first, so that none goes down gracefully (keepalived's VRRP
            # child would send its farewell when its parent died)
        pids=$(ip netns pids "$(ns "$dead")")
        [ -n "$pids" ] && kill -STOP $pids && kill -KILL $pids
        ip -n "$(ns "$dead")" link set eth0 down;;
      device)
        ip -n "$(ns "$dead")" link del wg0
        ip netns exec "$(ns "$dead")" sysctl -qw net.ipv4.ip_forward=0;;
    esac
    wait
    g=$(gap "$WORK/ping" 14); echo "$g" >>"$WORK/$fault.gaps"
    now=$(active)
    echo "$fault $i: $dead → $now, longest gap $g s"
    [ "$now" = none ] || steps "$now" "$t0"
    ping_for 12 "$WORK/ping"
    HG up -f "$F" -q >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }
    wait
    g=$(gap "$WORK/ping" 12); echo "$g" >>"$WORK/$fault.back"
    echo "    up: $dead back as standby (active: $(active)), longest gap $g s"
  done
done
for fault in kill device; do
  echo "$fault, failover: $(stats <"$WORK/$fault.gaps")"
  echo "$fault, the dead relay back through up: $(stats <"$WORK/$fault.back")"
done
