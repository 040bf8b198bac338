#!/bin/bash
# `ebtables` for Neutron's linuxbridge agent (up.sh puts it first in the agents' PATH).
# The agent deletes a port's MAC rule by what `ebtables -L` printed, and ebtables-nft (1.8.9)
# prints MAC octets without their leading zero (fa:16:3e:57:81:8): that delete fails with exit 4,
# which the agent retries with growing waits and no limit, and stops wiring new ports (a server
# then fails: "Failed to allocate the network(s)"). Pad the octets of --among-src lists back.
# And ebtables-nft cannot delete an --among-src rule by its match at all (RULE_DELETE: Invalid
# argument, exit 4, even for the rule exactly as it lists it: seen when a port's allowed-address
# pairs change): such a delete is done by the rule's number in the chain instead.
# MAC octets without their leading zero (fa:16:3e:01:c6:bd -> fa:16:3e:1:c6:bd).
unpad() { sed -E ':a; s/(^|[ :,])0([0-9a-fA-F])([:, ]|$)/\1\2\3/; ta'; }
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
/usr/sbin/ebtables "${args[@]}"
rc=$?
# -t TABLE [--concurrent] -D CHAIN RULE...: retry an --among-src delete by number.
if [ "$rc" = 4 ]; then
  table=filter; chain=; rule=(); i=0; n=${#args[@]}; del=0
  while [ "$i" -lt "$n" ]; do
    case "${args[$i]}" in
      -t) table=${args[$((i + 1))]}; i=$((i + 2)); continue ;;
      --concurrent) i=$((i + 1)); continue ;;
      -D) del=1; chain=${args[$((i + 1))]}; rule=("${args[@]:$((i + 2))}"); break ;;
    esac
    i=$((i + 1))
  done
  if [ "$del" = 1 ] && [[ " ${rule[*]} " == *" --among-src "* ]]; then
    # Compared without the octets' leading zeros, as ebtables-nft lists them: the padded rule
    # never matched the listing, so a port whose MAC has a 0x octet stalled the agent (retried
    # forever, no port wired after it: "Failed to allocate the network(s)").
    want=$(printf '%s\n' "${rule[*]}" | unpad)
    num=$(/usr/sbin/ebtables -t "$table" -L "$chain" --Ln 2>/dev/null |
      awk '/^[0-9]+\.? / { n = $1; sub(/\./, "", n); sub(/^[0-9]+\.? /, ""); sub(/ +$/, ""); print n " " $0 }' |
      while read -r n listed; do
        if [ "$(printf '%s\n' "$listed" | unpad)" = "$want" ]; then echo "$n"; break; fi
      done)
    if [ -n "$num" ]; then
      /usr/sbin/ebtables -t "$table" --concurrent -D "$chain" "$num"
      exit $?
    fi
  fi
fi
exit "$rc"
