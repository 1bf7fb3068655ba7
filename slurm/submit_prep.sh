#!/bin/bash
# Submit a curation run: the job array (slurm/prep_array.sbatch) and the merge/stats job
# (slurm/prep_merge.sbatch) that starts only when every array task succeeded (afterok).
#
#   slurm/submit_prep.sh inputs.manifest=/data/raw.csv output.dir=/data/shards
#   LP_PREP_TASKS=64 LP_SBATCH_ARGS="--partition=cpu --account=me" slurm/submit_prep.sh ...
#   slurm/submit_prep.sh --rerun 3,17 inputs.manifest=/data/raw.csv output.dir=/data/shards
#
# --rerun K[,K...]: submit only array tasks K (of the same n: same LP_PREP_TASKS) and the merge again —
# the recovery of failed tasks; each resumes from its journal, and the merge gives the same shards as
# a run without failures.
# Arguments are Hydra overrides for lp-prep, given to the array tasks and to the merge job.
# Environment knobs (optional):
#   LP_PREP_TASKS    number of array tasks n (default: the --array line of prep_array.sbatch)
#   LP_SBATCH_ARGS   extra sbatch options for both jobs (partition, account, --cpus-per-task, --output=...)
# Before submitting, the CPUs per task are checked against the partition's largest node (sinfo): a request
# no node can satisfy would pend forever without an error.
# Prints "array=<job id> merge=<job id>".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RERUN=""
if [[ "${1:-}" == "--rerun" ]]; then RERUN=${2:?--rerun needs task indices, e.g. --rerun 1 or --rerun 3,17}; shift 2; fi
read -ra EXTRA <<< "${LP_SBATCH_ARGS:-}"

DEFAULT_ARRAY=$(awk -F'[=-]' '/^#SBATCH --array=/ {print $NF + 1; exit}' "$HERE/prep_array.sbatch")
export LP_PREP_TASKS=${LP_PREP_TASKS:-$DEFAULT_ARRAY}
if [[ -n "$RERUN" ]]; then
  for k in ${RERUN//,/ }; do
    if (( k < 0 || k >= LP_PREP_TASKS )); then
      echo "submit_prep.sh: error: task $k is not in 0..$((LP_PREP_TASKS - 1)) (LP_PREP_TASKS=$LP_PREP_TASKS)" >&2; exit 2
    fi
  done
  ARRAY_OPTS=(--array="$RERUN")
else
  ARRAY_OPTS=(--array="0-$((LP_PREP_TASKS - 1))")
fi

# Loud resource check: CPUs per task (last --cpus-per-task of LP_SBATCH_ARGS, else the script's) vs the partition.
CPUS=$(awk -F= '/^#SBATCH --cpus-per-task=/ {print $2 + 0; exit}' "$HERE/prep_array.sbatch")
PARTITION=()
for opt in "${EXTRA[@]}"; do
  case "$opt" in --cpus-per-task=*) CPUS=${opt#*=} ;; --partition=*|-p=*) PARTITION=(-p "${opt#*=}") ;; esac
done
if command -v sinfo >/dev/null 2>&1; then
  MAX_CPUS=$(sinfo -h "${PARTITION[@]}" -o %c 2>/dev/null | tr -d '+' | sort -n | tail -n 1) || true
  if [[ -n "$MAX_CPUS" ]] && (( CPUS > MAX_CPUS )); then
    echo "submit_prep.sh: error: $CPUS CPUs per task requested, the largest node of the partition has $MAX_CPUS:" \
         "the jobs would pend forever. Use LP_SBATCH_ARGS=\"--cpus-per-task=$MAX_CPUS ...\"" >&2
    exit 2
  fi
fi
mkdir -p runs/slurm  # the scripts' default log folder (#SBATCH --output=runs/slurm/...), relative to here

ARRAY_ID=$(sbatch --parsable "${EXTRA[@]}" "${ARRAY_OPTS[@]}" "$HERE/prep_array.sbatch" "$@")
ARRAY_ID=${ARRAY_ID%%;*}
MERGE_ID=$(sbatch --parsable "${EXTRA[@]}" --dependency="afterok:$ARRAY_ID" --kill-on-invalid-dep=yes \
           "$HERE/prep_merge.sbatch" "$@")
MERGE_ID=${MERGE_ID%%;*}
echo "array=$ARRAY_ID merge=$MERGE_ID"
