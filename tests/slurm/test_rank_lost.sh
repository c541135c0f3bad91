#!/usr/bin/env bash
# A rank of slurm/multinode.sbatch (2 nodes x 1 rank) lost mid-run, two ways:
#   killed   SIGKILL to rank 1: srun (--kill-on-bad-exit) ends the step; the job FAILS at once,
#            srun's line names the node and task, the script says a rank died;
#   silent   SIGSTOP to rank 1 (a hung node): rank 0 gives up after --comm-timeout and exits 4
#            naming rank 1; the job FAILS, the script says a rank was lost.
# Never requeued (Restarts=0); each re-submit resumes, and the last one completes with results
# bitwise the one-process run's.
. "$(dirname "$0")/common.sh"
t_init 7410
# rank 0 does not leave a dead peer's collective on SIGTERM, so srun waits KillWait before SIGKILL
export LOCAL_SLURM_KILLWAIT=3
t_cluster 2
t_model
t_config sweep
t_reference "$W/sweep.ini"
db=$W/run/results.db
submit() { t_sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 "$T_SLURM/multinode.sbatch" --config "$W/sweep.ini" --db "$db" "$@"; }

lose_rank1() {  # SIGNAL N: once the job's ranks have done N more jobs
  local pid="" base end=$((SECONDS + 120))
  until pid=$(t_task_pid "$T_JOB" 1); do
    [ $SECONDS -lt $end ] || t_fail "no rank 1 process of job $T_JOB after 120 s"; sleep 0.2
  done
  base=$(t_sql "$db" "select count(*) from jobs where state = 'done'")
  t_wait_done "$db" $((${base:-0} + $2)) 120 "$T_JOB"
  kill -s "$1" "$pid" || t_fail "kill -$1 $pid failed"
  t_log "SIG$1 to rank 1 (PID $pid) of job $T_JOB with $(t_sql "$db" "select count(*) from jobs where state = 'done'") job(s) done"
}

submit
lose_rank1 KILL 3
t_expect "$T_JOB" FAILED 0 60
log=$W/run/rankprune-multinode-$T_JOB.log
t_grep "$log" '^srun: error: n2: task 1: Killed'
t_grep "$log" 'error: the srun step failed \(exit [0-9]+\): a rank died or was killed'
t_grep "$log" 'requeueing' 0

submit --comm-timeout 5
lose_rank1 STOP 2
t_expect "$T_JOB" FAILED 0 90
log=$W/run/rankprune-multinode-$T_JOB.log
t_grep "$log" 'rank 1 \(host [^)]*\) stopped answering'
t_grep "$log" 'error: a rank was lost \(exit 4\)'
[ "$(t_field "$T_JOB" ExitCode)" = 4:0 ] || t_fail "silent: ExitCode=$(t_field "$T_JOB" ExitCode), expected 4:0"

submit
t_expect "$T_JOB" COMPLETED 0 180
t_same_results "$db"
