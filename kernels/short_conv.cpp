#include "kernels/short_conv.h"

#include "common/error.h"

namespace rankprune {

using torch::indexing::Slice;

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& bias,
                            const torch::Tensor& cache, torch::Tensor* new_cache) {
  RP_ASSERT(x.dim() == 3, "x ", x.sizes());
  const int64_t B = x.size(0), C = x.size(2);
  auto w = w_in.dim() == 3 ? w_in.squeeze(1) : w_in;  // [C, K]
  RP_ASSERT(w.dim() == 2 && w.size(0) == C, "w ", w_in.sizes(), " for ", C, " channels");
  const int64_t K = w.size(1);
  auto xt = x.transpose(1, 2);  // [B, C, T]
  torch::Tensor prefix = cache.defined() ? cache.to(x.scalar_type())
                                         : torch::zeros({B, C, K - 1}, x.options());
  RP_ASSERT(prefix.size(0) == B && prefix.size(1) == C && prefix.size(2) == K - 1, "cache ", prefix.sizes());
  auto xp = torch::cat({prefix, xt}, 2);  // [B, C, K-1+T]
  auto y = torch::conv1d(xp, w.to(x.scalar_type()).unsqueeze(1),
                         bias.defined() ? bias.to(x.scalar_type()) : torch::Tensor(),
                         /*stride=*/torch::IntArrayRef{1}, /*padding=*/torch::IntArrayRef{0},
                         /*dilation=*/torch::IntArrayRef{1}, /*groups=*/C);  // [B, C, T]
  if (new_cache) *new_cache = xp.index({Slice(), Slice(), Slice(xp.size(2) - (K - 1), xp.size(2))}).contiguous();
  return y.transpose(1, 2);
}

}  // namespace rankprune
