#!/usr/bin/env bash
# When slurm/sweep.sbatch must NOT requeue after the warning:
#   cap      RANKPRUNE_MAX_REQUEUES=1: the first warning requeues, the second ends the job FAILED
#            (exit 138) with "requeue cap reached";
#   refused  sbatch --no-requeue: `scontrol requeue` fails; the script says so and ends FAILED;
#   finished a sweep that exits 0 after the warning (it finished inside the margin) ends COMPLETED,
#            and one that exits 138 with every job done (warned during its last job) is not requeued.
# The last two use a stand-in binary (tests/slurm/fake_rankprune.sh) to hit those cases exactly.
. "$(dirname "$0")/common.sh"
t_init 7390
t_cluster 1
t_model
t_config sweep

# cap: two warnings, cap 1.
db=$W/run/cap.db
RANKPRUNE_MAX_REQUEUES=1 t_sbatch --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --config "$W/sweep.ini" --db "$db"
t_wait_done "$db" 3 120 "$T_JOB"
scancel -b -s USR1 "$T_JOB" || t_fail "scancel -s USR1 failed"
end=$((SECONDS + 90))
until [ "$(t_field "$T_JOB" Restarts)" = 1 ] && [ "$(t_state "$T_JOB")" = RUNNING ]; do
  [ $SECONDS -lt $end ] || t_fail "job $T_JOB not running again after the first warning"; sleep 0.2
done
t_wait_done "$db" 6 120 "$T_JOB"
scancel -b -s USR1 "$T_JOB" || t_fail "scancel -s USR1 failed"
t_expect "$T_JOB" FAILED 1 120
[ "$(t_field "$T_JOB" ExitCode)" = 138:0 ] || t_fail "cap: ExitCode=$(t_field "$T_JOB" ExitCode), expected 138:0"
log=$W/run/rankprune-sweep-$T_JOB.log
t_grep "$log" 'requeueing job' 1
t_grep "$log" 'error: requeue cap reached.*already requeued 1 time\(s\) \(RANKPRUNE_MAX_REQUEUES=1\); NOT requeued' 1
[ "$(t_sql "$db" "select group_concat(status, ',') from runs")" = interrupted,interrupted ] || t_fail "cap: runs $(t_sql "$db" "select group_concat(status) from runs")"
[ "$(t_sql "$db" "select count(*) from jobs where state = 'running'")" = 0 ] || t_fail "cap: jobs left running"

# refused: the requeue is not allowed for this job.
db=$W/run/refused.db
t_sbatch --no-requeue --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --config "$W/sweep.ini" --db "$db"
t_wait_done "$db" 3 120 "$T_JOB"
scancel -b -s USR1 "$T_JOB" || t_fail "scancel -s USR1 failed"
t_expect "$T_JOB" FAILED 0 120
t_grep "$W/run/rankprune-sweep-$T_JOB.log" "error: scontrol requeue $T_JOB failed" 1

# finished: the stand-in sweep waits for USR1, then exits FAKE_RC; FAKE_LEFT jobs are not done.
fake() {  # RC LEFT STATE RESTARTS
  FAKE_RC=$1 FAKE_LEFT=$2 FAKE_DELAY=${FAKE_DELAY:-0} RANKPRUNE_BIN=$T_REPO/tests/slurm/fake_rankprune.sh \
    t_sbatch --cpus-per-task=1 "$T_SLURM/sweep.sbatch" --db "$W/run/fake.db"
  t_wait_log "$W/run/rankprune-sweep-$T_JOB.log" '^fake sweep: waiting' 60
  scancel -b -s USR1 "$T_JOB" || t_fail "scancel -s USR1 failed"
  t_expect "$T_JOB" "$3" "$4" 60
}
fake 0 0 COMPLETED 0
t_grep "$W/run/rankprune-sweep-$T_JOB.log" 'sweep finished \(exit 0\) inside the margin; not requeued' 1
fake 138 0 COMPLETED 0
t_grep "$W/run/rankprune-sweep-$T_JOB.log" 'after its last job: every job .* is done; not requeued' 1
# ... and the same stand-in with a job left does requeue (so the two cases above are told apart),
# only once the sweep has exited, 3 s after the warning (a trapped signal interrupts `wait`).
FAKE_DELAY=3 fake 138 1 COMPLETED 1
log=$W/run/rankprune-sweep-$T_JOB.log
t_grep "$log" 'requeueing job' 1
[ "$(grep -n -m1 -E '^fake sweep: exiting|requeueing job' "$log" | cut -d: -f2-)" = "fake sweep: exiting 138" ] ||
  t_fail "the job requeued before the sweep had exited: $(grep -E 'fake sweep|requeueing' "$log")"
