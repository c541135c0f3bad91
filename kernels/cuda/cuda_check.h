// Error handling shared by the CUDA kernels (kernels/cuda/*.cu): every runtime, cuBLAS and
// cuSOLVER call is checked, and a failure throws a rankprune error naming the kernel and the call.
// Out of device memory is the user's problem size (InputError, exit 1); anything else is ours
// (InternalError, exit 3).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "common/error.h"

namespace rankprune::cuda {

[[noreturn]] inline void fail_cuda(const char* who, const char* call, cudaError_t e) {
  cudaGetLastError();  // clear a non-sticky error so the next call does not see it
  const std::string msg = cat(who, ": ", call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  if (e == cudaErrorMemoryAllocation) throw InputError(msg + "; the problem does not fit in GPU memory");
  throw InternalError(msg);
}

[[noreturn]] inline void fail_library(const char* who, const char* call, int status) {
  throw InternalError(cat(who, ": ", call, " failed with status ", status));
}

// RAII device allocation of n elements of T (uninitialised).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n, const char* who = "DeviceBuffer") : n_(n) {
    if (n == 0) return;
    const cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T));
    if (e != cudaSuccess) fail_cuda(who, "cudaMalloc", e);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  T* get() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace rankprune::cuda

#define RP_CUDA_CHECK(who, call)                                          \
  do {                                                                    \
    const cudaError_t rp_cuda_e_ = (call);                                \
    if (rp_cuda_e_ != cudaSuccess) ::rankprune::cuda::fail_cuda((who), #call, rp_cuda_e_); \
  } while (0)

// cuBLAS / cuSOLVER: status 0 is success in both.
#define RP_CUDA_LIB_CHECK(who, call)                                      \
  do {                                                                    \
    const int rp_cuda_s_ = static_cast<int>(call);                        \
    if (rp_cuda_s_ != 0) ::rankprune::cuda::fail_library((who), #call, rp_cuda_s_); \
  } while (0)

namespace rankprune::cuda {

// Element type of the activations a kernel reads (and of the outputs it writes in the input type):
// float32, or bfloat16 stored as __nv_bfloat16 (the same bytes as a torch::kBFloat16 tensor).
// Accumulation type is per kernel (float64 for the Gram, float32 for the delta-rule state).
enum class CudaScalar { F32, BF16 };

inline const char* cuda_scalar_name(CudaScalar s) {
  switch (s) {
    case CudaScalar::F32: return "f32";
    case CudaScalar::BF16: return "bf16";
  }
  return "unknown";
}

// Host-side check, before any CUDA call: an out-of-range enum value (a cast from a stored integer,
// a newer caller) is the caller's input, named with what is supported.
inline void check_cuda_scalar(const char* who, CudaScalar s) {
  RP_CHECK_INPUT(s == CudaScalar::F32 || s == CudaScalar::BF16, who, ": unsupported dtype (enum value ",
                 static_cast<int>(s), "); expected f32 or bf16");
}

}  // namespace rankprune::cuda
