#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan + UBSan, fuzz/targets.cmake) into build-fuzz/ and
# runs each for SECONDS (default 60), one at a time unless FUZZ_JOBS says more, then
# prints a table of executions per target. Exit 1 if any target found anything.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]       e.g. scripts/fuzz.sh 600, scripts/fuzz.sh 30 fuzz_npy
#
# Each target starts from its seeds (fuzz/seeds/<target>, shipped files from ../shared/data and
# fixtures/, and the regression inputs in tests/fuzz_regress/<target>) and keeps the corpus it
# grows in build-fuzz/fuzz-run/corpus/<target> for the next run. Limits per input: 1 s
# (-timeout=1: a slower input is a finding), 2 GiB RSS, a 1 GiB single allocation.
# Findings land in build-fuzz/fuzz-run/artifacts/<target>/; minimise one with
#   build-fuzz/fuzz/<target> -minimize_crash=1 -max_total_time=60 -exact_artifact_path=min FILE
# and add it to tests/fuzz_regress/<target>/ with the fix (docs/reliability.md).
#
# A target that ran fewer than FUZZ_MIN_RUNS inputs (default 10^6) in SECONDS goes on until it has.
#
# Environment: RANKPRUNE_FUZZ_BUILD (build dir, default build-fuzz), RANKPRUNE_DATA_DIR,
# JOBS (build parallelism, default 2), FUZZ_JOBS (targets fuzzed at once, default 1),
# FUZZ_MIN_RUNS, CXX_FUZZ (default clang++-14).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-60}
shift || true
BUILD=${RANKPRUNE_FUZZ_BUILD:-$ROOT/build-fuzz}
DATA=${RANKPRUNE_DATA_DIR:-$ROOT/../shared/data}
export RANKPRUNE_DATA_DIR=$DATA
CXX_FUZZ=${CXX_FUZZ:-clang++-14}
CC_FUZZ=${CC_FUZZ:-${CXX_FUZZ/clang++/clang}}
RUN=$BUILD/fuzz-run

# The slowest targets first: their top-ups to FUZZ_MIN_RUNS overlap the others under FUZZ_JOBS > 1.
ALL=(fuzz_db fuzz_task_wikitext fuzz_bpe fuzz_sweep_ini fuzz_safetensors fuzz_safetensors_index fuzz_config
     fuzz_npy fuzz_rwkv7 fuzz_llama2c fuzz_sp_model fuzz_task_piqa fuzz_task_arc fuzz_task_hellaswag
     fuzz_task_winogrande fuzz_task_lambada)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

command -v "$CXX_FUZZ" >/dev/null || { echo "fuzz.sh: $CXX_FUZZ not found (apt-get install clang-14)" >&2; exit 2; }
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  CC=$CC_FUZZ CXX=$CXX_FUZZ cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DRANKPRUNE_BUILD_FUZZ=ON -DRANKPRUNE_BUILD_TESTS=OFF -DRANKPRUNE_BUILD_BENCH=OFF \
    -DRANKPRUNE_WITH_MPI=OFF -DRANKPRUNE_WITH_CUDA=OFF >/dev/null
fi
cmake --build "$BUILD" -j"${JOBS:-2}" --target "${TARGETS[@]}"

# Seeds: what the target reads in real use, small enough to mutate quickly.
seed() {
  local t=$1 dir=$RUN/corpus/$1
  mkdir -p "$dir"
  [ -d "$ROOT/fuzz/seeds/$t" ] && cp -n "$ROOT/fuzz/seeds/$t"/* "$dir"/ 2>/dev/null || true
  # Regression inputs over 64 KiB (whole results DBs) stay out: the test suite replays them, and
  # mutating them would slow the target tenfold.
  [ -d "$ROOT/tests/fuzz_regress/$t" ] &&
    find "$ROOT/tests/fuzz_regress/$t" -maxdepth 1 -type f -size -64k -exec cp -n {} "$dir"/ \; 2>/dev/null || true
  local tasks=$DATA/tasks
  case $t in
    fuzz_config)
      cp -n "$ROOT/fixtures/delta_net/config.json" "$dir/fixture_delta_net.json"
      cp -n "$ROOT/fixtures/gated_deltanet/config.json" "$dir/fixture_gated_deltanet.json" ;;
    fuzz_sp_model) cp -n "$DATA/models/stories260K/tok512.model" "$dir/" ;;
    fuzz_bpe)
      head -c 600 "$DATA/text/tinyshakespeare/input.txt" >"$dir/shakespeare.txt"
      head -c 600 "$DATA/text/wikitext2/wiki.test.raw" >"$dir/wikitext.txt"
      head -n 3 "$tasks/hellaswag/hellaswag_val_full.txt" >"$dir/hellaswag.txt" ;;
    fuzz_task_piqa)
      { head -n 4 "$tasks/piqa/valid.jsonl"; printf -- '--\n'; head -n 4 "$tasks/piqa/valid-labels.lst"; } >"$dir/piqa" ;;
    fuzz_task_arc)
      head -n 3 "$tasks/llmfoundry/arc_easy.jsonl" >"$dir/arc_easy"
      head -n 3 "$tasks/llmfoundry/arc_challenge.jsonl" >"$dir/arc_challenge" ;;
    fuzz_task_hellaswag) head -n 18 "$tasks/hellaswag/hellaswag_val_full.txt" >"$dir/hellaswag" ;;
    fuzz_task_winogrande) head -n 4 "$tasks/llmfoundry/winogrande.jsonl" >"$dir/winogrande" ;;
    fuzz_task_lambada) head -n 4 "$tasks/lambada_openai/lambada_test.jsonl" >"$dir/lambada" ;;
    fuzz_task_wikitext) head -n 40 "$DATA/text/wikitext2/wiki.test.raw" >"$dir/wiki.raw" ;;
  esac
}

# Per-target options: dictionaries where the format has keywords, input size limits.
opts() {
  case $1 in
    fuzz_safetensors|fuzz_safetensors_index|fuzz_config) echo "-dict=$ROOT/fuzz/dicts/json.dict -max_len=8192" ;;
    fuzz_npy) echo "-dict=$ROOT/fuzz/dicts/npy.dict -max_len=4096" ;;
    fuzz_rwkv7|fuzz_llama2c) echo "-max_len=8192" ;;
    fuzz_sp_model) echo "-max_len=16384" ;;
    fuzz_bpe) echo "-max_len=1024" ;;
    fuzz_task_wikitext) echo "-dict=$ROOT/fuzz/dicts/tasks.dict -max_len=2048" ;;
    fuzz_task_*) echo "-dict=$ROOT/fuzz/dicts/tasks.dict -max_len=8192" ;;
    fuzz_sweep_ini) echo "-dict=$ROOT/fuzz/dicts/ini.dict -max_len=4096" ;;
    fuzz_db) echo "-max_len=32768" ;;  # the seeds: 9 and 18 KB files of schema versions 1 and 3
  esac
}

# One target: SECS seconds, then, if it ran fewer than MIN_RUNS inputs (slow targets, a busy
# machine), on from the corpus it grew until it has (libFuzzer -runs counts the second part).
MIN_RUNS=${FUZZ_MIN_RUNS:-1000000}
run_target() {
  local t=$1 art=$RUN/artifacts/$1 log=$RUN/$1.log rc execs=0 secs=0 rss n s r
  mkdir -p "$art"
  : >"$log"
  local passes=("-max_total_time=$SECS")
  for pass in 1 2; do
    set +e
    # shellcheck disable=SC2046
    (cd "$RUN" && "$BUILD/fuzz/$t" "$RUN/corpus/$t" $(opts "$t") "${passes[@]}" -timeout=1 \
       -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$art/" \
       >>"$log" 2>&1)
    rc=$?
    set -e
    n=$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n + 0}' "$log")  # this pass
    s=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}' || true)
    execs=$((execs + n)); secs=$((secs + ${s:-0}))
    sed -i 's/^stat::number_of_executed_units:/stat::counted_executed_units:/' "$log"
    r=$(awk '/^stat::peak_rss_mb:/ {n = $2} END {print n + 0}' "$log")
    rss=$(( ${rss:-0} > r ? ${rss:-0} : r ))
    [ "$rc" -eq 0 ] && [ "$execs" -lt "$MIN_RUNS" ] || break
    passes=("-runs=$((MIN_RUNS - execs))")
    echo "   $t: $execs executions in $secs s, below $MIN_RUNS: on to $MIN_RUNS" >&2
  done
  local corpus found result=clean
  corpus=$(find "$RUN/corpus/$t" -type f | wc -l)
  found=$(find "$art" -type f | wc -l)
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    result="FOUND ($found in $art; rc $rc; see $log)"
  fi
  local rate=$(( secs > 0 ? execs / secs : execs ))
  echo "| $t | $secs | $execs | $rate | ${rss:-?} | $corpus | $result |" >"$RUN/$t.row"
  echo "== $t: $execs executions in $secs s, $result" >&2
}

mkdir -p "$RUN"
SUMMARY=$RUN/summary.md
# FUZZ_JOBS targets at a time (default 1: the machine's cores are shared).
JOBS_FUZZ=${FUZZ_JOBS:-1}
for t in "${TARGETS[@]}"; do
  seed "$t"
  rm -f "$RUN/$t.row"
  echo "== $t: ${SECS} s" >&2
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS_FUZZ" ]; do wait -n || true; done
  run_target "$t" &
done
wait
{
  echo "| target | seconds | executions | exec/s | peak RSS MB | corpus | result |"
  echo "|---|---:|---:|---:|---:|---:|---|"
} >"$SUMMARY"
failed=0
total=0
for t in "${TARGETS[@]}"; do
  if [ -f "$RUN/$t.row" ]; then
    cat "$RUN/$t.row" >>"$SUMMARY"
    total=$((total + $(cut -d'|' -f4 "$RUN/$t.row")))
    grep -q '| clean |' "$RUN/$t.row" || failed=1
  else
    echo "| $t | | | | | | NOT RUN |" >>"$SUMMARY"
    failed=1
  fi
done
echo "| total | | $total | | | | |" >>"$SUMMARY"
cat "$SUMMARY"
exit $failed
