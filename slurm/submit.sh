#!/usr/bin/env bash
# Submits a rankprune sweep with one warning margin for Slurm and the sweep, and for an array also
# the merge job (--dependency=afterok). Run on the login node; prints the job id(s).
#
#   slurm/submit.sh sweep|multinode|array [--margin S] [--max-requeues N] [SBATCH_OPTION...] -- SWEEP_ARGS...
#
#   --margin S        warning S s before the time limit: sbatch --signal=B:USR1@S and
#                     RANKPRUNE_STOP_MARGIN=S (the longest single job must fit in S; slurm/README.md)
#   --max-requeues N  RANKPRUNE_MAX_REQUEUES=N (default 10)
#   SBATCH_OPTION     passed to sbatch (--time=12:00:00, --gpus-per-task=1, -p gpu, ...). For an array,
#                     --partition/--account/--qos/--chdir (and their short forms) go to the merge too.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

usage() { echo "usage: $0 sweep|multinode|array [--margin S] [--max-requeues N] [SBATCH_OPTION...] -- SWEEP_ARGS..." >&2; exit 2; }
kind=${1:-}; shift || usage
case $kind in sweep | multinode | array) ;; *) usage ;; esac

opts=() merge_opts=() gpu=""
while (($#)) && [ "$1" != -- ]; do
  o=("$1"); shift
  # An option's value may be the next word (-p debug); before "--" every other word starts with "-".
  if [[ ${o[0]} != *=* ]] && (($#)) && [[ $1 != -* ]]; then o+=("$1"); shift; fi
  case ${o[0]} in
    --margin) export RANKPRUNE_STOP_MARGIN=${o[1]:?--margin needs seconds}; opts+=("--signal=B:USR1@${o[1]}"); continue ;;
    --margin=*) export RANKPRUNE_STOP_MARGIN=${o[0]#*=}; opts+=("--signal=B:USR1@${o[0]#*=}"); continue ;;
    --max-requeues) export RANKPRUNE_MAX_REQUEUES=${o[1]:?--max-requeues needs a number}; continue ;;
    --max-requeues=*) export RANKPRUNE_MAX_REQUEUES=${o[0]#*=}; continue ;;
    --gpu* | --gres=*gpu* | --gres | -G*) gpu=${o[*]} ;;
    --partition* | -p* | --account* | -A* | --qos* | -q* | --chdir* | -D*) merge_opts+=("${o[@]}") ;;
  esac
  opts+=("${o[@]}")
done
[ "${1:-}" = -- ] || usage
shift

# A GPU request on a cluster without gres/gpu is refused by sbatch with a terse message: say why.
if [ -n "$gpu" ]; then
  gres=$(sinfo -h -o %G) || rp_fail 1 "sinfo failed (message above)"
  [[ $gres == *gpu* ]] || rp_fail 1 "'$gpu' asks for GPUs, but this cluster has no gres/gpu (sinfo: '${gres//$'\n'/ }'):" \
    "drop the GPU option for a CPU-only run"
fi

submit() {  # SBATCH_ARGS...: prints the job id
  local id
  id=$(sbatch --parsable "$@") || rp_fail 1 "sbatch $* failed (message above)"
  echo "${id%%;*}"
}

if [ "$kind" != array ]; then
  id=$(submit "${opts[@]}" "$here/$kind.sbatch" "$@") || exit 1
  echo "submitted $kind job $id"
  exit 0
fi
IFS=, read -ra ratios <<<"$(rp_arg ratios "" "$@")"
((${#ratios[@]})) || rp_fail 2 "an array sweep needs --ratios (on the command line or in --config)"
array=$(submit --array=0-$((${#ratios[@]} - 1)) "${opts[@]}" "$here/array.sbatch" "$@") || exit 1
merge=$(submit --dependency=afterok:"$array" --kill-on-invalid-dep=yes "${merge_opts[@]}" "$here/merge.sbatch" "$@") ||
  rp_fail 1 "the array job $array is submitted but its merge job is not; submit slurm/merge.sbatch by hand"
echo "submitted array job $array (${#ratios[@]} elements: ratios ${ratios[*]}) and merge job $merge (after all succeed)"
