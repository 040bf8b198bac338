#!/bin/bash
# `ebtables` for Neutron's linuxbridge agent (up.sh puts it first in the agents' PATH).
# The agent deletes a port's MAC rule by what `ebtables -L` printed, and ebtables-nft (1.8.9)
# prints MAC octets without their leading zero (fa:16:3e:57:81:8): that delete fails with exit 4,
# which the agent retries with growing waits and no limit, and stops wiring new ports (a server
# then fails: "Failed to allocate the network(s)"). Pad the octets of --among-src lists back.
args=()
pad=0
for a in "$@"; do
  if [ "$pad" = 1 ]; then
    macs=()
    IFS=, read -ra list <<<"$a"
    for m in "${list[@]}"; do
      IFS=: read -ra oct <<<"$m"
      p=()
      for o in "${oct[@]}"; do p+=("$(printf '%02x' "0x$o")"); done
      macs+=("$(IFS=:; echo "${p[*]}")")
    done
    a=$(IFS=,; echo "${macs[*]}")
    pad=0
  fi
  [ "$a" = --among-src ] && pad=1
  args+=("$a")
done
exec /usr/sbin/ebtables "${args[@]}"
