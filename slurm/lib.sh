# shellcheck shell=bash
# Shared code of the rankprune Slurm scripts (sourced, not run). slurm/README.md explains the
# signals, the requeue rule and the exit codes; this file is the one place they are implemented.
#
# Settings (environment; sbatch exports the submitting shell's environment by default):
#   RANKPRUNE_BIN           the rankprune binary [rankprune on PATH, else <repo>/build/rankprune]
#   RANKPRUNE_STOP_MARGIN   seconds from the warning to the time limit, as in --signal=B:USR1@N [300]
#   RANKPRUNE_MAX_REQUEUES  requeues allowed per job (SLURM_RESTART_COUNT counts them)         [10]

RP_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# This job for scontrol: an array element by <array id>_<index>, since its bare SLURM_JOB_ID may be
# the array's id, which names every element (`scontrol requeue` would requeue them all).
RP_JOB=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}
RP_JOB=${RP_JOB:-${SLURM_JOB_ID:-}}

rp_log() { echo "rankprune-slurm[${RP_JOB:-local}]: $*" >&2; }
rp_fail() { local code=$1; shift; rp_log "error: $*"; exit "$code"; }   # CODE MESSAGE...

# The binary: $RANKPRUNE_BIN, else rankprune on PATH, else build/rankprune of this checkout.
rp_find_bin() {
  RP=${RANKPRUNE_BIN:-$(command -v rankprune || echo "$RP_LIB_DIR/../build/rankprune")}
  [ -x "$RP" ] || rp_fail 1 "no rankprune binary at '$RP': set RANKPRUNE_BIN or put rankprune on PATH"
}

# The value of sweep option --NAME in ARGS (--name V or --name=V), else in the --config file
# (name = value), else DEFAULT. Used to find --db and --ratios without a second option parser.
rp_arg() {  # NAME DEFAULT ARGS...
  local name=$1 def=$2 config="" v="" have=0; shift 2
  while (($#)); do
    case $1 in
      --"$name") v=${2-}; have=1; shift ;;
      --"$name"=*) v=${1#*=}; have=1 ;;
      --config) config=${2-}; shift ;;
      --config=*) config=${1#*=} ;;
    esac
    shift
  done
  if [ $have = 0 ] && [ -n "$config" ] && [ -r "$config" ]; then
    v=$(sed -n "s/^[[:space:]]*${name}[[:space:]]*=[[:space:]]*\(.*[^[:space:]]\)[[:space:]]*\$/\1/p" "$config" | tail -1)
    [ -n "$v" ] && have=1
  fi
  if [ $have = 1 ]; then echo "$v"; else echo "$def"; fi
}

# One line that says what this job got, so a log shows the layout it ran with.
rp_banner() {
  local gpus=${CUDA_VISIBLE_DEVICES:-}
  rp_log "job ${RP_JOB:-?} on ${SLURM_JOB_NODELIST:-$(hostname)}: ${SLURM_NTASKS:-1} task(s)," \
    "${SLURM_CPUS_PER_TASK:-?} CPU(s) per task, $([ -n "$gpus" ] && echo "GPUs $gpus" || echo "no GPUs (CPU-only)")," \
    "restart ${SLURM_RESTART_COUNT:-0} of at most $RP_MAX_REQUEUES, stop margin ${RP_MARGIN} s, binary $RP"
}

rp_setup() {
  rp_find_bin
  RP_MARGIN=${RANKPRUNE_STOP_MARGIN:-300}
  RP_MAX_REQUEUES=${RANKPRUNE_MAX_REQUEUES:-10}
  [[ $RP_MARGIN =~ ^[0-9]+$ ]] || rp_fail 2 "RANKPRUNE_STOP_MARGIN must be whole seconds, got '$RP_MARGIN'"
  [[ $RP_MAX_REQUEUES =~ ^[0-9]+$ ]] || rp_fail 2 "RANKPRUNE_MAX_REQUEUES must be a number, got '$RP_MAX_REQUEUES'"
  export RANKPRUNE_STOP_MARGIN=$RP_MARGIN   # the sweep warns about jobs longer than the margin
  # Matrix products use the CPUs Slurm gave this task, not every core of the node.
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
    export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
  fi
  rp_banner
}

# --- signals -------------------------------------------------------------------------------------
# USR1 is the warning (sbatch --signal=B:USR1@MARGIN, or scancel -b -s USR1): the sweep stops after
# its running job and the job requeues once. TERM, INT, USR2 (scancel, preemption, the time limit)
# stop the sweep the same way, and the job is never requeued. Each is forwarded to the child (the
# sweep, or the srun step, which passes it to every rank); stops go as TERM because srun treats a
# single INT as a status request.
rp_child="" rp_warned=0 rp_stop="" rp_requeued=0 rp_trapped=0

rp_on_signal() {  # SIG
  rp_trapped=1
  [ $rp_requeued = 1 ] && return   # the TERM that our own `scontrol requeue` sends
  local fwd end why
  if [ "$1" = USR1 ]; then
    rp_warned=1 fwd=USR1
    end=$(date -d "$(rp_job_field EndTime)" +%s 2>/dev/null) && end=", $((end - $(date +%s))) s before the time limit"
    rp_log "warning signal USR1${end:-}: the sweep finishes its running job(s), then stops (and the job requeues)"
  else
    fwd=TERM
    if [ -z "$rp_stop" ]; then
      why=$(rp_job_field Reason)
      case $why in
        TimeLimit) why="the time limit$([ $rp_warned = 1 ] && echo ": the running job outlasted the ${RP_MARGIN} s margin; raise it (slurm/README.md)")" ;;
        *) why="scancel or preemption (Slurm reason: ${why:-unknown})" ;;
      esac
      rp_log "SIG$1 from $why: stopping the sweep after its running job(s); this job will NOT be requeued"
    fi
    rp_stop=$1
  fi
  [ -n "$rp_child" ] && kill -s "$fwd" "$rp_child" 2>/dev/null
}

# One field of `scontrol show job` for this job (EndTime, Reason, ...); empty when scontrol fails.
rp_job_field() {  # NAME
  local info
  info=$(scontrol show job "$RP_JOB" 2>/dev/null) || return 0
  sed -n "/[[:space:]]$1=/{s/.*[[:space:]]$1=\([^ ]*\).*/\1/p;q}" <<<"$info"
}

# Runs CMD in the background and returns once it has really exited: a trapped signal interrupts
# `wait`, so wait again until a wait returns without a trap having fired. Sets RP_RC.
rp_run() {  # CMD...
  trap 'rp_on_signal USR1' USR1
  trap 'rp_on_signal TERM' TERM
  trap 'rp_on_signal INT' INT
  trap 'rp_on_signal USR2' USR2
  rp_log "running: $*"
  "$@" &
  rp_child=$!
  # A signal that came before the child existed is passed on now.
  if [ -n "$rp_stop" ]; then kill -TERM "$rp_child" 2>/dev/null
  elif [ $rp_warned = 1 ]; then kill -USR1 "$rp_child" 2>/dev/null; fi
  while :; do
    rp_trapped=0
    wait "$rp_child"
    RP_RC=$?
    [ $rp_trapped = 1 ] || break
  done
  rp_child=""
}

# Decides how the job ends after rp_run: returns 0 when the sweep finished; otherwise it requeues
# the job once (exit 0) or ends it with the sweep's exit status and a line saying why. RP_DB is the
# sweep's database.
rp_finish() {  # sweep|srun: what rp_run ran
  local restarts=${SLURM_RESTART_COUNT:-0}
  if [ "$RP_RC" = 0 ]; then
    rp_log "sweep finished (exit 0)$([ $rp_warned = 1 ] && echo " inside the margin; not requeued")"
    return 0
  fi
  if [ -n "$rp_stop" ]; then
    rp_fail "$RP_RC" "sweep stopped by SIG$rp_stop (exit $RP_RC); its run is recorded 'interrupted';" \
      "not requeued; submit the same command again to resume (finished jobs are kept)"
  fi
  if [ $rp_warned = 1 ] && [ "$RP_RC" = 138 ]; then
    # The sweep exits 138 at a warning even when the job it finished was its last one.
    if [ "$(rp_jobs_left "$RP_DB")" = 0 ]; then
      rp_log "sweep stopped at the warning after its last job: every job in $RP_DB is done; not requeued"
      return 0
    fi
    if [ "$restarts" -ge "$RP_MAX_REQUEUES" ]; then
      rp_fail 138 "requeue cap reached: the sweep stopped at the warning, but job $RP_JOB was" \
        "already requeued $restarts time(s) (RANKPRUNE_MAX_REQUEUES=$RP_MAX_REQUEUES); NOT requeued." \
        "Submit again to resume (finished jobs are kept), with a longer --time or a higher cap"
    fi
    rp_log "sweep stopped at the warning (exit 138); requeueing job $RP_JOB" \
      "(requeue $((restarts + 1)) of at most $RP_MAX_REQUEUES)"
    rp_requeued=1   # from here on, the TERM that Slurm sends for the requeue is expected
    if ! scontrol requeue "$RP_JOB"; then
      rp_requeued=0
      rp_fail 138 "scontrol requeue $RP_JOB failed (message above); the sweep is not finished;" \
        "submit the same command again to resume (finished jobs are kept)"
    fi
    exit 0
  fi
  case $RP_RC in
    4) rp_fail 4 "a rank was lost (exit 4): the sweep's error above names the rank and host, and its" \
         "jobs are recorded failed. Not requeued; submit again to resume (finished jobs are kept)" ;;
    1 | 2) rp_fail "$RP_RC" "the sweep refused its input or options (exit $RP_RC, message above)" ;;
    *) if [ "$1" = srun ]; then
         rp_fail "$RP_RC" "the srun step failed (exit $RP_RC): a rank died or was killed, and srun ended" \
           "the others; srun's 'error: <node>: task <rank>' line above names it. Not requeued; submit" \
           "again to resume (finished jobs are kept)"
       fi
       rp_fail "$RP_RC" "sweep ended with exit $RP_RC; not requeued; submit again to resume" ;;
  esac
}

# The number of jobs in DB that are not done; empty when rankprune query cannot tell (or the DB
# has no jobs yet: the sweep was stopped before it planned).
rp_jobs_left() {  # DB
  local jobs all ndone
  jobs=$("$RP" query --db "$1" --jobs --format json 2>/dev/null) || return 0
  all=$(grep -c '"state": "' <<<"$jobs")
  ndone=$(grep -c '"state": "done"' <<<"$jobs")
  [ "$all" -gt 0 ] && echo $((all - ndone))
}

# RP_ARGS = ARGS without the options NAME... (--name V and --name=V), so a script can set them.
rp_strip() {  # "NAME ..." ARGS...
  local names=" $1 " a skip=0; shift
  RP_ARGS=()
  for a in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $a in
      --*=*) [[ $names == *" ${a%%=*} "* ]] && continue ;;
      --*) [[ $names == *" $a "* ]] && { skip=1; continue; } ;;
    esac
    RP_ARGS+=("$a")
  done
}

# The per-element database of one ratio of an array: results.db -> results.ratio-0.25.db.
rp_part_db() { echo "${1%.db}.ratio-$2.db"; }   # DB RATIO

# After a finished sweep: the result tables in the log and the HTML report beside the DB.
rp_summary() {  # DB
  "$RP" query --db "$1" || rp_log "warning: rankprune query --db $1 failed"
  if "$RP" report --db "$1" --out "${1%.db}.html"; then rp_log "results in $1, report ${1%.db}.html"
  else rp_log "warning: rankprune report --db $1 failed"; fi
}
