#!/bin/bash
# Stop everything up.sh DIR started: each recorded PID, its process group and all its descendants.
# SIGTERM, wait up to 20 s, then SIGKILL. Idempotent: nothing recorded/running -> nothing to do.
# usage: down.sh DIR
set -uo pipefail
B=$(cd "${1:?usage: down.sh DIR (the folder given to up.sh)}" 2>/dev/null && pwd) || { echo "down.sh: no such folder $1 (nothing to stop)"; exit 0; }
desc() { local c; for c in $(pgrep -P "$1"); do desc "$c"; done; echo "$1"; }
ours() {   # guard against a stale PID file whose PID now belongs to something else
  local cwd; cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
  [[ "$cwd" == "$B"* ]] || [ "$(cat "/proc/$1/comm" 2>/dev/null)" = epmd ]
}
pids=""
for f in "$B"/run/*.pid; do
  [ -f "$f" ] || continue
  p=$(tr -dc 0-9 <"$f"); [ -n "$p" ] || continue
  # the recorded process, its descendants, and its process group (survivors of a dead leader too)
  for c in $( [ -d "/proc/$p" ] && desc "$p"; pgrep -g "$p" ); do
    if ours "$c"; then pids="$pids $c"; elif [ -d "/proc/$c" ]; then echo "down.sh: PID $c ($f) is not from $B, left alone" >&2; fi
  done
done
pids=$(echo $pids | tr ' ' '\n' | sort -un | tr '\n' ' ')
n=$(echo $pids | wc -w)
if [ "$n" -gt 0 ]; then
  kill -TERM $pids 2>/dev/null
  alive=""
  for _ in $(seq 1 100); do
    alive=""; for p in $pids; do [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break; sleep 0.2
  done
  if [ -n "$alive" ]; then echo "down.sh: SIGKILL to$alive"; kill -KILL $alive 2>/dev/null; sleep 0.5; fi
fi
rm -f "$B"/run/*.pid "$B"/clouds.yaml
echo "down.sh: stopped $n processes from $B"
