#!/usr/bin/env bash
# Object stores on the local provider (docs/benchmarks.md, issue 21). Root.
#   scripts/bench-data.sh put [SIZE_MIB] [RUNS]   `data put` of one file into giessen's store
#       against `aws s3 cp` of the same file to the same store in the same run (wall, MB/s, peak
#       RSS under GNU time), on the two-site cluster.
#   scripts/bench-data.sh memory [SITES]          memory of the stores: a cluster of SITES sites
#       (one worker each) with a dataset in a bucket at every site; RSS and PSS of each site's
#       Swift processes, and `up`'s time (BENCH_NO_STORES=1: the same cluster without datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-put}
cargo build --release --locked -q -p hybridgrid
hg=$PWD/target/release/hybridgrid
work=$(mktemp -d /tmp/hg-bench-data.XXXXXX)
export HYBRIDGRID_STATE_DIR=$work/state
name=bdat$$
file=$work/cluster.yaml
cleanup() { "$hg" down -f "$file" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# `time -f` fields: wall seconds, peak RSS in KiB.
timed() { /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null; cat "$work/time"; }

put() {
  local size_mib=${1:-1024} runs=${2:-3}
  sed "s/^name: .*/name: $name/" examples/two-sites.yaml > "$file"
  "$hg" up -f "$file" >/dev/null 2>&1
  head -c $((size_mib << 20)) /dev/urandom > "$work/blob"
  local secret ns
  secret=$(head -1 "$HYBRIDGRID_STATE_DIR/$name/sites/giessen/store/keys")
  ns=hg-$name-giessen-store
  echo "one ${size_mib} MiB file into giessen's store (Swift s3api at 10.20.0.4:8080), $runs runs each"
  printf '%-28s %8s %8s %12s\n' command seconds MB/s "peak RSS MB"
  for i in $(seq "$runs"); do
    read -r s kib < <(timed "$hg" data put -f "$file" genomes "$work/blob")
    printf '%-28s %8.2f %8.0f %12.1f\n' "hybridgrid data put" "$s" "$(echo "$size_mib * 1.048576 / $s" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
    read -r s kib < <(AWS_ACCESS_KEY_ID=hybridgrid:data AWS_SECRET_ACCESS_KEY=$secret \
      AWS_DEFAULT_REGION=giessen AWS_EC2_METADATA_DISABLED=true \
      timed ip netns exec "$ns" /usr/bin/aws --endpoint-url http://10.20.0.4:8080 \
      s3 cp --only-show-errors "$work/blob" "s3://genomes/aws-$i")
    printf '%-28s %8.2f %8.0f %12.1f\n' "aws s3 cp (Debian 2.9)" "$s" "$(echo "$size_mib * 1.048576 / $s" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
  done
}

memory() {
  local sites=${1:-20}
  {
    echo "version: 1"; echo "name: $name"; echo "provider: local"; echo "sites:"
    for i in $(seq "$sites"); do
      echo "  - name: s$i"; [ "$i" = 1 ] && echo "    master: true"
      echo "    subnet: 10.$((100 + i)).0.0/24"; echo "    workers: [{count: 1}]"
    done
    # BENCH_NO_STORES=1: the same cluster without datasets, for `up`'s time without stores.
    if [ -z "${BENCH_NO_STORES:-}" ]; then
      echo "datasets:"
      for i in $(seq "$sites"); do echo "  - {name: d$i, site: s$i, bucket: data$i}"; done
    fi
  } > "$file"
  local t0 t1
  t0=$(date +%s.%N); "$hg" up -f "$file" >/dev/null 2>&1; t1=$(date +%s.%N)
  echo "$sites sites, a store at each: up in $(echo "$t1 - $t0" | bc -l | cut -c1-5) s"
  local rss=0 pss=0 n=0
  for ns in $(ip netns list | awk '{print $1}' | grep "^hg-$name-.*-store$"); do
    for pid in $(ip netns pids "$ns"); do
      case $(cat /proc/$pid/comm) in swift-*) ;; *) continue ;; esac
      rss=$((rss + $(awk '/^Rss:/ {print $2}' /proc/$pid/smaps_rollup)))
      pss=$((pss + $(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)))
      n=$((n + 1))
    done
  done
  echo "$n Swift processes; per site: RSS $((rss / sites / 1024)) MB, PSS $((pss / sites / 1024)) MB; all stores: PSS $((pss / 1024)) MB"
}

case $mode in
  put) shift; put "$@" ;;
  memory) shift; memory "$@" ;;
  *) echo "usage: $0 put [SIZE_MIB] [RUNS] | memory [SITES]" >&2; exit 2 ;;
esac
