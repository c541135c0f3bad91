// Causal depthwise 1-D convolution (fla's ShortConvolution without its activation):
//
//   y[t, c] = bias[c] + sum_{j=0}^{K-1} w[c, j] * x[t - (K-1) + j, c]
//
// with x[t < 0] taken from `cache` (the K-1 inputs before this segment) or zero. This is
// nn.Conv1d(groups=C, padding=K-1) truncated to the first T outputs, which is what fla computes.
//
//   x: [B, T, C]   w: [C, K] (or fla's [C, 1, K])   bias: [C] or undefined
//   cache: [B, C, K-1] or undefined (zeros)
// Returns y [B, T, C] and, when `new_cache` is non-null, the last K-1 inputs for the next
// segment ([B, C, K-1], left-filled from the old cache when T < K-1).
//
// Without autograd, float32/float64 CPU inputs run a direct loop (each tap one vectorised
// multiply-add over a token's channels; 0.2-0.3 us per token at C = 1024 vs 4-6 us through
// torch's conv1d, docs/benchmarks.md); otherwise torch's depthwise conv1d, which autograd
// differentiates.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace rankprune {

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias,
                            const torch::Tensor& cache, torch::Tensor* new_cache = nullptr);

// The same over S sequences packed end to end without padding (fla's varlen form): x [N, C] holds
// sequence b at rows [sum(lens[:b]), sum(lens[:b+1])); no window crosses into another sequence.
// cache: [S, C, K-1] or undefined (zeros). Returns y [N, C]; new_cache [S, C, K-1] as above.
// parents (optional): parents[b] = p >= 0 continues sequence b from the end of sequence p (p < b,
// p without a parent): its K-1 earlier inputs are p's last ones, as if b followed p directly.
torch::Tensor causal_conv1d_varlen(const torch::Tensor& x, const std::vector<int64_t>& lens, const torch::Tensor& w,
                                   const torch::Tensor& bias, const torch::Tensor& cache,
                                   torch::Tensor* new_cache = nullptr,
                                   const std::vector<int64_t>* parents = nullptr);

}  // namespace rankprune
