#!/usr/bin/env bash
# slurm/submit.sh array: a job array of 3 over the ratios (per-element DBs) plus the merge job
# (--dependency=afterok). One element gets the warning (scancel -b -s USR1) and requeues once,
# alone. The merged DB is bitwise the one-process sweep's.
. "$(dirname "$0")/common.sh"
t_init 7330
t_cluster 2
t_model
t_config sweep
t_reference "$W/sweep.ini"

cd "$W/run" || t_fail "no $W/run"
out=$(bash "$T_SLURM/submit.sh" array --cpus-per-task=1 -- --config "$W/sweep.ini" --db results.db) ||
  t_fail "submit.sh array failed: $out"
t_log "$out"
array=$(sed -n 's/^submitted array job \([0-9]*\) .* merge job \([0-9]*\).*/\1/p' <<<"$out")
merge=$(sed -n 's/^submitted array job \([0-9]*\) .* merge job \([0-9]*\).*/\2/p' <<<"$out")
{ [ -n "$array" ] && [ -n "$merge" ]; } || t_fail "no job ids in: $out"
[[ $(t_field "$merge" Dependency) == afterok:"${array}"_\** ]] || t_fail "merge job $merge: Dependency=$(t_field "$merge" Dependency)"

# The warning to element 2 once its DB has 2 of its 6 jobs done; it must requeue exactly once.
t_wait_done results.ratio-0.75.db 2 120 "${array}_2"
scancel -b -s USR1 "${array}_2" || t_fail "scancel -s USR1 ${array}_2 failed"
t_expect "${array}_2" COMPLETED 1 180
t_expect "${array}_0" COMPLETED 0 180
t_expect "${array}_1" COMPLETED 0 180
t_expect "$merge" COMPLETED 0 120
t_grep "rankprune-array-${array}_2.log" 'requeueing job '"${array}"'_2 ' 1
t_grep "rankprune-array-${array}_0.log" 'requeueing' 0
t_grep "rankprune-merge-$merge.log" 'merged 3 database\(s\) into results.db'
for r in 0.25 0.5 0.75; do
  [ "$(t_sql "results.ratio-$r.db" "select count(*) from jobs where state = 'done'")" = 6 ] || t_fail "results.ratio-$r.db: not 6 jobs done"
done
[ -s results.html ] || t_fail "no report results.html"
t_same_results results.db
