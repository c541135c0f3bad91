#include "kernels/gpu.h"

#include "common/error.h"

#ifdef RANKPRUNE_HAVE_CUDA_RUNTIME
#include <cuda_runtime_api.h>
#endif

#ifndef RANKPRUNE_TORCH_VERSION
#define RANKPRUNE_TORCH_VERSION "?"
#endif

namespace rankprune {

ComputeDevice parse_device(const std::string& value, const std::string& option) {
  if (value == "cpu") return ComputeDevice::Cpu;
  if (value == "cuda") return ComputeDevice::Cuda;
  throw UsageError(cat(option, ": expected cpu or cuda, got '", value, "'"));
}

const char* device_name(ComputeDevice d) { return d == ComputeDevice::Cuda ? "cuda" : "cpu"; }

bool cuda_kernels_built() {
#ifdef RANKPRUNE_HAVE_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

bool torch_has_cuda() {
#ifdef RANKPRUNE_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef RANKPRUNE_HAVE_CUDA_RUNTIME
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string gpu_summary() {
  std::string s = cat("CUDA kernels ", cuda_kernels_built() ? "built" : "not built", ", LibTorch ",
                      RANKPRUNE_TORCH_VERSION, torch_has_cuda() ? " with CUDA" : " CPU-only");
#ifdef RANKPRUNE_HAVE_CUDA_RUNTIME
  const int n = cuda_device_count();
  s += cat(", ", n, " CUDA device", n == 1 ? "" : "s", " visible");
  if (n > 0) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) s += cat(" (", p.name, ", sm_", p.major, p.minor, ")");
  }
#endif
  return s;
}

void require_cuda(const std::string& option) {
  if (!torch_has_cuda())
    throw UsageError(cat(option, ": rankprune was built without CUDA (LibTorch ", RANKPRUNE_TORCH_VERSION,
                         " is CPU-only; ", cuda_kernels_built() ? "the CUDA kernels are built, " : "",
                         "models need a CUDA LibTorch to run on a GPU: see docs/gpu.md). Use --device cpu"));
  if (cuda_device_count() == 0)
    throw UsageError(cat(option, ": no CUDA device visible (", gpu_summary(),
                         "); check CUDA_VISIBLE_DEVICES and the driver, or use --device cpu"));
}

}  // namespace rankprune
