#!/usr/bin/env bash
# Data locality benchmark (docs/benchmarks.md): N jobs, each reading a 64 MiB dataset that lives
# at giessen and writing a small result, on the two-site local cluster. Cross-site bytes are read
# from the giessen gateway's WireGuard transfer counters (everything between the sites passes
# there): once with `submit` placement (--dataset genomes → partition giessen), once with the
# same jobs sent to the `all` partition. Usage: scripts/bench-locality.sh [N] (default 8). Root.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8}
SIZE_MIB=${SIZE_MIB:-64}
cargo build --release --locked -q -p hybridgrid
hg=$PWD/target/release/hybridgrid
work=$(mktemp -d /tmp/hg-bench-locality.XXXXXX)
export HYBRIDGRID_STATE_DIR=$work/state
name=bloc$$
file=$work/cluster.yaml
sed "s/^name: .*/name: $name/" examples/two-sites.yaml > "$file"
cleanup() { "$hg" down -f "$file" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"$hg" up -f "$file" >/dev/null 2>&1
head -c $((SIZE_MIB << 20)) < <(yes ACGTTGCAGGCATTCA) > "$work/chr1.fa"
"$hg" data put -f "$file" genomes "$work/chr1.fa" >/dev/null
# The naive baseline runs at any site, where giessen's keys are not: both runs read the same
# object by plain HTTP through a presigned URL (signed here by the operator with giessen's keys,
# valid one hour, for this one object).
secret=$(head -1 "$HYBRIDGRID_STATE_DIR/$name/sites/giessen/store/keys")
url=$(AWS_ACCESS_KEY_ID=hybridgrid:data AWS_SECRET_ACCESS_KEY=$secret AWS_DEFAULT_REGION=giessen \
  aws --endpoint-url http://10.20.0.4:8080 s3 presign s3://genomes/chr1.fa --expires-in 3600)
cat > "$work/job.sh" <<JOB
#!/bin/sh
# Reads the dataset at whatever node it runs on, writes a one-line result.
n=\$(curl -sf '$url' | wc -c)
echo "\$(hostname) read \$n bytes"
JOB
# Every worker registered before the clock starts.
for _ in $(seq 100); do
  [ "$("$hg" exec -f "$file" bielefeld-master -- sinfo -h -t idle -N -o %N | sort -u | wc -l)" = 2 ] && break
  sleep 0.2
done

cross() { "$hg" exec -f "$file" giessen-gw -- wg show wg0 transfer | awk '{s += $2 + $3} END {print s + 0}'; }
done_jobs() { "$hg" jobs -f "$file" --json | grep -c '"state": "COMPLETED"' || true; }

run() { # $1 = label, rest = extra submit arguments
  local label=$1; shift
  local before after t0 t1 want
  want=$(( $(done_jobs) + N ))
  before=$(cross); t0=$(date +%s.%N)
  for i in $(seq "$N"); do
    "$hg" submit -f "$file" --dataset genomes "$@" --parsable --name "$label-$i" -- "$work/job.sh" >/dev/null
  done
  until [ "$(done_jobs)" -ge "$want" ]; do sleep 0.2; done
  t1=$(date +%s.%N); after=$(cross)
  local at_g at_b
  at_g=$("$hg" jobs -f "$file" --json | awk -v l="\"$label-" '$0 ~ "\"name\": " l {m=1} m && /"ran_at"/ {if ($0 ~ /giessen/) print; m=0}' | wc -l)
  at_b=$((N - at_g))
  printf '%-22s %4s %10s %10s %16s %8.1f\n' "$label" "$N" "$at_g" "$at_b" "$((after - before))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
  echo "$((after - before))" > "$work/$label.bytes"
}

echo "$N jobs, each reading ${SIZE_MIB} MiB of dataset genomes (at giessen) and writing one line"
printf '%-22s %4s %10s %10s %16s %8s\n' run jobs "at giessen" "at bielef." "cross-site bytes" seconds
run placed
run naive-all --partition all
placed=$(cat "$work/placed.bytes"); naive=$(cat "$work/naive-all.bytes")
awk -v p="$placed" -v n="$naive" 'BEGIN {printf "placed / naive = %.3f %%\n", 100 * p / n}'
