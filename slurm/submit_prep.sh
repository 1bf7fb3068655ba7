#!/bin/bash
# Submit a curation run: the job array (slurm/prep_array.sbatch) and the merge/stats job
# (slurm/prep_merge.sbatch) that starts only when every array task succeeded (afterok).
#
#   slurm/submit_prep.sh inputs.manifest=/data/raw.csv output.dir=/data/shards
#   LP_PREP_TASKS=64 LP_SBATCH_ARGS="--partition=cpu --account=me" slurm/submit_prep.sh ...
#
# Arguments are Hydra overrides for lp-prep, given to the array tasks and to the merge job.
# Environment knobs (optional):
#   LP_PREP_TASKS    number of array tasks n (default: the --array line of prep_array.sbatch)
#   LP_SBATCH_ARGS   extra sbatch options for both jobs (partition, account, --output=..., ...)
# Prints "array=<job id> merge=<job id>".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -ra EXTRA <<< "${LP_SBATCH_ARGS:-}"
ARRAY_OPTS=()
if [[ -n "${LP_PREP_TASKS:-}" ]]; then ARRAY_OPTS=(--array="0-$((LP_PREP_TASKS - 1))"); fi

ARRAY_ID=$(sbatch --parsable "${EXTRA[@]}" "${ARRAY_OPTS[@]}" "$HERE/prep_array.sbatch" "$@")
ARRAY_ID=${ARRAY_ID%%;*}
MERGE_ID=$(sbatch --parsable "${EXTRA[@]}" --dependency="afterok:$ARRAY_ID" --kill-on-invalid-dep=yes \
           "$HERE/prep_merge.sbatch" "$@")
MERGE_ID=${MERGE_ID%%;*}
echo "array=$ARRAY_ID merge=$MERGE_ID"
