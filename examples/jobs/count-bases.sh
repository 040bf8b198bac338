#!/bin/sh
# A located job: reads chr1.fa of the `genomes` dataset from its site's data store and writes a
# small result (the GC count). Submit it with:
#   hybridgrid submit -f examples/two-sites.yaml --dataset genomes -- examples/jobs/count-bases.sh
set -eu
url="${HYBRIDGRID_DATASET_GENOMES}chr1.fa"
echo "job ${SLURM_JOB_ID} on $(hostname), site ${HYBRIDGRID_SITE:-?}"
bytes=$(curl -sf "$url" | tee "$HYBRIDGRID_WORK/chr1.fa" | wc -c)
gc=$(tr -cd 'GC' < "$HYBRIDGRID_WORK/chr1.fa" | wc -c)
echo "read $bytes bytes from $url; GC bases: $gc"
