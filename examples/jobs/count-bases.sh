#!/bin/sh
# A located job: reads chr1.fa of the `genomes` dataset from its site's object store (S3, with the
# site's keys the node loads for the job) and writes a small result (the GC count). Submit it with:
#   hybridgrid submit -f examples/two-sites.yaml --dataset genomes -- examples/jobs/count-bases.sh
set -eu
url="${HYBRIDGRID_DATASET_GENOMES}chr1.fa"
echo "job ${SLURM_JOB_ID} on $(hostname), site ${HYBRIDGRID_SITE:-?}"
# awscli before 2.13 ignores AWS_ENDPOINT_URL: name it (newer clients, boto3 1.28+, rclone read it).
aws --endpoint-url "$AWS_ENDPOINT_URL" s3 cp --only-show-errors "$url" "$HYBRIDGRID_WORK/chr1.fa"
bytes=$(wc -c < "$HYBRIDGRID_WORK/chr1.fa")
gc=$(tr -cd 'GC' < "$HYBRIDGRID_WORK/chr1.fa" | wc -c)
echo "read $bytes bytes from $url; GC bases: $gc"
