# shellcheck shell=bash
# Shared code of the tests in tests/slurm/ (sourced). Each test starts its own throwaway Slurm
# cluster (../shared/tools/local-slurm.sh: real slurmctld/slurmd/munged on this machine) with its own
# state dir and port, submits the real slurm/*.sbatch scripts to it, and purges it on exit, failure
# included. A test exits 0 (pass), 1 (fail) or 77 (skip: only when Slurm cannot be installed or
# started; ctest SKIP_RETURN_CODE).
#
#   bash tests/slurm/test_requeue.sh [RANKPRUNE_BIN]     KEEP_SLURM_TEST=1 keeps its work dir
set -uo pipefail

T_NAME=$(basename "$0" .sh)
T_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export T_SLURM=$T_REPO/slurm   # the scripts under test
T_LOCAL_SLURM=${LOCAL_SLURM_SH:-$T_REPO/../shared/tools/local-slurm.sh}
T_DATA=${RANKPRUNE_DATA_DIR:-$T_REPO/../shared/data}
T_T0=$SECONDS
# One fixed dir per test (not mktemp): a run that ctest killed is purged by the next run.
W=/tmp/rp-slurm-test/$T_NAME
T_UP=0

t_log() { echo "[$T_NAME +$((SECONDS - T_T0))s] $*"; }
t_fail() { t_log "FAIL: $*"; t_dump; exit 1; }
t_skip() { t_log "SKIP: $*"; exit 77; }

# On failure: what the jobs and Slurm said.
t_dump() {
  local f
  for f in "$W"/run/*.log; do
    [ -f "$f" ] || continue
    echo "---- $f (last 40 lines)"; tail -40 "$f"
  done
  if [ $T_UP = 1 ]; then
    echo "---- squeue"; squeue 2>&1
    echo "---- jobcomp"; cut -c1-160 "$W/cluster/log/jobcomp.txt" 2>/dev/null
    echo "---- slurmctld.log (last 15 lines)"; tail -15 "$W/cluster/log/slurmctld.log" 2>/dev/null
  fi
}

t_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ $T_UP = 1 ] && { LOCAL_SLURM_DIR=$W/cluster "$T_LOCAL_SLURM" purge >/dev/null 2>&1 || t_log "warning: purge failed"; }
  if [ "${KEEP_SLURM_TEST:-0}" = 1 ]; then t_log "kept $W"; else rm -rf "$W"; fi
  case $rc in 0) t_log PASS ;; 77) t_log skipped ;; *) t_log "failed (exit $rc)" ;; esac
  exit $rc
}

# t_init PORT: work dir, binary copy, cleanup trap. PORT is this test's own slurmctld port.
t_init() {
  T_PORT=$1
  [ -d "$W/cluster" ] && LOCAL_SLURM_DIR=$W/cluster "$T_LOCAL_SLURM" purge >/dev/null 2>&1
  rm -rf "$W"
  mkdir -p "$W/bin" "$W/run" || { echo "cannot create $W"; exit 1; }
  trap t_cleanup EXIT
  trap 'exit 1' INT TERM
  local bin=${T_BIN_ARG:-${RANKPRUNE_BIN:-$T_REPO/build/rankprune}}
  [ -x "$bin" ] || t_fail "no rankprune binary at $bin (pass it as the first argument)"
  # A copy, so a rebuild while the test runs does not change the binary under its jobs.
  cp "$bin" "$W/bin/rankprune" || t_fail "cannot copy $bin"
  RP=$W/bin/rankprune
  export RANKPRUNE_BIN=$RP
  command -v sqlite3 >/dev/null || t_fail "sqlite3 (the CLI) is missing: bash scripts/setup.sh installs it"
  [ -f "$T_DATA/text/wikitext2/wiki.valid.tokens" ] || t_fail "no data in $T_DATA (set RANKPRUNE_DATA_DIR)"
}
T_BIN_ARG=${1:-}

# t_cluster NODES [GPUS]: a cluster of NODES nodes x 2 CPUs (x GPUS fake GPUs) on a free port.
t_cluster() {
  local port=$T_PORT i
  for ((i = 0; i < 20; i++)); do   # this port and the nodes' (port+1..) must be free
    ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE ":($port|$((port + 1))|$((port + 2)))\$" || break
    port=$((port + 5))
  done
  export LOCAL_SLURM_DIR=$W/cluster LOCAL_SLURM_PORT=$port LOCAL_SLURM_NODES=$1 LOCAL_SLURM_GPUS=${2:-0}
  export LOCAL_SLURM_CPUS=2
  # A requeued job may restart cred_expire s after it stopped (local-slurm.sh default 10).
  export LOCAL_SLURM_CRED_EXPIRE=${LOCAL_SLURM_CRED_EXPIRE:-5}
  [ -x "$T_LOCAL_SLURM" ] || [ -f "$T_LOCAL_SLURM" ] || t_skip "no $T_LOCAL_SLURM (set LOCAL_SLURM_SH)"
  T_UP=1
  if ! bash "$T_LOCAL_SLURM" start >"$W/cluster-start.log" 2>&1; then
    tail -5 "$W/cluster-start.log"
    t_skip "Slurm cannot be installed or started here (local-slurm.sh start failed, above)"
  fi
  eval "$(bash "$T_LOCAL_SLURM" env)"
  t_log "cluster up: $1 node(s), ${2:-0} fake GPU(s), port $port"
}

t_cluster_stop() {
  bash "$T_LOCAL_SLURM" purge >/dev/null 2>&1 || t_fail "local-slurm.sh purge failed"
  T_UP=0
}

# The model and the one-process reference results are cached per binary (its SHA-256) in
# $T_CACHE, so the tests share them; each is written under a temporary name and renamed.
T_CACHE_ROOT=/tmp/rp-slurm-test/cache

# A tiny DeltaNet (vocab of the Mistral tokenizer; deterministic), shared read-only by the tests.
t_model() {
  T_CACHE=$T_CACHE_ROOT/$(sha256sum "$RP" | cut -c1-16)
  mkdir -p "$T_CACHE" || t_fail "cannot create $T_CACHE"
  find "$T_CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -mmin +720 ! -path "$T_CACHE" -exec rm -rf {} + 2>/dev/null
  [ -f "$T_CACHE/model/config.json" ] && return 0
  local tmp=$T_CACHE/model.$$
  rm -rf "$tmp"
  "$RP" init --arch delta_net --hidden-size 64 --num-layers 2 --num-heads 2 --head-k-dim 32 \
    --head-v-dim 32 --tokenizer "$T_DATA/tokenizers/mistral_v1.model" --out "$tmp" >/dev/null ||
    t_fail "rankprune init failed"
  mv -T "$tmp" "$T_CACHE/model" 2>/dev/null || rm -rf "$tmp"   # another test was first: same bytes
}
# t_config NAME [KEY=VALUE...]: writes $W/NAME.ini, the defaults below with KEY replaced.
t_config() {
  local name=$1 kv; shift
  declare -A c=([model]="$T_CACHE/model" [data]="$T_DATA/text/wikitext2/wiki.valid.tokens" [seq-len]=64
    [sequences]=8 [methods]="drrqr,l1" [ratios]="0.25,0.5,0.75" [tasks]="wikitext,piqa" [limit]=1
    [eval-seq-len]=256 [data-dir]="$T_DATA")
  for kv in "$@"; do c[${kv%%=*}]=${kv#*=}; done
  for kv in "${!c[@]}"; do echo "$kv = ${c[$kv]}"; done | sort >"$W/$name.ini"
}

# t_reference CONFIG: the one-process result (no Slurm) in $W/ref.txt, cached by the config's text.
t_reference() {
  local ref
  ref=$T_CACHE/ref-$(sha256sum "$1" | cut -c1-16).txt
  if [ ! -s "$ref" ]; then
    "$RP" sweep --config "$1" --db "$W/ref.db" >"$W/ref.log" 2>&1 || { cat "$W/ref.log"; t_fail "reference sweep failed"; }
    t_metrics "$W/ref.db" >"$ref.$$" && mv "$ref.$$" "$ref"
    t_log "one-process reference: $(sed -n 's/^sweep: \([0-9]* job(s) done in [0-9.]* s\).*/\1/p' "$W/ref.log")"
  fi
  cp "$ref" "$W/ref.txt"
  [ "$(wc -l <"$W/ref.txt")" -gt 0 ] || t_fail "reference sweep wrote no metrics"
}

# Every metric row, values exact (%.17g), sorted: equal files = equal results, no duplicates.
t_metrics() {
  sqlite3 "$1" "select v.method, printf('%.17g', v.ratio), v.seed, j.task, m.name,
      printf('%.17g', m.value), printf('%.17g', m.stderr)
    from metrics m join jobs j on j.id = m.job_id join variants v on v.id = j.variant_id order by 1, 2, 3, 4, 5"
}
t_sql() { sqlite3 "$1" "$2" 2>/dev/null; }

# t_same_results DB: exactly the reference's rows, one per (variant, task, metric), every job done.
t_same_results() {
  local dups left
  dups=$(t_sql "$1" "select count(*) from (select j.variant_id, j.task, m.name from metrics m
    join jobs j on j.id = m.job_id group by 1, 2, 3 having count(*) > 1)")
  [ "$dups" = 0 ] || t_fail "$1: $dups (variant, task, metric) with more than one row"
  left=$(t_sql "$1" "select count(*) from jobs where state != 'done'")
  [ "$left" = 0 ] || t_fail "$1: $left job(s) not done"
  t_metrics "$1" >"$W/got.txt"
  diff "$W/ref.txt" "$W/got.txt" >"$W/diff.txt" || { head -20 "$W/diff.txt"; t_fail "$1 differs from the one-process run"; }
  t_log "$1: $(wc -l <"$W/got.txt") metric rows, equal to the one-process run"
}

# t_sbatch SBATCH_ARGS...: submits from $W/run; the job id in T_JOB.
t_sbatch() {
  T_JOB=$(sbatch --parsable --chdir="$W/run" "$@") || t_fail "sbatch $* failed"
  T_JOB=${T_JOB%%;*}
}

t_field() {  # JOB NAME: one field of scontrol show job
  scontrol show job "$1" 2>/dev/null | sed -n "/[[:space:]]$2=/{s/.*[[:space:]]$2=\([^ ]*\).*/\1/p;q}"
}
t_state() { t_field "$1" JobState; }

# t_wait_end JOB SECONDS: until JOB is in a final state (requeues pass through); the state in T_STATE.
t_wait_end() {
  local end=$((SECONDS + $2))
  while :; do
    T_STATE=$(t_state "$1")
    case $T_STATE in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | PREEMPTED | BOOT_FAIL | DEADLINE) return 0 ;;
    esac
    [ $SECONDS -ge $end ] && t_fail "job $1 still $T_STATE after $2 s"
    sleep 0.5
  done
}
# t_expect JOB STATE RESTARTS SECONDS: waits for the end, then checks the state and Restarts.
t_expect() {
  t_wait_end "$1" "$4"
  [ "$T_STATE" = "$2" ] || t_fail "job $1 ended $T_STATE, expected $2"
  local r
  r=$(t_field "$1" Restarts)
  [ "$r" = "$3" ] || t_fail "job $1 has Restarts=$r, expected $3"
  t_log "job $1: $T_STATE, Restarts=$r, ExitCode=$(t_field "$1" ExitCode)"
}

# t_wait_done DB N SECONDS [JOB]: until N jobs of DB are done (fails early if JOB ends first).
t_wait_done() {
  local end=$((SECONDS + $3)) n
  while :; do
    n=$(t_sql "$1" "select count(*) from jobs where state = 'done'")
    [ "${n:-0}" -ge "$2" ] && return 0
    [ $SECONDS -ge $end ] && t_fail "$1: ${n:-0} job(s) done after $3 s, waited for $2"
    if [ -n "${4:-}" ]; then
      case $(t_state "$4") in RUNNING | PENDING | CONFIGURING | REQUEUED | COMPLETING | "") ;; *) t_fail "job $4 ended ($(t_state "$4")) before $2 job(s) were done" ;; esac
    fi
    sleep 0.1
  done
}

# t_wait_log FILE REGEX SECONDS: until FILE has a line matching REGEX.
t_wait_log() {
  local end=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    [ $SECONDS -ge $end ] && t_fail "no line /$2/ in $1 after $3 s"
    sleep 0.1
  done
}

# t_grep FILE REGEX [COUNT]: FILE has a line matching REGEX (exactly COUNT such lines when given).
t_grep() {
  local n
  n=$(grep -cE "$2" "$1" 2>/dev/null)
  if [ -n "${3:-}" ]; then [ "$n" = "$3" ] || t_fail "$1: $n line(s) /$2/, expected $3"
  else [ "${n:-0}" -gt 0 ] || t_fail "$1: no line /$2/"; fi
}

# t_task_pid JOB RANK: the PID of rank RANK of JOB's running step (rankprune processes only).
t_task_pid() {
  local p env
  for p in $(pgrep -x rankprune); do
    env=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null) || continue
    grep -qx "SLURM_JOB_ID=$1" <<<"$env" && grep -qx "SLURM_PROCID=$2" <<<"$env" && { echo "$p"; return 0; }
  done
  return 1
}
