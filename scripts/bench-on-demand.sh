#!/usr/bin/env bash
# Workers on demand on the local provider: submit → job start on a cold (powered-down) worker.
#
# usage: sudo scripts/bench-on-demand.sh [RUNS]   (root: the local provider makes namespaces)
#
# A two-site local cluster whose workers are all on demand (one group per site, count 1,
# suspend_time 10). Each run waits until both workers are powered down again, then:
#   one site:   one job for bielefeld's partition;
#   two sites:  one job for each site's partition, submitted together.
# Prints, per job: submit → slurmctld asked the power service (the resume line in its log) →
# the worker registered (slurmd's start, Slurm's SlurmdStartTime) → the job started (StartTime),
# from `scontrol show job` and `show node` (whole seconds) and the power programs' log.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release --locked -p hybridgrid >/dev/null 2>&1 || cargo build --release --locked -p hybridgrid
W=$(mktemp -d /tmp/hg-bench-od.XXXXXX)
NAME="bo$(( $$ % 100000 ))"
cp target/release/hybridgrid "$W/"
export HYBRIDGRID_STATE_DIR="$W/state"
HG() { "$W/hybridgrid" "$@"; }
cleanup() { HG down -f "$W/cluster.yaml" >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
trap "exit 130" INT TERM
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
  printf '  job %s on %s: registered %+d s, started %+d s after submit\n' "$id" "$node" \
    $(( $(secs "$reg") - submitted )) $(( $(secs "$start") - submitted ))
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
M cat /var/log/slurm/hybridgrid-power.log | sed 's/^/  /'
