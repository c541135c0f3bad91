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

torch::Tensor causal_conv1d_varlen(const torch::Tensor& x, const std::vector<int64_t>& lens, const torch::Tensor& w,
                                   const torch::Tensor& bias, const torch::Tensor& cache, torch::Tensor* new_cache) {
  RP_ASSERT(x.dim() == 2, "x ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), S = static_cast<int64_t>(lens.size());
  const int64_t K = (w.dim() == 3 ? w.size(2) : w.size(1)), P = K - 1;
  RP_ASSERT(!cache.defined() || (cache.dim() == 3 && cache.size(0) == S && cache.size(1) == C && cache.size(2) == P),
            "cache ", cache.sizes(), " for ", S, " sequences");
  // One long sequence with each packed sequence preceded by its own K-1 cache rows: a plain causal
  // conv over it never mixes sequences, and each sequence's last K-1 rows are its next cache.
  std::vector<int64_t> x_pos, c_pos, tail_pos;
  x_pos.reserve(static_cast<std::size_t>(N));
  c_pos.reserve(static_cast<std::size_t>(S * P));
  tail_pos.reserve(static_cast<std::size_t>(S * P));
  int64_t p = 0, total = 0;
  for (const int64_t len : lens) {
    RP_ASSERT(len >= 0, "negative sequence length");
    for (int64_t j = 0; j < P; ++j) c_pos.push_back(p++);
    for (int64_t i = 0; i < len; ++i) x_pos.push_back(p++);
    for (int64_t j = p - P; j < p; ++j) tail_pos.push_back(j);
    total += len;
  }
  RP_ASSERT(total == N, "sequence lengths sum to ", total, ", x has ", N, " rows");
  auto index = [&x](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong).to(x.device()); };
  const auto xi = index(x_pos);
  auto ext = torch::zeros({p, C}, x.options());
  ext.index_copy_(0, xi, x);
  if (cache.defined() && P > 0)
    ext.index_copy_(0, index(c_pos),
                    cache.to(x.scalar_type()).permute({0, 2, 1}).reshape({S * P, C}));
  auto y = causal_conv1d(ext.unsqueeze(0), w, bias, torch::Tensor())[0].index_select(0, xi);
  if (new_cache)
    *new_cache = ext.index_select(0, index(tail_pos))
                     .reshape({S, P, C})
                     .permute({0, 2, 1})
                     .contiguous();
  return y;
}

}  // namespace rankprune
