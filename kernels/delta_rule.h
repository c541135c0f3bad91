// The (gated) delta rule, the recurrence at the heart of DeltaNet and Gated DeltaNet:
//
//   S_t = exp(g_t) S_{t-1}                       (gated only; g_t <= 0)
//   u_t = beta_t (v_t - S_t^T k_t)               S: [dk, dv] per (batch, head)
//   S_t = S_t + k_t u_t^T
//   o_t = S_t^T (scale * q_t)                    the state AFTER the update
//
// Three implementations that compute the same thing:
//  - delta_rule_recurrent: one token at a time in torch ops. The readable reference (what fla's
//    fused_recurrent kernels and naive_recurrent_* compute). O(T) sequential steps, each a few
//    batched matmuls over the whole [B, H, dk, dv] state; works on any device, differentiable.
//  - delta_rule_recurrent_cpu: the same recurrence as one fused CPU loop per (batch, head, block
//    of state columns) — columns of S evolve independently — whose [dk, 32] slice of the state
//    stays in L1 for all T steps (two vectorised sweeps per token, no temporaries; AVX-512, AVX2
//    or baseline code picked at load time); the tasks are split over kernel_threads()
//    (kernels/threads.h), with bit-identical results for any thread count. Forward only;
//    float32/float64 CPU tensors (bf16/f16 computed in float32). Its initial state can be read in place from rows of a bigger state (`s0_rows`),
//    and the final state can be skipped: scoring continuations from a shared context copies no
//    state at all.
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

#include <vector>

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

// `s0_rows` (int64 [S], optional): sequence b starts from s0[s0_rows[b]] (s0 then has any number
// of rows); undefined -> from s0[b]. `want_state` false: the result's s is undefined.
// `lens` (optional): the inputs are S sequences packed end to end in batch row 0 (q: [1, H, N, dk],
// sum(lens) = N, no padding); the final state is then [S, H, dk, dv].
// `parents` (optional, with `lens`): parents[b] = -1 starts sequence b as above; parents[b] = p
// starts it from sequence p's final state instead (p < b, and p itself has no parent): a shared
// context and its continuations in one pass, the context's state never leaving the cache.
DeltaRuleResult delta_rule_recurrent_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                                         double scale, const torch::Tensor& s0_rows = {}, bool want_state = true,
                                         const std::vector<int64_t>* lens = nullptr,
                                         const std::vector<int64_t>* parents = nullptr);

enum class DeltaRuleImpl { Auto, Recurrent, Chunked };

// Auto is fla's dispatch — the recurrence for T <= 64 (inference), otherwise chunks — except on
// CPU without autograd, where the fused recurrence runs at every length (it is faster than chunks
// there at any T). `chunk_size` only affects the chunked path. The recurrence runs as
// delta_rule_recurrent_cpu on CPU when no gradient is needed, else as delta_rule_recurrent. `s0_rows` / `want_state` as above (the other
// paths gather the rows and drop the state).
DeltaRuleResult delta_rule(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                           double scale, DeltaRuleImpl impl = DeltaRuleImpl::Auto, int64_t chunk_size = 64,
                           const torch::Tensor& s0_rows = {}, bool want_state = true);

// Packed sequences (fla's varlen / cu_seqlens form): q, k, v [1, H, N, d], beta, g [1, H, N] hold
// S = lens.size() sequences end to end; each runs from its own initial state (s0 / s0_rows as
// above, or its parent's final state with `parents`) and the final state is [S, H, dk, dv]. The
// fused CPU loop when it applies (and `impl` is not Chunked), else one sequence at a time through
// delta_rule.
DeltaRuleResult delta_rule_varlen(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& beta, const torch::Tensor& g, const torch::Tensor& s0,
                                  double scale, const std::vector<int64_t>& lens,
                                  DeltaRuleImpl impl = DeltaRuleImpl::Auto, int64_t chunk_size = 64,
                                  const torch::Tensor& s0_rows = {}, bool want_state = true,
                                  const std::vector<int64_t>* parents = nullptr);

}  // namespace rankprune
