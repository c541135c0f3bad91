// The (gated) delta rule, the recurrence at the heart of DeltaNet and Gated DeltaNet:
//
//   S_t = exp(g_t) S_{t-1}                       (gated only; g_t <= 0)
//   u_t = beta_t (v_t - S_t^T k_t)               S: [dk, dv] per (batch, head)
//   S_t = S_t + k_t u_t^T
//   o_t = S_t^T (scale * q_t)                    the state AFTER the update
//
// Two implementations that compute the same thing:
//  - delta_rule_recurrent: one token at a time. The readable reference (what fla's
//    fused_recurrent kernels and naive_recurrent_* compute). O(T) sequential steps.
//  - delta_rule_chunked: the WY/UT form in chunks of C tokens (fla's chunk kernels). All
//    state-independent work (the triangular solves, intra-chunk attention) is batched over all
//    chunks; only three small matmuls per chunk stay sequential. Differentiable by autograd.
//
// Shapes (CPU or CUDA tensors, same device):
//   q, k: [B, H, T, dk]   (already L2-normalised if the model wants it; NOT scaled)
//   v:    [B, H, T, dv]   beta, g: [B, H, T]   (g undefined -> ungated)
//   s0:   [B, H, dk, dv]  initial state (undefined -> zeros)
// Computation happens in float32 for bf16/f16 inputs (as fla accumulates in fp32), otherwise in
// the input dtype (float64 for tight tests). Returns o in the input dtype and the final state in
// the computation dtype.
#pragma once

#include <torch/torch.h>

namespace rankprune {

struct DeltaRuleResult {
  torch::Tensor o;  // [B, H, T, dv]
  torch::Tensor s;  // [B, H, dk, dv]
};

DeltaRuleResult delta_rule_recurrent(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                                     double scale);

DeltaRuleResult delta_rule_chunked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                                   double scale, int64_t chunk_size = 64);

enum class DeltaRuleImpl { Auto, Recurrent, Chunked };

// fla's dispatch: the recurrence for T <= 64 (inference), otherwise chunks. `chunk_size` only
// affects the chunked path.
DeltaRuleResult delta_rule(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                           double scale, DeltaRuleImpl impl = DeltaRuleImpl::Auto, int64_t chunk_size = 64);

}  // namespace rankprune
