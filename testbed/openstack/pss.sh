#!/bin/bash
# Print the proportional set size (PSS) of every process up.sh DIR started (recorded PIDs, their
# process groups and descendants), per process and in total.
# usage: pss.sh DIR
B=$(cd "${1:?usage: pss.sh DIR}" && pwd)
desc() { local c; for c in $(pgrep -P "$1"); do desc "$c"; done; echo "$1"; }
for f in "$B"/run/*.pid; do [ -f "$f" ] || continue; p=$(cat "$f"); [ -d /proc/$p ] || continue; desc "$p"; pgrep -g "$p"; done |
  sort -un | while read -r p; do
    k=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
    [ -n "$k" ] && echo "$k $p $(cut -d' ' -f1 <"/proc/$p/comm")"
  done | sort -rn | awk '{t+=$1; printf "%6d MiB  %-7s %s\n", $1/1024, $2, $3} END {printf "total %d MiB PSS in %d processes\n", t/1024, NR}'
