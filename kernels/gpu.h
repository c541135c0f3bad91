// What GPU support this binary has, and the --device option (docs/gpu.md).
//
// Two separate things make a GPU run possible:
//  - the CUDA kernels (kernels/cuda/, raw device pointers, no LibTorch): built whenever nvcc and
//    the CUDA toolkit are found (RANKPRUNE_HAVE_CUDA_KERNELS), so CI compiles every .cu; the GPU
//    tests run them against their CPU twins when a device is visible;
//  - a CUDA LibTorch (RANKPRUNE_TORCH_CUDA), which models need to run on a GPU (`--device cuda`).
//    Debian's libtorch-dev is CPU-only: such a build refuses --device cuda with "built without
//    CUDA" (a usage error, exit 2) before loading anything.
#pragma once

#include <string>

namespace rankprune {

enum class ComputeDevice { Cpu, Cuda };

// "cpu" or "cuda"; anything else is a UsageError naming `option`.
ComputeDevice parse_device(const std::string& value, const std::string& option = "--device");
const char* device_name(ComputeDevice d);

bool cuda_kernels_built();  // kernels/cuda compiled in
bool torch_has_cuda();      // built against a CUDA LibTorch

// Number of CUDA devices the runtime sees; 0 without kernels, driver or device (never throws).
int cuda_device_count();
// One line for `rankprune info`-style reports and skipped GPU tests: what was built, what is seen.
std::string gpu_summary();

// Throws a UsageError for `option` ("--device cuda") unless models can run on a GPU here:
// "built without CUDA" in a CPU-only LibTorch build, "no CUDA device visible" when none is.
void require_cuda(const std::string& option = "--device cuda");

}  // namespace rankprune
