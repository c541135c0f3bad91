#!/usr/bin/env bash
# The slow Slurm checks, with REAL time limits (slurmctld checks limits every 30 s, so each takes
# minutes; not in ctest). Same harness as tests/slurm/ (its own throwaway cluster, purged at the
# end). Output: docs/slurm_checks.txt.
#
#   bash scripts/slurm_checks.sh [RANKPRUNE_BIN] 2>&1 | tee docs/slurm_checks.txt     (~10 min)
#
# 1. warning   --time=3 with submit.sh --margin 60: Slurm's own USR1 comes 60-90 s before the limit,
#              the sweep stops after its job, the job requeues once (Restarts=1) and completes;
#              results bitwise the one-process run's.
# 2. outlasted --time=1, margin 20 s, but every job takes ~75 s: the warned sweep is still in its
#              job at the limit; the job ends TIMEOUT, never requeued (one writer), with a message
#              naming the margin; no process of it survives; a re-submit with a margin above the
#              job length completes, one metric row per (variant, task, metric).
# shellcheck source=../tests/slurm/common.sh
. "$(dirname "$0")/../tests/slurm/common.sh"

echo "rankprune Slurm checks (scripts/slurm_checks.sh), $(date -u +%FT%TZ)"
echo "machine: $(uname -srm), $(nproc) CPU(s), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
  "$(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
echo "checkout: $(git -C "$T_REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$T_REPO" diff --quiet HEAD -- slurm 2>/dev/null || echo " (slurm/ modified)")"
t_init 7450
t_cluster 1
echo "slurm: $(sinfo -V), KillWait ${LOCAL_SLURM_KILLWAIT:-10} s (local-slurm.sh)"
t_model
cd "$W/run" || t_fail "no $W/run"

# 1. A real warning: 37 variants x 1 task of ~3.5 s (~130 s), a 3-minute limit.
t_log "1. warning from a real time limit (--time=3, margin 60 s)"
t_config warn methods=drrqr,l1,qrcp,wanda ratios=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 tasks=wikitext \
  limit=3 eval-seq-len=512
OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 t_reference "$W/warn.ini"
out=$(bash "$T_SLURM/submit.sh" sweep --margin 60 --time=3 --cpus-per-task=2 -- --config "$W/warn.ini" --db warn.db) ||
  t_fail "submit.sh failed: $out"
job=$(sed -n 's/^submitted sweep job \([0-9]*\)$/\1/p' <<<"$out")
t_expect "$job" COMPLETED 1 600
log=rankprune-sweep-$job.log
t_grep "$log" 'warning signal USR1, [0-9]+ s before the time limit' 1
t_grep "$log" 'requeueing job' 1
grep -E 'rankprune-slurm|^sweep: (stopped|[0-9]+ (of|job))' "$log" | sed 's/^/   | /'
t_same_results warn.db

# 2. A job longer than the margin: 2 variants x 1 task of ~75 s each, a 1-minute limit.
t_log "2. the running job outlasts the margin (--time=1, margin 20 s, jobs of ~75 s)"
t_config long methods=l1 ratios=0.5 tasks=wikitext limit=40 eval-seq-len=512
out=$(bash "$T_SLURM/submit.sh" sweep --margin 20 --time=1 --cpus-per-task=2 -- --config "$W/long.ini" --db long.db) ||
  t_fail "submit.sh failed: $out"
job=$(sed -n 's/^submitted sweep job \([0-9]*\)$/\1/p' <<<"$out")
t_expect "$job" TIMEOUT 0 300
log=rankprune-sweep-$job.log
t_grep "$log" 'SIGTERM from the time limit: the running job outlasted the 20 s margin'
t_grep "$log" 'requeueing' 0
n=$(grep -c "JobId=$job " "$W/cluster/log/jobcomp.txt")
[ "$n" = 1 ] || t_fail "jobcomp.txt: $n records of job $job, expected 1 (never requeued)"
t_task_pid "$job" 0 >/dev/null && t_fail "a sweep process of job $job outlived it"
grep -E 'rankprune-slurm|^sweep: warning|DUE TO TIME LIMIT' "$log" | sed 's/^/   | /'
t_log "   runs after the TIMEOUT: $(t_sql long.db "select group_concat(status, ',') from runs"), jobs done: $(t_sql long.db "select count(*) from jobs where state = 'done'")"
out=$(bash "$T_SLURM/submit.sh" sweep --margin 120 --time=10 --cpus-per-task=2 -- --config "$W/long.ini" --db long.db) ||
  t_fail "submit.sh failed: $out"
job=$(sed -n 's/^submitted sweep job \([0-9]*\)$/\1/p' <<<"$out")
t_expect "$job" COMPLETED 0 600
dups=$(t_sql long.db "select count(*) from (select j.variant_id, j.task, m.name from metrics m join jobs j on j.id = m.job_id group by 1, 2, 3 having count(*) > 1)")
[ "$dups" = 0 ] || t_fail "long.db: duplicated metric rows"
[ "$(t_sql long.db "select count(*) from jobs where state = 'done'")" = 2 ] || t_fail "long.db: not 2 jobs done"
t_log "   re-submit: runs $(t_sql long.db "select group_concat(status, ',') from runs"), 2 of 2 jobs done, $(t_sql long.db "select count(*) from metrics") metric rows, no duplicates"
t_log "all checks passed in $((SECONDS - T_T0)) s"
