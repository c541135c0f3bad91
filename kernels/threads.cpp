#include "kernels/threads.h"

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

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

std::atomic<int> g_kernel_threads{1};

}  // namespace

int kernel_threads() { return g_kernel_threads.load(std::memory_order_relaxed); }

void parallel_ranges(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(kernel_threads(), n);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<std::size_t>(parts - 1));
  auto range = [n, parts](int64_t p) { return std::make_pair(n * p / parts, n * (p + 1) / parts); };
  for (int64_t p = 1; p < parts; ++p)
    helpers.emplace_back([&fn, r = range(p)] { fn(r.first, r.second); });
  const auto r0 = range(0);
  fn(r0.first, r0.second);
  for (auto& t : helpers) t.join();
}

int default_cpu_threads() {
  for (const char* name : {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"})
    if (const int n = env_threads(name)) return n;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

CpuThreads set_cpu_threads(int n, int elementwise) {
  if (n <= 0) n = default_cpu_threads();
  elementwise = std::clamp(elementwise, 1, n);
  g_kernel_threads.store(n, std::memory_order_relaxed);
#if defined(__GLIBC__)
  // Blocks up to 32 MiB (glibc's largest accepted threshold on 64-bit) come from the heap, and
  // the heap top is returned to the kernel only past 1 GiB free. Either alone is slower than
  // glibc's adaptive default: fixing the trim threshold also pins the mmap threshold at 128 KiB.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
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
