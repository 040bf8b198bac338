# Sourced by scripts/bench-failover.sh and scripts/bench-failover-bed.sh: the ping gaps they
# measure and their percentiles.
gap() { # FILE SECONDS: the longest time without a reply of a `ping -D` run of SECONDS, the
  # time after the last reply included (an outage that never ended)
  grep -o '^\[[0-9.]*\]' "$1" | tr -d '[]' |
    awk -v d="$2" 'NR==1 {f=$1} NR>1 && $1-p>g {g=$1-p} {p=$1} END {if (f+d-0.2-p>g) g=f+d-0.2-p; printf "%.2f\n", g}'
}
stats() { # p50 p95 max of the numbers on stdin
  sort -g | awk '{v[NR]=$1} END {i50=int((NR+1)/2); i95=int(NR*0.95+0.999); if(i95<1)i95=1; printf "p50 %.2f s, p95 %.2f s, max %.2f s (%d runs)\n", v[i50], v[i95], v[NR], NR}'
}
