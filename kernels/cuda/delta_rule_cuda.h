// The (gated) delta rule forward on the GPU: the CUDA twin of delta_rule_recurrent /
// delta_rule_recurrent_cpu (kernels/delta_rule.h), the same recurrence token by token:
//
//   S_t = exp(g_t) S_{t-1}                       (gated only; g = nullptr -> ungated)
//   u_t = beta_t (v_t - S_t^T k_t)               S: [dk, dv] per (batch, head)
//   S_t = S_t + k_t u_t^T
//   o_t = S_t^T (scale * q_t)                    the state AFTER the update
//
// Device pointers, row-major, one dtype (`dtype`: f32 or bf16) for all activations:
//   q, k:  [B, H, T, dk]   (already L2-normalised if the model wants it; NOT scaled)
//   v:     [B, H, T, dv]   beta, g: [B, H, T]
//   s0:    [B, H, dk, dv]  float32 initial state, or nullptr for zeros
//   o:     [B, H, T, dv]   written in `dtype`
//   s_out: [B, H, dk, dv]  float32 final state, or nullptr when not wanted (may equal s0: each
//                          block reads its slice of s0 before it writes that slice of s_out)
// The state and all arithmetic are float32 (as fla's kernels); bf16 inputs are widened exactly and
// o is rounded to nearest even once. 1 <= dk, dv <= 256. Deterministic (fixed summation order, no
// atomics). Queued on `stream`; returns without synchronising.
//
// This is the recurrent form: T sequential steps per (batch, head, column slice), latency-bound
// and doing 2 dk dv flops per token on CUDA cores. If bench_gpu shows it below target at training
// / calibration lengths, the next step is the chunked (WY/UT) form on tensor cores, as fla's chunk
// kernels and delta_rule_chunked do it.
//
// Errors: shapes, pointers and dtype are checked on the host before any CUDA call (InputError
// naming the argument and what was expected); CUDA failures throw as cuda_check.h says.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace rankprune::cuda {

constexpr int64_t kDeltaRuleMaxHeadDim = 256;

struct DeltaRuleCudaArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* beta = nullptr;
  const void* g = nullptr;     // nullptr: ungated
  const float* s0 = nullptr;   // nullptr: zero initial state
  CudaScalar dtype = CudaScalar::F32;
  int64_t B = 0, H = 0, T = 0, dk = 0, dv = 0;
  double scale = 1.0;
  void* o = nullptr;
  float* s_out = nullptr;      // nullptr: final state not wanted
};

// Host-side validation only (what delta_rule_recurrent_cuda checks first); throws InputError.
void check_delta_rule_args(const DeltaRuleCudaArgs& a);

void delta_rule_recurrent_cuda(const DeltaRuleCudaArgs& a, cudaStream_t stream);

}  // namespace rankprune::cuda
