#!/usr/bin/env bash
# The main job: set up this machine, then bring up the seed's two-site cluster on it (emulated
# OpenStack sites in network namespaces, joined by real WireGuard) and show its status.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p hybridgrid
hg=$PWD/target/release/hybridgrid
file=examples/two-sites.yaml
echo "== hybridgrid validate -f $file"; $hg validate -f $file
echo; echo "== hybridgrid plan -f $file"; $hg plan -f $file
echo; echo "== hybridgrid up -f $file"; $hg up -f $file 2>/dev/null
echo; echo "== hybridgrid status -f $file"; $hg status -f $file
cat <<TXT

The cluster is running. Try:
  $hg exec -f $file giessen-gw -- wg show          # the tunnel, seen from the gateway
  $hg exec -f $file giessen-worker-1 -- ping -c1 bielefeld-worker-1
  $hg plan -f $file                                # nothing to do: the cluster is as planned
  $hg down -f $file                                # remove everything
TXT
