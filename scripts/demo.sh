#!/usr/bin/env bash
# The main job: set up this machine, then bring up the seed's two-site cluster on it (emulated
# OpenStack sites in network namespaces, joined by real WireGuard) and show its status.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p hybridgrid
hg=$PWD/target/release/hybridgrid
file=${HYBRIDGRID_DEMO_FILE:-examples/two-sites.yaml}
echo "== hybridgrid validate -f $file"; $hg validate -f $file
echo; echo "== hybridgrid plan -f $file"; $hg plan -f $file
echo; echo "== hybridgrid up -f $file"; $hg up -f $file 2>/dev/null
echo; echo "== hybridgrid status -f $file"; $hg status -f $file
echo; echo "== hybridgrid exec -f $file bielefeld-master -- sinfo"
$hg exec -f $file bielefeld-master -- sinfo

# A located job. The dataset `genomes` lives in giessen's object store (S3: OpenStack Swift at
# giessen's .4); put 64 MiB of deterministic data there from this machine.
cluster=$(awk '/^name:/ {print $2; exit}' $file)
state=${HYBRIDGRID_STATE_DIR:-/var/lib/hybridgrid}/$cluster
size=$((64 << 20))
chr1=$(mktemp -d /tmp/hybridgrid-demo.XXXXXX)/chr1.fa
head -c $size < <(yes ACGTTGCAGGCATTCA) > $chr1
echo; echo "== hybridgrid data put -f $file genomes $chr1"; $hg data put -f $file genomes $chr1
rm -rf "$(dirname $chr1)"
echo; echo "== hybridgrid data ls -f $file genomes"; $hg data ls -f $file genomes
# Bytes that crossed between the sites: giessen's gateway's WireGuard transfer counters.
cross() { $hg exec -f $file giessen-gw -- wg show wg0 transfer | awk '{s += $2 + $3} END {print s + 0}'; }
job=examples/jobs/count-bases.sh
echo; echo "== hybridgrid submit -f $file --dataset genomes --wait -- $job"
before=$(cross)
out=$($hg submit -f $file --dataset genomes --wait -- $job)
after=$(cross)
echo "$out"
id=$(echo "$out" | awk 'NR == 1 {print $3}')
echo; echo "== its output, on the master: $state/results/$id.out"
cat $state/results/$id.out
echo; echo "== hybridgrid jobs -f $file"; $hg jobs -f $file
echo
echo "The job read $size bytes from giessen's store; bytes that crossed sites meanwhile (giessen-gw wg0): $((after - before))"
cat <<TXT

The cluster is running. Try:
  $hg exec -f $file giessen-gw -- wg show          # the tunnel, seen from the gateway
  $hg exec -f $file giessen-worker-1 -- ping -c1 bielefeld-worker-1
  $hg plan -f $file                                # nothing to do: the cluster is as planned
  $hg exec -f $file bielefeld-master -- srun -p giessen hostname
  $hg submit -f $file --dataset genomes -- $job   # runs where the data lives
  $hg jobs -f $file                                # site, state, node, output, store reads
  $hg data ls -f $file genomes                     # the dataset's objects in giessen's store
  $hg down -f $file                                # remove everything
TXT
