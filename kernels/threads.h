// CPU thread policy for LibTorch + OpenBLAS.
//
// LibTorch runs element-wise ops on an OpenMP pool; matrix products go to OpenBLAS, which has its
// own pthread pool. With both pools sized to the cores, OpenMP workers spin-wait between parallel
// regions while OpenBLAS's threads need those cores, and every GEMM pays for the fight (measured
// in docs/benchmarks.md: HellaSwag scoring 8.9 -> 16.1 items/s, WikiText 1627 -> 2354 tokens/s on
// 2 cores). So `n` threads means: OpenBLAS (and MKL, if LibTorch was built with it) runs
// GEMMs on n threads, and LibTorch's own element-wise pool runs on `elementwise` threads (1 by
// default: our element-wise work is small next to the GEMMs).
//
// It also keeps freed tensor memory in the process (glibc malloc: no mmap per large block, no trim
// of the heap top). A forward frees and re-allocates the same activation sizes layer after layer;
// with glibc's defaults each one came back from the kernel as fresh zeroed pages, 5 % of the time
// of an evaluation forward in page faults (docs/benchmarks.md). Peak memory is unchanged.
#pragma once

#include <cstdint>
#include <functional>

namespace rankprune {

struct CpuThreads {
  int blas = 1;         // threads OpenBLAS was set to (0 when no OpenBLAS is loaded)
  int elementwise = 1;  // at::get_num_threads() after the call
};

// What n <= 0 means: OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS (what a Slurm job script usually
// sets to its --cpus-per-task), else all hardware threads.
int default_cpu_threads();

CpuThreads set_cpu_threads(int n, int elementwise = 1);

// Threads the hand-written CPU loops in kernels/ (delta-rule scan) split their work over: the n of
// the last set_cpu_threads call, 1 before any call (a library does not start threads unasked).
int kernel_threads();

// fn(begin, end) over contiguous ranges covering [0, n), on up to kernel_threads() threads (the
// caller runs the first range). Each index must be independent work, so results never depend on
// the thread count.
void parallel_ranges(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace rankprune
