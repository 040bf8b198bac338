#!/usr/bin/env bash
# The main job: set up this machine, then show hybridgrid on the seed's two-site cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p hybridgrid
hg=target/release/hybridgrid
file=examples/two-sites.yaml
echo "== hybridgrid validate -f $file"; $hg validate -f $file
echo; echo "== hybridgrid plan -f $file"; $hg plan -f $file
out=$(mktemp -d /tmp/hybridgrid-render.XXXXXX)
echo; echo "== hybridgrid render -f $file --out $out"; $hg render -f $file --out "$out"
echo; echo "== $out/nodes/giessen-gw/etc/wireguard/wg0.conf"; cat "$out/nodes/giessen-gw/etc/wireguard/wg0.conf"
rm -rf "$out"
