// Truncated HOSVD of 3-way tensors (see tucker.h). Sizes here are attention weights (thousands
// of entries), so each unfolding's SVD costs well under a millisecond.
#include "prune/tucker.h"

#include <algorithm>

#include "common/error.h"

namespace rankprune {

namespace {

void check3(const torch::Tensor& x) {
  RP_CHECK_INPUT(x.defined() && x.dim() == 3, "Tucker decomposition needs a 3-way tensor, got ",
                 x.defined() ? cat(x.sizes()) : std::string("undefined"));
  RP_CHECK_INPUT(x.numel() > 0, "Tucker decomposition of an empty tensor ", x.sizes());
}

// Mode-n product with a matrix M [J, In]: X x_n M, result size J along mode n.
torch::Tensor mode_product(const torch::Tensor& x, const torch::Tensor& m, int mode) {
  auto moved = x.movedim(mode, 0);                        // [In, ...]
  auto sizes = moved.sizes().vec();
  auto y = torch::matmul(m, moved.reshape({sizes[0], -1}));  // [J, rest]
  sizes[0] = m.size(0);
  return y.reshape(sizes).movedim(0, mode);
}

}  // namespace

int64_t max_mode_rank(const torch::Tensor& x, int mode) {
  check3(x);
  return std::min<int64_t>(x.size(mode), x.numel() / x.size(mode));
}

Ranks3 max_mode_ranks(const torch::Tensor& x) { return {max_mode_rank(x, 0), max_mode_rank(x, 1), max_mode_rank(x, 2)}; }

torch::Tensor unfold(const torch::Tensor& x, int mode) {
  check3(x);
  RP_CHECK_INPUT(mode >= 0 && mode < 3, "unfolding mode must be 0, 1 or 2, got ", mode);
  auto d = x.to(torch::kCPU).to(torch::kFloat64);
  return d.movedim(mode, 0).reshape({d.size(mode), -1}).contiguous();
}

std::vector<double> mode_singular_values(const torch::Tensor& x, int mode) {
  auto s = torch::linalg_svdvals(unfold(x, mode)).contiguous();
  return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}

Tucker hosvd(const torch::Tensor& x_in, Ranks3 ranks) {
  check3(x_in);
  const auto x = x_in.to(torch::kCPU).to(torch::kFloat64);
  Tucker t;
  for (int n = 0; n < 3; ++n) {
    t.dims[n] = x.size(n);
    const int64_t cap = max_mode_rank(x, n);
    RP_CHECK_INPUT(ranks[n] >= 1 && ranks[n] <= cap, "Tucker rank of mode ", n + 1, " must be in [1, ", cap,
                   "] (tensor ", x.sizes(), "), got ", ranks[n]);
  }
  t.ranks = ranks;
  for (int n = 0; n < 3; ++n) {
    auto [u, s, vh] = torch::linalg_svd(unfold(x, n), /*full_matrices=*/false);
    auto sc = s.contiguous();
    t.singular_values[n].assign(sc.data_ptr<double>(), sc.data_ptr<double>() + sc.numel());
    t.factors[n] = u.narrow(1, 0, ranks[n]).contiguous();
  }
  auto g = x;
  for (int n = 0; n < 3; ++n) g = mode_product(g, t.factors[n].t(), n);
  t.core = g.contiguous();
  return t;
}

torch::Tensor tucker_reconstruct(const Tucker& t) {
  auto x = t.core;
  for (int n = 0; n < 3; ++n) x = mode_product(x, t.factors[n], n);
  return x.contiguous();
}

int64_t tucker_parameters(const Ranks3& d, const Ranks3& r) {
  return r[0] * r[1] * r[2] + d[0] * r[0] + d[1] * r[1] + d[2] * r[2];
}

torch::Tensor tucker_error_table(const Tucker& full) {
  for (int n = 0; n < 3; ++n)
    RP_CHECK_INPUT(full.ranks[n] == static_cast<int64_t>(full.singular_values[n].size()),
                   "tucker_error_table needs the full HOSVD (ranks = max_mode_ranks)");
  // Prefix sums of the squared core over all three modes.
  auto c = full.core.pow(2).cumsum(0).cumsum(1).cumsum(2);
  const double total = full.core.pow(2).sum().item<double>();  // == ||X||^2 (orthogonal U_n)
  return (total - c).clamp_min(0.0);
}

double hosvd_discarded_sum(const Tucker& t, const Ranks3& r) {
  double s = 0;
  for (int n = 0; n < 3; ++n)
    for (std::size_t i = static_cast<std::size_t>(r[n]); i < t.singular_values[n].size(); ++i)
      s += t.singular_values[n][i] * t.singular_values[n][i];
  return s;
}

double hosvd_discarded_max(const Tucker& t, const Ranks3& r) {
  double m = 0;
  for (int n = 0; n < 3; ++n) {
    double s = 0;
    for (std::size_t i = static_cast<std::size_t>(r[n]); i < t.singular_values[n].size(); ++i)
      s += t.singular_values[n][i] * t.singular_values[n][i];
    m = std::max(m, s);
  }
  return m;
}

torch::Tensor attention_tensor(const torch::Tensor& w, int64_t heads, bool output) {
  RP_CHECK_INPUT(w.dim() == 2, "attention weight must be a matrix, got ", w.sizes());
  auto m = output ? w.t() : w;  // [heads*head_dim, hidden]
  RP_CHECK_INPUT(heads >= 1 && m.size(0) % heads == 0, "attention weight ", w.sizes(), ": ", m.size(0),
                 " rows do not split into ", heads, " heads");
  return m.reshape({heads, m.size(0) / heads, m.size(1)});
}

torch::Tensor attention_matrix(const torch::Tensor& t, bool output) {
  RP_CHECK_INPUT(t.dim() == 3, "attention tensor must be 3-way, got ", t.sizes());
  auto m = t.reshape({t.size(0) * t.size(1), t.size(2)});
  return output ? m.t().contiguous() : m.contiguous();
}

}  // namespace rankprune
