#!/usr/bin/env bash
# Scale benchmark of the local provider (issue 25): SITES sites of WORKERS workers each, a
# dataset in a bucket at each of the first DATASET_SITES sites (their stores count in), then:
#   up from nothing, status, the idle cluster's CPU over IDLE seconds (the whole machine, from
#   /proc/stat), the workers idle in Slurm, down.
#
# usage: sudo scripts/bench-scale.sh [SITES] [WORKERS] [DATASET_SITES] [IDLE]
#        (defaults 20 10 5 60: 220 nodes; 50 20 5 60 is the 1,050-node cluster)
# The idle CPU is measured SETTLE seconds (default 180) after up ended: each worker asks
# slurmctld whether it still knows it 2 minutes after its slurmd started (then ever more
# rarely), and that first wave is not the idle cluster.
# HYBRIDGRID_BIN=PATH measures that binary instead of a fresh release build.
# BENCH_UP_LOG=FILE keeps up's output, each line with the seconds since up started.
set -euo pipefail
cd "$(dirname "$0")/.."
SITES=${1:-20}
WORKERS=${2:-10}
DATASET_SITES=${3:-5}
IDLE=${4:-60}
if [ -z "${HYBRIDGRID_BIN:-}" ]; then
  cargo build --release --locked -p hybridgrid >/dev/null 2>&1 ||
    cargo build --release --locked -p hybridgrid
  HYBRIDGRID_BIN=target/release/hybridgrid
fi
W=$(mktemp -d /tmp/hg-bench-scale.XXXXXX)
NAME="bs$(( $$ % 100000 ))"
cp "$HYBRIDGRID_BIN" "$W/hybridgrid"
export HYBRIDGRID_STATE_DIR="$W/state"
HG() { "$W/hybridgrid" "$1" -f "$W/cluster.yaml" "${@:2}"; }
cleanup() {
  [ -z "${BENCH_UP_LOG:-}" ] || cp "$W/up.log" "$BENCH_UP_LOG" 2>/dev/null || true
  HG down -q >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
trap "exit 130" INT TERM
{
  printf 'version: 1\nname: %s\nprovider: local\ntunnel: { cidr: 10.0.0.0/24 }\nsites:\n' "$NAME"
  for s in $(seq 0 $((SITES - 1))); do
    printf '  - name: s%d\n    subnet: 10.%d.0.0/24\n' "$s" $((100 + s))
    [ "$s" -ne 0 ] || printf '    master: true\n'
    printf '    workers:\n      - { count: %d, cpus: 1, memory: 256 }\n' "$WORKERS"
  done
  [ "$DATASET_SITES" -eq 0 ] || printf 'datasets:\n'
  for s in $(seq 1 "$DATASET_SITES"); do
    printf '  - { name: data%d, site: s%d, bucket: data-s%d }\n' "$s" "$s" "$s"
  done
} >"$W/cluster.yaml"
seconds() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
# The machine's busy share over $1 seconds: all CPUs, from /proc/stat's first line.
busy_share() {
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
  sleep "$1"
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
  awk -v b=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) )) \
      -v t=$(( (u2+n2+s2+i2+w2+q2+sq2+st2) - (u1+n1+s1+i1+w1+q1+sq1+st1) )) \
      'BEGIN{printf "%.1f %%", 100*b/t}'
}
nodes=$((SITES * (WORKERS + 1)))
echo "cluster: $SITES sites x $WORKERS workers = $nodes nodes, datasets at $DATASET_SITES sites"
t=$(date +%s.%N)
HG up -v 2>&1 | scripts/stamp-lines >"$W/up.log" || { tail -20 "$W/up.log" >&2; echo "up: FAILED after $(seconds "$t") s" >&2; exit 1; }
echo "up: $(seconds "$t") s"
up_end=$(date +%s.%N)
t=$(date +%s.%N)
HG status >"$W/status.log" 2>&1 || true
echo "status: $(seconds "$t") s"
settle=$(awk -v a="$up_end" -v b="$(date +%s.%N)" -v s="${SETTLE:-180}" 'BEGIN{d=s-(b-a); if (d<0) d=0; printf "%d", d}')
sleep "$settle"
echo "idle cluster, whole machine busy over ${IDLE} s: $(busy_share "$IDLE")"
idle=$(HG exec s0-master -- sinfo -h -N -t idle -o %N 2>"$W/sinfo.err" | sort -u | grep -c worker || true)
echo "workers idle in Slurm: $idle of $((SITES * WORKERS))"
[ "$idle" -gt 0 ] || head -5 "$W/sinfo.err" >&2
t=$(date +%s.%N)
HG down -q >"$W/down.log" 2>&1 || { cat "$W/down.log" >&2; exit 1; }
echo "down: $(seconds "$t") s"
