// CPU thread policy for LibTorch + OpenBLAS.
//
// LibTorch runs element-wise ops on an OpenMP pool; matrix products go to OpenBLAS, which has its
// own pthread pool. With both pools sized to the cores, OpenMP workers spin-wait between parallel
// regions while OpenBLAS's threads need those cores, and every GEMM pays for the fight (measured
// in docs/benchmarks.md: HellaSwag scoring 8.9 -> 16.1 items/s, WikiText 1627 -> 2354 tokens/s on
// 2 cores). So `n` threads means: OpenBLAS (and MKL, if LibTorch was built with it) runs
// GEMMs on n threads, and LibTorch's own element-wise pool runs on `elementwise` threads (1 by
// default: our element-wise work is small next to the GEMMs).
#pragma once

namespace rankprune {

struct CpuThreads {
  int blas = 1;         // threads OpenBLAS was set to (0 when no OpenBLAS is loaded)
  int elementwise = 1;  // at::get_num_threads() after the call
};

// What n <= 0 means: OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS (what a Slurm job script usually
// sets to its --cpus-per-task), else all hardware threads.
int default_cpu_threads();

CpuThreads set_cpu_threads(int n, int elementwise = 1);

}  // namespace rankprune
