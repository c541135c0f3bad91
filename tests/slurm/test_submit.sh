#!/usr/bin/env bash
# slurm/submit.sh and the scripts' own checks, CPU-only and GPU:
#   - on a CPU-only cluster a GPU request is refused by submit.sh with a message saying why
#     (plain sbatch refuses it too, tersely), and nothing is queued;
#   - --margin S reaches the sweep (RANKPRUNE_STOP_MARGIN), which warns about longer jobs;
#   - array.sbatch without --array, or with the wrong size, and merge.sbatch with a missing
#     element DB, fail with a message;
#   - on a cluster with (fake) GPUs the GPU lines work: sweep.sbatch --gpus-per-task=1 and
#     multinode.sbatch with one rank per GPU on 2 nodes, and the log shows the GPU.
. "$(dirname "$0")/common.sh"
t_init 7430
t_cluster 1
t_model
# 2 jobs of ~2 s (l1 needs no calibration).
t_config small methods=l1 ratios=0.5 tasks=wikitext limit=2 eval-seq-len=512
t_config gpu methods=l1 ratios=0.5 tasks=piqa   # 2 jobs of ~0 s
cd "$W/run" || t_fail "no $W/run"
args=(-- --config "$W/small.ini" --db small.db)

if out=$(bash "$T_SLURM/submit.sh" sweep --gpus-per-task=1 "${args[@]}" 2>&1); then t_fail "submit.sh took a GPU job on a CPU-only cluster: $out"; fi
grep -q "asks for GPUs, but this cluster has no gres/gpu" <<<"$out" || t_fail "submit.sh said: $out"
if sbatch --gpus-per-task=1 "$T_SLURM/sweep.sbatch" >/dev/null 2>&1; then t_fail "sbatch took --gpus-per-task=1 on a CPU-only cluster"; fi
[ -z "$(squeue -h)" ] || t_fail "jobs queued after refused submissions"

out=$(bash "$T_SLURM/submit.sh" sweep --margin 1 --cpus-per-task=1 "${args[@]}") || t_fail "submit.sh sweep failed: $out"
job=$(sed -n 's/^submitted sweep job \([0-9]*\)$/\1/p' <<<"$out")
[ -n "$job" ] || t_fail "no job id in: $out"
t_expect "$job" COMPLETED 0 120
t_grep "rankprune-sweep-$job.log" 'stop margin 1 s'
t_grep "rankprune-sweep-$job.log" 'longer than the 1 s between the warning signal and the time limit'

t_sbatch --cpus-per-task=1 "$T_SLURM/array.sbatch" --config "$W/small.ini" --ratios 0.25,0.5
t_expect "$T_JOB" FAILED 0 60
t_grep "$(ls rankprune-array-"$T_JOB"*.log)" 'error: not an array job: submit with --array=0-1'
t_sbatch --array=0-2 --cpus-per-task=1 "$T_SLURM/array.sbatch" --config "$W/small.ini" --ratios 0.25,0.5
t_expect "${T_JOB}_0" FAILED 0 60
t_grep "rankprune-array-${T_JOB}_0.log" 'error: array of 3 elements .* for 2 ratio\(s\)'
t_sbatch "$T_SLURM/merge.sbatch" --db merged.db --ratios 0.25,0.5
t_expect "$T_JOB" FAILED 0 60
t_grep "rankprune-merge-$T_JOB.log" 'error: missing merged.ratio-0.25.db'

t_cluster_stop
t_cluster 2 1
out=$(bash "$T_SLURM/submit.sh" sweep --gpus-per-task=1 --cpus-per-task=1 -- --config "$W/gpu.ini" --db gpu.db) || t_fail "GPU sweep refused: $out"
job=$(sed -n 's/^submitted sweep job \([0-9]*\)$/\1/p' <<<"$out")
t_expect "$job" COMPLETED 0 120
t_grep "rankprune-sweep-$job.log" 'GPUs 0'
out=$(bash "$T_SLURM/submit.sh" multinode --nodes=2 --ntasks-per-node=1 --gpus-per-task=1 --cpus-per-task=1 \
  -- --config "$W/gpu.ini" --db gpu2.db) || t_fail "GPU multinode refused: $out"
job=$(sed -n 's/^submitted multinode job \([0-9]*\)$/\1/p' <<<"$out")
t_expect "$job" COMPLETED 0 120
t_grep "rankprune-multinode-$job.log" 'on 2 rank\(s\)'
[ "$(t_metrics gpu.db | wc -l)" = 4 ] || t_fail "gpu.db: not 4 metric rows"
[ "$(t_metrics gpu.db)" = "$(t_metrics gpu2.db)" ] || t_fail "gpu.db (1 rank) and gpu2.db (2 ranks) differ"
t_log "GPU layouts: 1 and 2 ranks, equal results"
