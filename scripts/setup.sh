#!/usr/bin/env bash
# Installs what hybridgrid needs on a Debian machine (idempotent): the Debian packages its local
# provider runs for real and the tools its tests use. Rust comes from the pinned toolchain.
set -euo pipefail
# Slurm, munge and OpenStack Swift (the sites' object stores, S3 by its s3api) run inside the
# cluster's namespaces; curl uploads results, awscli is how jobs and tests read datasets.
# cloud-init: the tests check the openstack provider's user data with `cloud-init schema`.
# chromium: the tests render `hybridgrid graph`'s SVG in a real browser (headless).
# strace: a lab test shows that an idle worker's agent starts no process.
# keepalived: a site's relay pair agrees which relay is active over VRRP.
PKGS=(iproute2 nftables wireguard-tools iputils-ping conntrack iperf3 wireguard-go procps util-linux bc strace keepalived
  slurm-wlm munge swift-proxy swift-account swift-container swift-object curl awscli cloud-init chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start their services on the host (swift, munged, slurmctld): the
  # cluster runs its own inside its namespaces. policy-rc.d 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; own_policy=1
  fi
  # --no-install-recommends: wireguard-tools recommends a kernel and systemd.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f "$policy"
fi
command -v cargo >/dev/null || { echo "setup: cargo (rustup) is required" >&2; exit 1; }
