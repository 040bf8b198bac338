#!/usr/bin/env bash
# Provisioning benchmark with servers that really boot: `hybridgrid up` of a two-site openstack
# cluster on the project's test bed (testbed/openstack, libvirt/QEMU with TCG), against the slowest
# server's create -> cloud-init done in the same run.
#
# usage: scripts/bench-openstack-boot.sh BED_DIR [WORKERS_PER_SITE] [IMAGE]   (the bed up in BED_DIR)
#   IMAGE: debian-12-generic (default: the cloud's stock image; `up` installs the node packages)
#          or hybridgrid-node (the bed's prepared image, which has them).
# BENCH_UP_LOG=FILE keeps up's output, each line with the seconds since up started.
# Prints, per run: up's wall time; each server's create -> ACTIVE and create -> cloud-init done
# (Nova's `created` to the "Cloud-init ... finished at" line of its console log); the ratio of up
# to the slowest server; the bytes this machine sent over SSH (TCP to port 22 of the bed's
# floating IPs, an nftables counter: what the user's link carries); and when the relays' WireGuard
# handshake was first seen (over SSH). Nodes get the agent the way users' nodes do: over the
# node channel, once per site.
set -euo pipefail
cd "$(dirname "$0")/.."
BED=$(cd "${1:?usage: bench-openstack-boot.sh BED_DIR [WORKERS_PER_SITE] [IMAGE]}" && pwd)
WORKERS=${2:-0}
IMAGE=${3:-debian-12-generic}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin OS_CLIENT_CONFIG_FILE=$BED/clouds.yaml
[ -f "$BED/clouds.yaml" ] || { echo "bench: no test bed in $BED (testbed/openstack/up.sh $BED)" >&2; exit 1; }
cargo build --release --locked -p hybridgrid -p hybridgrid-agent >/dev/null 2>&1 ||
  cargo build --release --locked -p hybridgrid -p hybridgrid-agent
W=$(mktemp -d /tmp/hg-bench-boot.XXXXXX)
NAME="bb$(( $$ % 100000 ))"
cp target/release/hybridgrid target/release/hybridgrid-agent "$W/"
ssh-keygen -q -t ed25519 -N "" -C "$NAME" -f "$W/id"
TABLE="hg-bench-$NAME"
nft -f - <<NFT
table inet $TABLE {
  chain out { type filter hook output priority 0; policy accept;
    ip daddr 203.0.113.0/24 tcp dport 22 counter name ssh_out; }
  counter ssh_out { }
}
NFT
HG() { HYBRIDGRID_STATE_DIR="$W/state" "$W/hybridgrid" "$@" -f "$W/cluster.yaml"; }
cleanup() { [ -z "${BENCH_UP_LOG:-}" ] || cp "$W/up.log" "$BENCH_UP_LOG"; HG down >"$W/down.log" 2>&1 || cat "$W/down.log" >&2; nft delete table inet "$TABLE" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
trap "exit 130" INT TERM   # so that cleanup runs on a signal too
site() {
  printf '  - name: %s\n    cloud: %s\n    subnet: %s\n    master: %s\n    external_network: public\n    gateway: { flavor: g1.node, image: %s }\n    workers:\n      - { count: %s, flavor: g1.node, image: %s }\n' "$1" "$2" "$3" "$4" "$IMAGE" "$5" "$IMAGE"
}
{
  printf 'name: %s\nprovider: openstack\nssh_public_key: %s\nadmin_cidrs: [203.0.113.1/32]\nsites:\n' "$NAME" "$W/id.pub"
  site a site-a 10.71.0.0/24 true "$WORKERS"
  site b site-b 10.72.0.0/24 false "$WORKERS"
} >"$W/cluster.yaml"
t0=$(date +%s.%N)
HG up 2>&1 | scripts/stamp-lines >"$W/up.log" || { cat "$W/up.log" >&2; exit 1; }
t_up=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
echo "up: ${t_up} s ($(grep -c . "$W/up.log") lines of output), image $IMAGE, $WORKERS workers per site"
ssh_bytes=$(nft -j list counter inet "$TABLE" ssh_out | python3 -c 'import json,sys; print([o["counter"]["bytes"] for o in json.load(sys.stdin)["nftables"] if "counter" in o][0])')
echo "sent over SSH by this machine during up: $ssh_bytes bytes (agent $(stat -c %s "$W/hybridgrid-agent") bytes before stripping)"
slowest=0
for cloud in site-a site-b; do
  for id in $(openstack --os-cloud "$cloud" server list --name "^$NAME-" -f value -c ID); do
    j=$(openstack --os-cloud "$cloud" server show "$id" -f json -c name -c created -c updated)
    name=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["name"])' "$j")
    created=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["created"])' "$j")
    done_at=""
    for _ in $(seq 1 150); do
      done_at=$(openstack --os-cloud "$cloud" console log show "$id" 2>/dev/null | sed -n 's/.*Cloud-init v\. [^ ]* finished at \(.*\)\. Datasource.*/\1/p' | tail -1)
      [ -n "$done_at" ] && break; sleep 2
    done
    [ -n "$done_at" ] || { echo "bench: $name: no cloud-init finished line" >&2; exit 1; }
    s=$(( $(date -d "$done_at" +%s) - $(date -d "$created" +%s) ))
    echo "  $name: create -> cloud-init done ${s} s"
    [ "$s" -gt "$slowest" ] && slowest=$s
  done
done
echo "slowest server create -> cloud-init done: ${slowest} s; up / slowest = $(awk -v a="$t_up" -v b="$slowest" 'BEGIN{printf "%.2f", a/b}')"
# When do the relays' tunnels carry traffic? (handshake seen on the master relay)
fip=$(openstack --os-cloud site-a floating ip list -f value -c "Floating IP Address" -c Port | awk '$2 != "None" {print $1}' | head -1)
for i in $(seq 1 60); do
  hs=$(ssh -i "$W/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o ConnectTimeout=5 -o BatchMode=yes "debian@$fip" 'sudo wg show all latest-handshakes' 2>/dev/null | awk '$3 > 0' | wc -l) || hs=0
  if [ "$hs" -ge 1 ]; then
    echo "handshake on the master relay ($fip) $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s after up started"
    exit 0
  fi
  sleep 3
done
echo "bench: no WireGuard handshake on the master relay ($fip) within 3 minutes of up returning" >&2
exit 1
