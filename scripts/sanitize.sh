#!/usr/bin/env bash
# The sanitizer run (docs/reliability.md): builds the unit tests of the readers and writers that
# take files from users (common/, model/ readers, storage/, eval/ readers, the hostile-size tests
# and the fuzz regression corpus) with -DRANKPRUNE_SANITIZE=address,undefined into
# build-sanitize/, and runs them. Any ASan / UBSan report fails the test that triggered it.
#
#   scripts/sanitize.sh [gtest args...]       e.g. --gtest_filter='Hostile.*' 
#
# Environment: BUILD_DIR (default build-sanitize), SANITIZE (default address,undefined),
# JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-sanitize}
SANITIZE=${SANITIZE:-address,undefined}
TESTS=(test_common test_config test_model_io test_tokenizer test_hostile test_eval test_storage test_report
       test_db_faults test_fuzz_regress)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRANKPRUNE_SANITIZE="$SANITIZE" \
    -DRANKPRUNE_BUILD_BENCH=OFF -DRANKPRUNE_WITH_MPI=OFF -DRANKPRUNE_WITH_CUDA=OFF >/dev/null
fi
start=$(date +%s)
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target "${TESTS[@]}"
built=$(date +%s)
# LibTorch and libgomp allocate at load time and never free (process-lifetime caches): not ours.
SUPP=$(pwd)/tests/sanitize/lsan.supp
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SUPP:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${TESTS[@]}"; do
  t0=$(date +%s)
  if OMP_NUM_THREADS=1 "$BUILD_DIR/tests/$t" --gtest_brief=1 "$@" >"$BUILD_DIR/$t.sanitize.log" 2>&1; then
    echo "sanitize: $t passed ($(( $(date +%s) - t0 )) s)"
  else
    echo "sanitize: $t FAILED ($(( $(date +%s) - t0 )) s): $BUILD_DIR/$t.sanitize.log"
    tail -n 30 "$BUILD_DIR/$t.sanitize.log"
    failed+=("$t")
  fi
done
end=$(date +%s)
echo "sanitize: built in $((built - start)) s, tests ran in $((end - built)) s ($SANITIZE)"
[ ${#failed[@]} -eq 0 ] || { echo "sanitize: failed: ${failed[*]}"; exit 1; }
