#!/usr/bin/env bash
# Workers on demand: submit → job start on a cold (powered-down) worker.
#
# usage: sudo scripts/bench-on-demand.sh [RUNS]            (local; root: it makes namespaces)
#        scripts/bench-on-demand.sh RUNS BED [IMAGE]       (openstack on the test bed in BED,
#                                                          testbed/openstack/up.sh BED first;
#                                                          IMAGE: debian-12-generic by default)
#
# A two-site cluster whose workers are all on demand (one group per site, count 1,
# suspend_time 10 on local, 120 on openstack: its servers are read after the jobs). On openstack
# site a holds the master, site b a gateway, and each worker's server is timed from its create
# to cloud-init's end as Nova shows them (the goal compares submit → job start with that).
# Each run waits until both workers are powered down again, then:
#   one site:   one job for bielefeld's partition;
#   two sites:  one job for each site's partition, submitted together.
# Prints, per job: submit → slurmctld asked the power service (the resume line in its log) →
# the worker registered (slurmd's start, Slurm's SlurmdStartTime) → the job started (StartTime),
# from `scontrol show job` and `show node` (whole seconds) and the power programs' log.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BED=${2:-}
IMAGE=${3:-debian-12-generic}
cargo build --release --locked -p hybridgrid -p hybridgrid-agent >/dev/null 2>&1 ||
  cargo build --release --locked -p hybridgrid -p hybridgrid-agent
W=$(mktemp -d /tmp/hg-bench-od.XXXXXX)
NAME="bo$(( $$ % 100000 ))"
cp target/release/hybridgrid "$W/"
export HYBRIDGRID_STATE_DIR="$W/state"
HG() { "$W/hybridgrid" "$@"; }
cleanup() { HG down -f "$W/cluster.yaml" >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
trap "exit 130" INT TERM
if [ -n "$BED" ]; then
  export OS_CLIENT_CONFIG_FILE="$BED/clouds.yaml"
  ssh-keygen -q -t ed25519 -N '' -f "$W/key"
  cp target/release/hybridgrid-agent "$W/"
  cat >"$W/cluster.yaml" <<YAML
name: $NAME
provider: openstack
ssh_public_key: $W/key.pub
admin_cidrs: [203.0.113.1/32]
sites:
  - name: bielefeld
    cloud: site-a
    master: true
    subnet: 10.71.0.0/24
    external_network: public
    gateway: { flavor: g1.node, image: $IMAGE }
    workers: [{ name: od, count: 1, flavor: g1.node, image: $IMAGE, on_demand: true }]
  - name: giessen
    cloud: site-b
    subnet: 10.72.0.0/24
    external_network: public
    gateway: { flavor: g1.node, image: $IMAGE }
    workers: [{ name: od, count: 1, flavor: g1.node, image: $IMAGE, on_demand: true }]
slurm:
  suspend_time: 120
YAML
else
cat >"$W/cluster.yaml" <<YAML
name: $NAME
sites:
  - name: bielefeld
    master: true
    subnet: 10.10.0.0/24
    workers: [{ name: od, count: 1, cpus: 2, memory: 1024, on_demand: true }]
  - name: giessen
    subnet: 10.20.0.0/24
    workers: [{ name: od, count: 1, cpus: 2, memory: 1024, on_demand: true }]
slurm:
  suspend_time: 10
YAML
fi
HG up -q -f "$W/cluster.yaml" >/dev/null
M() { HG exec -f "$W/cluster.yaml" bielefeld-master -- "$@"; }
asleep() { [ "$(M sinfo -h -N -o '%t' | sort -u | tr -d '\n')" = "idle~" ]; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
secs() { date -d "$1" +%s; }
job_line() {
  local id=$1 submitted=$2 node start reg
  while [ "$(M squeue -h -j "$id" -o %T 2>/dev/null)" != "" ]; do sleep 0.2; done
  node=$(M scontrol show job "$id" | field NodeList)
  start=$(M scontrol show job "$id" | field StartTime)
  reg=$(M scontrol show node "$node" | field SlurmdStartTime)
  printf '  job %s on %s: registered %+d s, started %+d s after submit' "$id" "$node" \
    $(( $(secs "$reg") - submitted )) $(( $(secs "$start") - submitted ))
  [ -n "$BED" ] && server_line "$node" "$submitted"
  echo
}
# openstack: the worker's server, created → cloud-init done (its console's "finished at"), from
# submit; read while the server still exists (suspend_time keeps it a while).
server_line() {
  local node=$1 submitted=$2 cloud created done
  cloud=site-a; [ "${node#giessen}" != "$node" ] && cloud=site-b
  created=$(openstack --os-cloud $cloud server show "$NAME-$node" -f value -c created)
  done=$(openstack --os-cloud $cloud console log show "$NAME-$node" | sed -n 's/.*Cloud-init v.* finished at \(.*\) +0000.*/\1/p' | tail -1)
  printf '; server created %+d s, cloud-init done %+d s' $(( $(secs "$created") - submitted )) \
    $(( $(secs "$done UTC") - submitted ))
}
for run in $(seq 1 "$RUNS"); do
  until asleep; do sleep 1; done
  echo "run $run, one site:"
  t=$(date +%s); id=$(M sbatch --parsable -p bielefeld --wrap "sleep 1" | tr -d '\r')
  job_line "$id" "$t"
  until asleep; do sleep 1; done
  echo "run $run, two sites at once:"
  t=$(date +%s)
  a=$(M sbatch --parsable -p bielefeld --wrap "sleep 1" | tr -d '\r')
  b=$(M sbatch --parsable -p giessen --wrap "sleep 1" | tr -d '\r')
  job_line "$a" "$t"; job_line "$b" "$t"
done
echo "the power programs' log (Unix time, verb, nodes, reply):"
M sh -c 'cat /var/log/slurm/hybridgrid-power.log 2>/dev/null || journalctl -q -u hybridgrid-power' |
  sed 's/^/  /' || true
