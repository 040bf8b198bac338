#!/usr/bin/env bash
# Installs what hybridgrid needs on a Debian machine (idempotent): the Debian packages its local
# provider runs for real and the tools its tests use. Rust comes from the pinned toolchain.
set -euo pipefail
PKGS=(iproute2 nftables wireguard-tools iputils-ping conntrack iperf3 wireguard-go procps util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: wireguard-tools recommends a kernel and systemd.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (rustup) is required" >&2; exit 1; }
