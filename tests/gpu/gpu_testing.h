// GPU tests (tests/gpu, label gpu): each CUDA kernel against its CPU twin with named tolerances.
// Built with the CUDA kernels (wherever nvcc is found, CI included); every case skips when no
// CUDA device is visible, saying what was built and seen, so a CPU machine reports them skipped,
// never passed.
#pragma once

#include <gtest/gtest.h>

#include "kernels/gpu.h"

#define RP_REQUIRE_GPU()                                                         \
  do {                                                                           \
    if (::rankprune::cuda_device_count() == 0) GTEST_SKIP() << ::rankprune::gpu_summary(); \
  } while (0)
