#include "kernels/threads.h"

#include <dlfcn.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace rankprune {

namespace {

// A positive integer from the environment, or 0.
int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (end && *end == '\0' && n > 0 && n < 4096) ? static_cast<int>(n) : 0;
}

}  // namespace

int default_cpu_threads() {
  for (const char* name : {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"})
    if (const int n = env_threads(name)) return n;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

CpuThreads set_cpu_threads(int n, int elementwise) {
  if (n <= 0) n = default_cpu_threads();
  elementwise = std::clamp(elementwise, 1, n);
  CpuThreads out;
  // OpenBLAS is whatever libblas the loader picked (Debian's alternatives); look the setter up at
  // run time so that another BLAS simply leaves this a no-op.
  using SetFn = void (*)(int);
  if (auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(n);
    out.blas = n;
  } else {
    out.blas = 0;
  }
  at::set_num_threads(elementwise);  // also sets MKL's threads when LibTorch has MKL
  out.elementwise = at::get_num_threads();
  return out;
}

}  // namespace rankprune
