#include "kernels/short_conv.h"

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "kernels/cpu_clones.h"
#include "kernels/varlen.h"

namespace rankprune {

using torch::indexing::Slice;

namespace {

// The direct CPU loop: rows of x are tokens with C contiguous channels, so every tap is one
// vectorised multiply-add over a row. Sequence b covers rows [starts[b], starts[b] + lens[b]);
// the K-1 rows before it come from cache[b] ([C, K-1]) or are zero.
struct ConvArgs {
  const void* x;
  void* y;
  int64_t C, K, S;
  const int64_t *starts, *lens;
  const int64_t* parents;  // or null: sequence b's K-1 rows before it are parents[b]'s last ones
  const void* wt;     // [K, C]: tap j of every channel, contiguous
  const void* bias;   // [C] or null
  const void* cache;  // [S, C, K-1] contiguous, or null
  void* new_cache;    // [S, C, K-1], or null
};

// RP_INLINE: each target_clones variant below compiles the loop for its own instruction set.
template <typename T>
RP_INLINE void conv_rows(const ConvArgs& a) {
  const int64_t C = a.C, K = a.K, P = K - 1;
  const T* x = static_cast<const T*>(a.x);
  const T* wt = static_cast<const T*>(a.wt);
  const T* bias = static_cast<const T*>(a.bias);
  const T* cache = static_cast<const T*>(a.cache);
  T* y = static_cast<T*>(a.y);
  T* nc = static_cast<T*>(a.new_cache);
  const auto pre_size = static_cast<std::size_t>(std::max<int64_t>(P, 1) * C);
  std::vector<T> pre(pre_size, T(0)), parent_pre(pre_size, T(0));  // [P, C] each
  // The K-1 rows before root sequence b: its cache, transposed, or zeros.
  auto root_prefix = [&](int64_t b, T* dst) {
    if (!cache) return std::fill(dst, dst + P * C, T(0));
    const T* cb = cache + b * C * P;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < P; ++j) dst[j * C + c] = cb[c * P + j];
  };
  for (int64_t b = 0; b < a.S; ++b) {
    const int64_t start = a.starts[b], len = a.lens[b];
    const int64_t parent = a.parents ? a.parents[b] : -1;
    if (parent < 0) {
      root_prefix(b, pre.data());
    } else {
      // The parent's last K-1 input rows (reaching into its own prefix when it is shorter).
      root_prefix(parent, parent_pre.data());
      const int64_t ps = a.starts[parent], pl = a.lens[parent];
      for (int64_t j = 0; j < P; ++j) {
        const int64_t u = pl - P + j;
        const T* src = u >= 0 ? x + (ps + u) * C : parent_pre.data() + (P + u) * C;
        std::copy(src, src + C, pre.data() + j * C);
      }
    }
    // Input row u of this sequence; u < 0 reads the cache (or zeros).
    auto row = [&](int64_t u) -> const T* { return u >= 0 ? x + (start + u) * C : pre.data() + (P + u) * C; };
    for (int64_t t = 0; t < len; ++t) {
      T* __restrict yr = y + (start + t) * C;
      if (bias) {
        std::copy(bias, bias + C, yr);
      } else {
        std::fill(yr, yr + C, T(0));
      }
      for (int64_t j = 0; j < K; ++j) {
        const T* __restrict xr = row(t - P + j);
        const T* __restrict wj = wt + j * C;
        for (int64_t c = 0; c < C; ++c) yr[c] += wj[c] * xr[c];
      }
    }
    if (nc) {
      T* nb = nc + b * C * P;
      for (int64_t j = 0; j < P; ++j) {
        const T* r = row(len - P + j);
        for (int64_t c = 0; c < C; ++c) nb[c * P + j] = r[c];
      }
    }
  }
}

RP_CPU_CLONES void conv_rows_f32(const ConvArgs& a) { conv_rows<float>(a); }
RP_CPU_CLONES void conv_rows_f64(const ConvArgs& a) { conv_rows<double>(a); }

bool direct_applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias,
                    const torch::Tensor& cache) {
  auto grad = [](const torch::Tensor& t) { return t.defined() && t.requires_grad(); };
  const auto st = x.scalar_type();
  return x.device().is_cpu() && (st == torch::kFloat32 || st == torch::kFloat64) &&
         !(torch::GradMode::is_enabled() && (grad(x) || grad(w) || grad(bias) || grad(cache)));
}

// x: [N, C] rows of S sequences (starts/lens); returns y [N, C] and fills *new_cache [S, C, K-1].
torch::Tensor conv_direct(const torch::Tensor& x_in, const std::vector<int64_t>& starts,
                          const std::vector<int64_t>& lens, const torch::Tensor& w2, const torch::Tensor& bias,
                          const torch::Tensor& cache, torch::Tensor* new_cache,
                          const std::vector<int64_t>* parents = nullptr) {
  const auto st = x_in.scalar_type();
  const auto x = x_in.contiguous();
  const int64_t C = x.size(1), K = w2.size(1), S = static_cast<int64_t>(lens.size());
  const auto wt = w2.to(st).t().contiguous();
  const auto b = bias.defined() ? bias.to(st).contiguous() : bias;
  const auto c0 = cache.defined() ? cache.to(st).contiguous() : cache;
  auto y = torch::empty_like(x);
  torch::Tensor nc = new_cache ? torch::empty({S, C, K - 1}, x.options()) : torch::Tensor();
  ConvArgs a{x.data_ptr(), y.data_ptr(), C, K, S, starts.data(), lens.data(), parents ? parents->data() : nullptr,
             wt.data_ptr(),
             b.defined() ? b.data_ptr() : nullptr, c0.defined() ? c0.data_ptr() : nullptr,
             new_cache ? nc.data_ptr() : nullptr};
  st == torch::kFloat64 ? conv_rows_f64(a) : conv_rows_f32(a);
  if (new_cache) *new_cache = nc;
  return y;
}

}  // namespace

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& bias,
                            const torch::Tensor& cache, torch::Tensor* new_cache) {
  RP_ASSERT(x.dim() == 3, "x ", x.sizes());
  const int64_t B = x.size(0), C = x.size(2);
  auto w = w_in.dim() == 3 ? w_in.squeeze(1) : w_in;  // [C, K]
  RP_ASSERT(w.dim() == 2 && w.size(0) == C, "w ", w_in.sizes(), " for ", C, " channels");
  const int64_t K = w.size(1);
  RP_ASSERT(!cache.defined() || (cache.dim() == 3 && cache.size(0) == B && cache.size(1) == C &&
                                 cache.size(2) == K - 1),
            "cache ", cache.sizes());
  if (direct_applies(x, w, bias, cache)) {
    const int64_t T = x.size(1);
    std::vector<int64_t> starts, lens(static_cast<std::size_t>(B), T);
    for (int64_t i = 0; i < B; ++i) starts.push_back(i * T);
    return conv_direct(x.reshape({B * T, C}), starts, lens, w, bias, cache, new_cache).view({B, T, C});
  }
  auto xt = x.transpose(1, 2);  // [B, C, T]
  torch::Tensor prefix = cache.defined() ? cache.to(x.scalar_type())
                                         : torch::zeros({B, C, K - 1}, x.options());
  auto xp = torch::cat({prefix, xt}, 2);  // [B, C, K-1+T]
  auto y = torch::conv1d(xp, w.to(x.scalar_type()).unsqueeze(1),
                         bias.defined() ? bias.to(x.scalar_type()) : torch::Tensor(),
                         /*stride=*/torch::IntArrayRef{1}, /*padding=*/torch::IntArrayRef{0},
                         /*dilation=*/torch::IntArrayRef{1}, /*groups=*/C);  // [B, C, T]
  if (new_cache) *new_cache = xp.index({Slice(), Slice(), Slice(xp.size(2) - (K - 1), xp.size(2))}).contiguous();
  return y.transpose(1, 2);
}

torch::Tensor causal_conv1d_varlen(const torch::Tensor& x, const std::vector<int64_t>& lens, const torch::Tensor& w,
                                   const torch::Tensor& bias, const torch::Tensor& cache, torch::Tensor* new_cache,
                                   const std::vector<int64_t>* parents) {
  RP_ASSERT(x.dim() == 2, "x ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), S = static_cast<int64_t>(lens.size());
  const int64_t K = (w.dim() == 3 ? w.size(2) : w.size(1)), P = K - 1;
  RP_ASSERT(!cache.defined() || (cache.dim() == 3 && cache.size(0) == S && cache.size(1) == C && cache.size(2) == P),
            "cache ", cache.sizes(), " for ", S, " sequences");
  const auto starts = packed_starts(lens, N);
  if (parents) check_parents(*parents, lens.size());
  if (direct_applies(x, w, bias, cache))
    return conv_direct(x, starts, lens, w.dim() == 3 ? w.squeeze(1) : w, bias, cache, new_cache, parents);
  // Autograd (training) and other dtypes/devices: one long sequence with each packed sequence
  // preceded by its own K-1 cache rows; a plain causal conv over it never mixes sequences, and each
  // sequence's last K-1 rows are its next cache.
  std::vector<int64_t> x_pos, c_pos, tail_pos;
  x_pos.reserve(static_cast<std::size_t>(N));
  c_pos.reserve(static_cast<std::size_t>(S * P));
  tail_pos.reserve(static_cast<std::size_t>(S * P));
  int64_t p = 0;
  for (const int64_t len : lens) {
    for (int64_t j = 0; j < P; ++j) c_pos.push_back(p++);
    for (int64_t i = 0; i < len; ++i) x_pos.push_back(p++);
    for (int64_t j = p - P; j < p; ++j) tail_pos.push_back(j);
  }
  auto index = [&x](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong).to(x.device()); };
  const auto xi = index(x_pos);
  auto ext = torch::zeros({p, C}, x.options());
  ext.index_copy_(0, xi, x);
  if (cache.defined() && P > 0)
    ext.index_copy_(0, index(c_pos),
                    cache.to(x.scalar_type()).permute({0, 2, 1}).reshape({S * P, C}));
  if (parents && P > 0) {
    // A child's K-1 rows before it are its parent's last K-1 rows (parents are roots: filled above).
    std::vector<int64_t> to, from;
    for (int64_t b = 0; b < S; ++b) {
      const int64_t p = (*parents)[static_cast<std::size_t>(b)];
      for (int64_t j = 0; p >= 0 && j < P; ++j) {
        to.push_back(c_pos[static_cast<std::size_t>(b * P + j)]);
        from.push_back(tail_pos[static_cast<std::size_t>(p * P + j)]);
      }
    }
    if (!to.empty()) ext.index_copy_(0, index(to), ext.index_select(0, index(from)));
  }
  auto y = causal_conv1d(ext.unsqueeze(0), w, bias, torch::Tensor())[0].index_select(0, xi);
  if (new_cache)
    *new_cache = ext.index_select(0, index(tail_pos))
                     .reshape({S, P, C})
                     .permute({0, 2, 1})
                     .contiguous();
  return y;
}

}  // namespace rankprune
