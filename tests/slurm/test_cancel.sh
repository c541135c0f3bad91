#!/usr/bin/env bash
# scancel (SIGTERM to every process of the job) of slurm/sweep.sbatch, once during calibration and
# once during evaluation: the job ends CANCELLED with Restarts=0 (never requeued), the run is
# recorded 'interrupted', the calibration statistics are cached, no job is left 'running', and a
# re-submit completes with results bitwise the one-process run's (nothing lost or duplicated).
. "$(dirname "$0")/common.sh"
t_init 7370
t_cluster 1
t_model
t_config sweep sequences=512 seq-len=256   # ~2 s of calibration: long enough to cancel inside
t_reference "$W/sweep.ini"

cancelled_then_resumed() {  # WHEN DB: WHEN is calibration or evaluation
  local when=$1 db=$2 log runs left ndone
  t_sbatch --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --config "$W/sweep.ini" --db "$db"
  log=$W/run/rankprune-sweep-$T_JOB.log
  if [ "$when" = calibration ]; then t_wait_log "$log" '^sweep: calibrating' 120
  else t_wait_done "$db" 3 120 "$T_JOB"; fi
  scancel "$T_JOB" || t_fail "scancel $T_JOB failed"
  t_expect "$T_JOB" CANCELLED 0 60
  t_grep "$log" 'SIGTERM from scancel or preemption.*will NOT be requeued' 1
  t_grep "$log" 'sweep stopped by SIGTERM \(exit 143\).*not requeued'
  t_grep "$log" 'requeueing' 0
  runs=$(t_sql "$db" "select group_concat(status, ',') from runs")
  [ "$runs" = interrupted ] || t_fail "$when: runs table '$runs', expected interrupted"
  left=$(t_sql "$db" "select count(*) from jobs where state = 'running'")
  [ "$left" = 0 ] || t_fail "$when: $left job(s) left 'running'"
  ls "$db.cache"/*.safetensors >/dev/null 2>&1 || t_fail "$when: no statistics cached in $db.cache"
  ndone=$(t_sql "$db" "select count(*) from jobs where state = 'done'")
  # A stop during calibration takes effect right after it: no evaluation job is run.
  [ "$when" = evaluation ] || [ "$ndone" = 0 ] || t_fail "calibration: $ndone job(s) done after a stop during calibration"
  t_log "$when: cancelled with $ndone job(s) done"

  t_sbatch --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --config "$W/sweep.ini" --db "$db"
  t_expect "$T_JOB" COMPLETED 0 180
  # The statistics of the cancelled run are reused, not recomputed.
  t_grep "$W/run/rankprune-sweep-$T_JOB.log" '^sweep: statistics from cache'
  t_grep "$W/run/rankprune-sweep-$T_JOB.log" '^sweep: calibrating' 0
  t_same_results "$db"
}

cancelled_then_resumed calibration "$W/run/calibration.db"
[ "$(t_sql "$W/run/calibration.db" "select count(*) from runs where status = 'interrupted'")" = 1 ] || t_fail "calibration: not 1 interrupted run"
cancelled_then_resumed evaluation "$W/run/evaluation.db"
