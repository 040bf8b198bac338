#!/usr/bin/env bash
# Benchmark of the command a user runs: `hybridgrid render` of SITES sites × WORKERS workers
# (default 100 × 100, 10,100 nodes), wall time and peak RSS of the whole process (GNU time), each
# of RUNS. Writes into a scratch folder under BENCH_DIR (default /dev/shm, a tmpfs: the disk's
# own cost for 10,603 files is not the command's) and removes it afterwards.
#   [BENCH_DIR=/tmp] scripts/bench-render.sh [SITES] [WORKERS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
sites=${1:-100} workers=${2:-100} runs=${3:-3}
cargo build --release --locked -p hybridgrid >/dev/null
tmp=$(mktemp -d "${BENCH_DIR:-/dev/shm}/hybridgrid-bench-render.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
{
  printf 'name: bench\nadmin_cidrs: [192.0.2.0/24]\ntunnel:\n  cidr: 172.16.0.0/23\nsites:\n'
  for ((i = 0; i < sites; i++)); do
    printf '  - name: s%d\n    subnet: 10.%d.%d.0/24\n' "$i" $((i / 256)) $((i % 256))
    [ "$i" -eq 0 ] && printf '    master: true\n'
    printf '    workers:\n      - count: %d\n' "$workers"
  done
} >"$tmp/cluster.yaml"
for ((r = 1; r <= runs; r++)); do
  rm -rf "$tmp/out"
  HYBRIDGRID_STATE_DIR="$tmp/state" /usr/bin/time -f '%e s wall (%U s user, %S s system), %M KB peak RSS' \
    target/release/hybridgrid render -f "$tmp/cluster.yaml" --out "$tmp/out" 2>&1 | tail -2
done
echo "files: $(find "$tmp/out" -type f | wc -l), bytes: $(find "$tmp/out" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')"
