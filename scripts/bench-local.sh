#!/usr/bin/env bash
# Benchmarks of the local provider (docs/benchmarks.md, "Local provider"). Root; needs iperf3,
# wireguard-go and bc (Debian packages; scripts/setup.sh installs them). Everything runs in
# namespaces this script creates and removes.
#   scripts/bench-local.sh [UP_RUNS] [IPERF_RUNS] [IPERF_SECONDS]
# IMPLS (environment) chooses the relays' daemons of (b), default "gotatun wireguard-go";
# "gotatun-none gotatun-tun gotatun wireguard-go" measures each offload step of the embedded
# device (none: gotatun's own I/O; tun: + TUN offloads; gotatun: + UDP segmentation).
# (a) wall time of `up` of examples/two-sites.yaml until `status` shows every node reaching every
#     node (release build, fresh cluster each run);
# (b) iperf3 TCP worker → worker across sites through the tunnel, the embedded gotatun device vs
#     Debian's wireguard-go in the relays of the same cluster (HYBRIDGRID_WG_IMPL), alternating;
# (c) iperf3 over a raw veth between two namespaces: the limit.
set -euo pipefail

UP_RUNS=${1:-5}
IPERF_RUNS=${2:-3}
SECS=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/hybridgrid
WORK=$(mktemp -d /tmp/hg-bench.XXXXXX)
export HYBRIDGRID_STATE_DIR=$WORK/state
C=hgbench
F=$WORK/cluster.yaml
VA=hg-benchveth-a
VB=hg-benchveth-b

cleanup() {
    # A supervisor paused by switch_impl when the script stopped.
    pkill -CONT -f "hybridgrid hold --tag $(ns '')" 2>/dev/null || true
    "$B" down -f "$F" >/dev/null 2>&1 || true
    ip netns del $VA 2>/dev/null || true
    ip netns del $VB 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p hybridgrid)
sed "s/^name: .*/name: $C/" "$ROOT/examples/two-sites.yaml" >"$F"
ns() { echo "hg-$C-$1"; }
now() { date +%s.%N; }
stats() { # "median (min–max)" of the numbers on stdin
    sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.2f (%.2f–%.2f)", m, v[1], v[NR]}'
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# (a) up until all reachable
: >"$WORK/up.txt"
for i in $(seq "$UP_RUNS"); do
    "$B" down -f "$F" >/dev/null 2>&1 || true
    t0=$(now)
    "$B" up -f "$F" >/dev/null 2>&1
    t1=$(now)
    until "$B" status -f "$F" >/dev/null 2>&1; do sleep 0.1; done
    t2=$(now)
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t0" | bc)" | tee -a "$WORK/up.txt" | sed "s/^/up run $i: up, up+status all reachable (s): /"
done
echo "up alone (s): $(cut -d' ' -f1 "$WORK/up.txt" | stats)"
echo "up until all reachable (s): $(cut -d' ' -f2 "$WORK/up.txt" | stats)"

# (b) the tunnel: switch both relays' daemon in place (the agent starts the chosen one).
IMPLS=${IMPLS:-gotatun wireguard-go}
switch_impl() { # gotatun | gotatun-none | gotatun-tun | wireguard-go
    case $1 in
        wireguard-go) want="wireguard-go -f wg0" ;;
        gotatun-*) want="wg-userspace wg0 .*--offload ${1#gotatun-}" ;;
        *) want="wg-userspace wg0 --tag [^ ]* $" ;;
    esac
    for relay in bielefeld-master giessen-gw; do
        dir=$HYBRIDGRID_STATE_DIR/$C/nodes/$relay
        # The node's supervisor (`hybridgrid hold`) restarts a dead daemon within a second, of
        # its own kind: paused while the daemon is switched.
        hold=$(ip netns pids "$(ns "$relay")" | while read -r p; do
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "hybridgrid hold "; then
                echo "$p"
            fi
        done)
        # Under the agent's lock, so it is not paused in the middle of a reconcile (holding it).
        if [ -n "$hold" ]; then flock "$dir/agent.lock" kill -STOP $hold; fi
        for attempt in $(seq 10); do
            pid=$(cat "$dir/wg0.pid")
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$want"; then
                break
            fi
            [ "$attempt" -lt 10 ] || { echo "$relay does not run $1" >&2; exit 1; }
            kill "$pid" 2>/dev/null || true
            # A daemon the paused supervisor started stays a zombie until it is resumed.
            while kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
                sleep 0.05
            done
            HYBRIDGRID_WG_IMPL=$1 "$B" exec -f "$F" "$relay" -- env HYBRIDGRID_WG_IMPL="$1" \
                "$B" agent apply --config "$dir/node.json" --state-dir "$dir" --tag "$(ns "$relay")" >/dev/null
        done
        if [ -n "$hold" ]; then kill -CONT $hold; fi
    done
    # Until the tunnel carries traffic again.
    for _ in $(seq 100); do
        ip netns exec "$(ns giessen-worker-1)" ping -q -c 1 -W 1 10.10.0.6 >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "tunnel did not come back with $1" >&2
    exit 1
}
daemon_cpu() { # CPU seconds used so far by both relays' WireGuard daemons
    for relay in bielefeld-master giessen-gw; do
        awk '{print $14 + $15}' "/proc/$(cat "$HYBRIDGRID_STATE_DIR/$C/nodes/$relay/wg0.pid")/stat"
    done | awk -v hz="$(getconf CLK_TCK)" '{s += $1} END {printf "%.2f", s / hz}'
}
iperf() { # client-ns server-ns server-ip → Mbit/s
    ip netns exec "$2" iperf3 -s -1 -D -I "$WORK/iperf.pid" >/dev/null
    sleep 0.3
    ip netns exec "$1" iperf3 -c "$3" -t "$SECS" -J |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
    pkill -F "$WORK/iperf.pid" 2>/dev/null || true
}

ip netns add $VA
ip netns add $VB
ip -n $VA link add veth0 type veth peer name veth0 netns $VB
ip -n $VA addr add 192.0.2.1/24 dev veth0
ip -n $VB addr add 192.0.2.2/24 dev veth0
for n in $VA $VB; do ip -n $n link set lo up; ip -n $n link set veth0 up; done

: >"$WORK/tput.txt"
for i in $(seq "$IPERF_RUNS"); do
    for impl in $IMPLS; do
        switch_impl $impl
        load=$(cut -d' ' -f1 /proc/loadavg)
        c0=$(daemon_cpu)
        v=$(iperf "$(ns giessen-worker-1)" "$(ns bielefeld-worker-1)" 10.10.0.6)
        c1=$(daemon_cpu)
        # CPU-seconds of both daemons per Gbit moved: less sensitive to the machine's load.
        cpg=$(echo "scale=2; ($c1 - $c0) / ($v * $SECS / 1000)" | bc)
        echo "$impl $v $cpg" >>"$WORK/tput.txt"
        echo "iperf run $i $impl: $v Mbit/s, daemons $cpg CPU-s/Gbit (load $load)"
    done
    v=$(iperf $VA $VB 192.0.2.2)
    echo "veth $v" >>"$WORK/tput.txt"
    echo "iperf run $i raw veth: $v Mbit/s"
done
for impl in $IMPLS veth; do
    echo "$impl Mbit/s: $(awk -v k=$impl '$1==k {print $2}' "$WORK/tput.txt" | stats)"
done
for impl in $IMPLS; do
    echo "$impl CPU-s per Gbit: $(awk -v k=$impl '$1==k {print $3}' "$WORK/tput.txt" | stats)"
done
if [[ " $IMPLS " == *" gotatun "* && " $IMPLS " == *" wireguard-go "* ]]; then
    g=$(awk '$1=="gotatun" {print $2}' "$WORK/tput.txt" | sort -g | awk '{v[NR]=$1} END {print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}')
    w=$(awk '$1=="wireguard-go" {print $2}' "$WORK/tput.txt" | sort -g | awk '{v[NR]=$1} END {print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}')
    echo "gotatun / wireguard-go (medians): $(echo "scale=2; $g / $w" | bc)"
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
