#!/usr/bin/env bash
# The time-limit warning (scancel -b -s USR1, what --signal=B:USR1@N sends) to slurm/sweep.sbatch:
# the sweep stops after its running job, the job requeues exactly once (Restarts=1), the requeued
# run resumes, and the results are bitwise the one-process run's. The two runs never overlap.
. "$(dirname "$0")/common.sh"
t_init 7350
t_cluster 1
t_model
t_config sweep
t_reference "$W/sweep.ini"

db=$W/run/results.db
t_sbatch --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --config "$W/sweep.ini" --db "$db"
t_wait_done "$db" 3 120 "$T_JOB"
scancel -b -s USR1 "$T_JOB" || t_fail "scancel -b -s USR1 $T_JOB failed"
t_expect "$T_JOB" COMPLETED 1 180
log=$W/run/rankprune-sweep-$T_JOB.log
t_grep "$log" 'warning signal USR1' 1
t_grep "$log" 'sweep stopped at the warning \(exit 138\); requeueing job' 1
t_grep "$log" 'restart 1 of at most 10'
# The script requeued only after the sweep had exited (its last line comes first).
stopped=$(grep -n -m1 '^sweep: stopped by signal 10' "$log" | cut -d: -f1)
requeued=$(grep -n -m1 'requeueing job' "$log" | cut -d: -f1)
if [ -z "$stopped" ] || [ "$stopped" -gt "${requeued:-0}" ]; then
  t_fail "requeued (line ${requeued:-?}) before the sweep stopped (line ${stopped:-?})"
fi
t_grep "$log" 'sweep finished \(exit 0\)' 1
# Two runs: the warned one 'interrupted', the requeued one 'ok', the second started after the first ended.
runs=$(t_sql "$db" "select group_concat(status, ',') from (select status from runs order by id)")
[ "$runs" = interrupted,ok ] || t_fail "runs table: $runs, expected interrupted,ok"
overlap=$(t_sql "$db" "select count(*) from runs a join runs b on a.id < b.id where b.started < a.finished")
[ "$overlap" = 0 ] || t_fail "the requeued run started before the first one finished"
n=$(grep -c "JobId=$T_JOB " "$W/cluster/log/jobcomp.txt")
[ "$n" = 2 ] || t_fail "jobcomp.txt has $n record(s) of job $T_JOB, expected 2 (requeued, completed)"
t_same_results "$db"
