#!/usr/bin/env bash
# The GPU checks in one go, for a GPU node that lacks the project's CPU dependencies (Debian's
# LibTorch 1.13, Boost, SQLite, LAPACK, ...), such as this workplace's H200 machine: builds only
# what the checks need, with nvcc and g++, against the LibTorch inside the node's PyTorch and a
# GoogleTest source tree, then runs
#   1. test_gpu: every tests/gpu/test_*.cpp (the CUDA kernels against their CPU twins: Gram,
#      delta rule, channel selection, eigendecomposition; a CPU machine reports the GPU cases
#      skipped);
#   2. compute-sanitizer memcheck, racecheck and synccheck on a few small cases, where
#      compute-sanitizer and a device exist and SANITIZE is not 0;
#   3. bench_gpu at the DeltaNet-1.3B shape (exit 77 = no device, reported as skipped).
# Logs land in OUT_DIR (default build-gpu/out; $OUT on the device machine). A node with the full
# dependencies can use the CMake build instead: cmake --build build --target test_gpu bench_gpu.
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Environment (defaults in brackets):
#   TORCH_DIR      [python3's torch package]  its include/ and lib/ are used
#   TORCH_INCLUDES, TORCH_LIBDIR, TORCH_ABI    override those (Debian's libtorch-dev:
#                  /usr/include/torch/csrc/api/include, /usr/lib/x86_64-linux-gnu, 1; never name
#                  /usr/include itself, which as -isystem breaks libstdc++'s #include_next)
#   GTEST_SRC      [/usr/src/googletest, else .gpu-deps/googletest]  a GoogleTest source tree
#   LAPACK_DIR     [the system's when lapacke.h is in /usr/include, else .gpu-deps/lapack]  include/
#                  with lapacke.h and cblas.h, lib/ with liblapacke, liblapack, libblas (the CPU
#                  selection code and its tests need them)
# scripts/gpu_deps.sh fills .gpu-deps/ from a Debian machine: carry that folder to the GPU node.
#   CUDA_HOME [/usr/local/cuda]   CUDA_ARCH [90]   JOBS [nproc]   SANITIZE [1]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=$ROOT/build-gpu
OUT_DIR=${1:-$B/out}
mkdir -p "$B/obj" "$OUT_DIR"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=$CUDA_HOME/bin/nvcc
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}

if [[ -z "${TORCH_INCLUDES:-}" || -z "${TORCH_LIBDIR:-}" || -z "${TORCH_ABI:-}" ]]; then
  TORCH_DIR=${TORCH_DIR:-$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')}
  TORCH_INCLUDES=${TORCH_INCLUDES:-"$TORCH_DIR/include $TORCH_DIR/include/torch/csrc/api/include"}
  TORCH_LIBDIR=${TORCH_LIBDIR:-$TORCH_DIR/lib}
  TORCH_ABI=${TORCH_ABI:-$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')}
fi
TORCH_VERSION=${TORCH_VERSION:-$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo unknown)}
if [[ -z "${GTEST_SRC:-}" ]]; then
  if [[ -d /usr/src/googletest/googletest ]]; then GTEST_SRC=/usr/src/googletest; else GTEST_SRC=$ROOT/.gpu-deps/googletest; fi
fi
if [[ -z "${LAPACK_DIR:-}" ]]; then
  if [[ -f /usr/include/lapacke.h ]]; then LAPACK_DIR=/usr; else LAPACK_DIR=$ROOT/.gpu-deps/lapack; fi
fi
[[ -f "$LAPACK_DIR/include/lapacke.h" ]] || {
  echo "gpu_check: no LAPACKE at $LAPACK_DIR (set LAPACK_DIR, or run scripts/gpu_deps.sh and carry .gpu-deps)" >&2
  exit 2
}
if [[ $LAPACK_DIR == /usr ]]; then
  LAPACK_INC=() LAPACK_LIBS=(-llapacke -llapack -lblas)
else
  LAPACK_INC=(-isystem "$LAPACK_DIR/include")
  # DT_RPATH (not RUNPATH): it also finds liblapack's own libgfortran / libquadmath there.
  LAPACK_LIBS=(-L"$LAPACK_DIR/lib" -Wl,--disable-new-dtags,-rpath,"$LAPACK_DIR/lib" -l:liblapacke.so.3
    -l:liblapack.so.3 -l:libblas.so.3)
fi
[[ -f "$GTEST_SRC/googletest/src/gtest-all.cc" ]] || {
  echo "gpu_check: no GoogleTest source at $GTEST_SRC (set GTEST_SRC, or carry .gpu-deps/googletest)" >&2
  exit 2
}
echo "gpu_check: nvcc $($NVCC --version | tail -1), LibTorch $TORCH_VERSION ($TORCH_LIBDIR, cxx11 ABI $TORCH_ABI)," \
  "GoogleTest $GTEST_SRC, sm_$CUDA_ARCH, $JOBS jobs" | tee "$OUT_DIR/gpu_check.log"

WARN=(-Wall -Wextra -Wno-unused-parameter)
COMMON=(-std=c++17 -O2 -I"$ROOT" -D_GLIBCXX_USE_CXX11_ABI="$TORCH_ABI" -DRANKPRUNE_HAVE_CUDA_RUNTIME=1
  -DRANKPRUNE_HAVE_CUDA_KERNELS=1 -DRANKPRUNE_TORCH_VERSION="\"$TORCH_VERSION\"" -I"$CUDA_HOME/include" -pthread)
TORCH_INC=()
for d in $TORCH_INCLUDES; do TORCH_INC+=(-isystem "$d"); done
GTEST_INC=(-isystem "$GTEST_SRC/googletest/include" -I"$GTEST_SRC/googletest")

# Compiles in the background, at most JOBS at a time; each step's output goes to its own log.
pids=()
failed=0
job() {  # job NAME COMMAND...
  local name=$1
  shift
  ("$@" >"$B/obj/$name.log" 2>&1 || { echo "gpu_check: FAILED: $name (see $B/obj/$name.log)"; cat "$B/obj/$name.log"; exit 1; }) &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
}
drain() {
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  pids=()
  ((failed == 0)) || exit 1
}

CUDA_UNITS=(gram_cuda delta_rule_cuda rrqr_cuda eigh_cuda)
for f in "${CUDA_UNITS[@]}"; do
  # rrqr_cuda repeats the CPU's roundings in its greedy phase: no contraction to FMA (as
  # kernels/CMakeLists.txt sets for it).
  fmad=()
  [[ $f == rrqr_cuda ]] && fmad=(--fmad=false)
  job "$f" "$NVCC" -std=c++17 -O3 -I"$ROOT" --generate-code=arch=compute_$CUDA_ARCH,code=[compute_$CUDA_ARCH,sm_$CUDA_ARCH] \
    "${fmad[@]}" -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter -c "kernels/cuda/$f.cu" -o "$B/obj/$f.o"
done
for f in common/error common/fs common/progress common/sha256; do
  job "$(basename $f)" g++ "${COMMON[@]}" "${WARN[@]}" -c "$f.cpp" -o "$B/obj/$(basename $f).o"
done
job bench_gpu g++ "${COMMON[@]}" "${WARN[@]}" -c bench/bench_gpu.cpp -o "$B/obj/bench_gpu.o"
TEST_UNITS=()
for t in tests/gpu/test_*.cpp; do TEST_UNITS+=("${t%.cpp}"); done
for f in kernels/delta_rule kernels/threads kernels/gpu kernels/rrqr kernels/rrqr_reference tests/testing/testing "${TEST_UNITS[@]}"; do
  job "$(basename $f)" g++ "${COMMON[@]}" "${WARN[@]}" "${TORCH_INC[@]}" "${GTEST_INC[@]}" "${LAPACK_INC[@]}" \
    -DRANKPRUNE_SOURCE_DIR="\"$ROOT\"" -DRANKPRUNE_BINARY="\"$ROOT/build/rankprune\"" -c "$f.cpp" \
    -o "$B/obj/$(basename $f).o"
done
job gtest-all g++ -std=c++17 -O2 -pthread "${GTEST_INC[@]}" -c "$GTEST_SRC/googletest/src/gtest-all.cc" -o "$B/obj/gtest-all.o"
job gtest_main g++ -std=c++17 -O2 -pthread "${GTEST_INC[@]}" -c "$GTEST_SRC/googletest/src/gtest_main.cc" -o "$B/obj/gtest_main.o"
drain

CUDA_LIBS=(-L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" -lcusolver -lcublas -lcudart)
KERNELS=("$B/obj/error.o" "$B/obj/fs.o" "$B/obj/progress.o" "$B/obj/sha256.o")
for f in "${CUDA_UNITS[@]}"; do KERNELS+=("$B/obj/$f.o"); done
TEST_OBJS=()
for t in "${TEST_UNITS[@]}"; do TEST_OBJS+=("$B/obj/$(basename "$t").o"); done
g++ -o "$B/bench_gpu" "$B/obj/bench_gpu.o" "${KERNELS[@]}" "${CUDA_LIBS[@]}" -pthread
g++ -o "$B/test_gpu" "${TEST_OBJS[@]}" "$B/obj/delta_rule.o" "$B/obj/threads.o" "$B/obj/gpu.o" "$B/obj/rrqr.o" \
  "$B/obj/rrqr_reference.o" "$B/obj/testing.o" "${KERNELS[@]}" "$B/obj/gtest-all.o" "$B/obj/gtest_main.o" \
  -L"$TORCH_LIBDIR" -Wl,-rpath,"$TORCH_LIBDIR" -ltorch_cpu -lc10 "${LAPACK_LIBS[@]}" "${CUDA_LIBS[@]}" -ldl -pthread
echo "gpu_check: built $B/test_gpu and $B/bench_gpu" | tee -a "$OUT_DIR/gpu_check.log"

status=0
set +e
OMP_NUM_THREADS=4 timeout 120 "$B/test_gpu" --gtest_output=xml:"$OUT_DIR/test_gpu.xml" 2>&1 | tee "$OUT_DIR/test_gpu.log"
rc=${PIPESTATUS[0]}
echo "gpu_check: test_gpu exit $rc" | tee -a "$OUT_DIR/gpu_check.log"
((rc == 0)) || status=1

if [[ "${SANITIZE:-1}" != 0 ]] && command -v compute-sanitizer >/dev/null && [[ $(nvidia-smi -L 2>/dev/null | wc -l) -gt 0 ]]; then
  # Small cases only (a sanitizer slows kernels by 10-100x). memcheck covers every kernel and the
  # tests' own copies; racecheck and synccheck the kernels with shared memory and barriers (the
  # delta rule, the selection; the Gram's own kernels have neither; cuBLAS / cuSOLVER are not
  # ours to check).
  # The selection kernel has barriers and shared reduction scratch too: racecheck and synccheck
  # on two of its cases (a swap-heavy one and a rank-deficient one).
  delta='GpuDeltaRule.OddHeadSizes:GpuDeltaRule.StateOptionalInPlaceAndDeterministic'
  rrqr='GpuRrqr.KahanNeedsSwaps:GpuRrqr.RankDeficientGrams'
  for tool in memcheck racecheck synccheck; do
    filter="$delta:$rrqr"
    [[ $tool == memcheck ]] && filter="$delta:$rrqr:GpuGram.AccumulatesOverCalls:GpuEigh.MatchesLapackJacobiSizes"
    OMP_NUM_THREADS=4 timeout 75 compute-sanitizer --tool "$tool" --error-exitcode 9 "$B/test_gpu" --gtest_filter="$filter" \
      >"$OUT_DIR/sanitizer_$tool.log" 2>&1
    rc=$?
    tail -3 "$OUT_DIR/sanitizer_$tool.log"
    if ((rc != 0)) && grep -q "Device not supported" "$OUT_DIR/sanitizer_$tool.log"; then
      # gVisor machines refuse compute-sanitizer (docs of the device tool); not a finding.
      echo "gpu_check: compute-sanitizer $tool unavailable here (Device not supported)" | tee -a "$OUT_DIR/gpu_check.log"
      break
    fi
    echo "gpu_check: compute-sanitizer $tool exit $rc" | tee -a "$OUT_DIR/gpu_check.log"
    ((rc == 0)) || status=1
  done
fi

timeout 90 "$B/bench_gpu" 2>&1 | tee "$OUT_DIR/bench_gpu.txt"
rc=${PIPESTATUS[0]}
if ((rc == 77)); then
  echo "gpu_check: bench_gpu skipped (no device)" | tee -a "$OUT_DIR/gpu_check.log"
else
  echo "gpu_check: bench_gpu exit $rc" | tee -a "$OUT_DIR/gpu_check.log"
  ((rc == 0)) || status=1
fi
echo "---- summary ($OUT_DIR) ----"
cat "$OUT_DIR/gpu_check.log"
exit $status
