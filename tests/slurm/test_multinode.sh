#!/usr/bin/env bash
# slurm/multinode.sbatch on 2 nodes x 1 rank (srun --mpi=pmix, CPU-only layout): the results DB is
# bitwise the one-process run's, the log names both ranks' layout, and the report is written.
. "$(dirname "$0")/common.sh"
t_init 7310
t_cluster 2
t_model
t_config sweep
t_reference "$W/sweep.ini"

t_sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 "$T_SLURM/multinode.sbatch" --config "$W/sweep.ini" --db "$W/run/results.db"
t_expect "$T_JOB" COMPLETED 0 180
log=$W/run/rankprune-multinode-$T_JOB.log
t_grep "$log" 'on 2 rank\(s\)'
t_grep "$log" 'running: srun --mpi=pmix'
t_grep "$log" 'rankprune-slurm.*sweep finished \(exit 0\)'
[ -s "$W/run/results.html" ] || t_fail "no report results.html"
t_same_results "$W/run/results.db"
