// HOSVD (prune/tucker.h) against its defining properties and an independent LAPACK computation,
// and the attention compressions of prune/llama2c_compress.h on a small random llama2.c model.
#include <gtest/gtest.h>
#include <lapacke.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "common/fs.h"
#include "model/llama2c.h"
#include "prune/llama2c_compress.h"
#include "prune/tucker.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

constexpr double kExactTol = 1e-12;  // relative, float64 reconstruction at full ranks
constexpr double kBoundTol = 1e-10;  // relative slack on the HOSVD bounds

torch::Tensor random_tensor(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kFloat64);
}

TEST(Tucker, FullRanksReconstructExactly) {
  for (auto shape : std::vector<std::vector<int64_t>>{{4, 5, 6}, {8, 8, 64}, {4, 8, 64}, {2, 3, 20}}) {
    const auto x = random_tensor(shape, 3);
    const Tucker t = hosvd(x, max_mode_ranks(x));
    const double rel = (tucker_reconstruct(t) - x).norm().item<double>() / x.norm().item<double>();
    EXPECT_LT(rel, kExactTol) << "shape " << x.sizes();
    for (int n = 0; n < 3; ++n) {  // orthonormal factors
      const auto& u = t.factors[static_cast<std::size_t>(n)];
      EXPECT_LT((torch::matmul(u.t(), u) - torch::eye(u.size(1), torch::kFloat64)).abs().max().item<double>(),
                kExactTol);
    }
    // ||G|| = ||X|| at full ranks, and every unfolding's squared singular values sum to ||X||^2.
    const double x2 = x.pow(2).sum().item<double>();
    EXPECT_NEAR(t.core.pow(2).sum().item<double>(), x2, kExactTol * x2);
    for (int n = 0; n < 3; ++n) {
      double s2 = 0;
      for (double s : t.singular_values[static_cast<std::size_t>(n)]) s2 += s * s;
      EXPECT_NEAR(s2, x2, kExactTol * x2) << "mode " << n;
    }
  }
}

TEST(Tucker, TruncationErrorWithinHosvdBounds) {
  // A tensor with decaying multilinear spectra (a random low-rank core plus small noise), so the
  // bounds are tested where they are tight-ish, not only on white noise.
  const auto core = random_tensor({3, 4, 5}, 5);
  auto x = core;
  const std::vector<int64_t> dims = {6, 7, 9};
  for (int n = 0; n < 3; ++n) {
    auto u = random_tensor({dims[static_cast<std::size_t>(n)], core.size(n)}, 10 + static_cast<uint64_t>(n));
    x = torch::tensordot(x, u, {0}, {1});  // contracts the leading mode; after 3 steps modes are back in order
  }
  x = x + 0.05 * random_tensor(dims, 99);
  const Tucker full = hosvd(x, max_mode_ranks(x));
  const auto table = tucker_error_table(full);
  const double x2 = x.pow(2).sum().item<double>();
  int checked = 0;
  for (int64_t a = 1; a <= full.ranks[0]; ++a)
    for (int64_t b = 1; b <= full.ranks[1]; ++b)
      for (int64_t c = 1; c <= full.ranks[2]; c += 2) {
        const Ranks3 r{a, b, c};
        const Tucker t = hosvd(x, r);
        const double err2 = (tucker_reconstruct(t) - x).pow(2).sum().item<double>();
        EXPECT_LE(err2, hosvd_discarded_sum(full, r) + kBoundTol * x2) << a << "x" << b << "x" << c;
        EXPECT_GE(err2, hosvd_discarded_max(full, r) - kBoundTol * x2) << a << "x" << b << "x" << c;
        // The table (from the full core) equals the direct error.
        EXPECT_NEAR(table[a - 1][b - 1][c - 1].item<double>(), err2, kBoundTol * x2) << a << "x" << b << "x" << c;
        EXPECT_EQ(tucker_parameters(t.dims, r), a * b * c + 6 * a + 7 * b + 9 * c);
        ++checked;
      }
  EXPECT_EQ(checked, 6 * 7 * 5);
}

// The mode-n unfolding built by explicit index loops (X_(n)[i_n, j], j running over the other
// two indices in order) and its SVD by LAPACK dgesvd: independent of torch's movedim/svd.
TEST(Tucker, UnfoldingsMatchLapackOnHandSizedTensor) {
  // X [2, 3, 2] with entries chosen by hand.
  const double v[2][3][2] = {{{1, 2}, {0, -1}, {3, 1}}, {{2, 0}, {1, 1}, {-2, 4}}};
  auto x = torch::empty({2, 3, 2}, torch::kFloat64);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) x[i][j][k] = v[i][j][k];
  const int dims[3] = {2, 3, 2};
  const Tucker t = hosvd(x, max_mode_ranks(x));
  for (int n = 0; n < 3; ++n) {
    const int rows = dims[n], cols = 12 / dims[n];
    std::vector<double> a(static_cast<std::size_t>(rows * cols));  // row-major
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 2; ++k) {
          const int idx[3] = {i, j, k};
          int col = 0;
          for (int m = 0; m < 3; ++m)
            if (m != n) col = col * dims[m] + idx[m];
          a[static_cast<std::size_t>(idx[n] * cols + col)] = v[i][j][k];
        }
    // Compare the unfolding itself.
    const auto un = unfold(x, n);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        EXPECT_EQ(un[r][c].item<double>(), a[static_cast<std::size_t>(r * cols + c)]) << "mode " << n;
    const int k = std::min(rows, cols);
    std::vector<double> s(static_cast<std::size_t>(k)), u(static_cast<std::size_t>(rows * rows)),
        vt(static_cast<std::size_t>(cols * cols)), superb(static_cast<std::size_t>(k));
    ASSERT_EQ(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'A', 'N', rows, cols, a.data(), cols, s.data(), u.data(), rows,
                             vt.data(), cols, superb.data()),
              0);
    const auto& sv = t.singular_values[static_cast<std::size_t>(n)];
    ASSERT_EQ(sv.size(), static_cast<std::size_t>(k));
    for (int i = 0; i < k; ++i) EXPECT_NEAR(sv[static_cast<std::size_t>(i)], s[static_cast<std::size_t>(i)], 1e-12);
    // Left singular vectors agree up to sign (the spectra here have distinct values).
    const auto& f = t.factors[static_cast<std::size_t>(n)];
    for (int c = 0; c < k; ++c) {
      double dot = 0;
      for (int r = 0; r < rows; ++r) dot += f[r][c].item<double>() * u[static_cast<std::size_t>(r * rows + c)];
      EXPECT_NEAR(std::abs(dot), 1.0, 1e-12) << "mode " << n << " vector " << c;
    }
  }
}

TEST(Tucker, RankOneTensorHasOneSingularValuePerMode) {
  auto a = torch::tensor({1.0, 2.0}, torch::kFloat64), b = torch::tensor({3.0, 0.0, 4.0}, torch::kFloat64),
       c = torch::tensor({1.0, 1.0, 1.0, 1.0}, torch::kFloat64);
  auto x = a.view({2, 1, 1}) * b.view({1, 3, 1}) * c.view({1, 1, 4});
  const double norm = std::sqrt(5.0) * 5.0 * 2.0;
  for (int n = 0; n < 3; ++n) {
    const auto s = mode_singular_values(x, n);
    EXPECT_NEAR(s[0], norm, 1e-12);
    for (std::size_t i = 1; i < s.size(); ++i) EXPECT_NEAR(s[i], 0.0, 1e-12);
  }
  const Tucker t = hosvd(x, {1, 1, 1});
  EXPECT_LT((tucker_reconstruct(t) - x).abs().max().item<double>(), 1e-12);
}

TEST(Tucker, BadInputsAreInputErrors) {
  const auto x = random_tensor({2, 3, 4}, 1);
  testing::expect_input_error([&] { hosvd(x, {0, 1, 1}); }, {"mode 1", "[1, 2]"});
  testing::expect_input_error([&] { hosvd(x, {2, 4, 1}); }, {"mode 2"});
  testing::expect_input_error([&] { hosvd(torch::zeros({2, 2}), {1, 1, 1}); }, {"3-way"});
  testing::expect_input_error([&] { attention_tensor(torch::zeros({6, 4}), 4, false); }, {"4 heads"});
  const auto w = random_tensor({8, 5}, 2);
  EXPECT_TRUE(attention_matrix(attention_tensor(w, 4, false), false).equal(w));
  EXPECT_TRUE(attention_matrix(attention_tensor(w.t(), 4, true), true).equal(w.t()));
}

// ---------------------------------------------------------------------------- attention compression

Llama2cModel small_model(const testing::TempDir& tmp) {
  const std::vector<int32_t> h = {16, 24, 2, 4, 2, 11, 9};
  Llama2cConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 11, c.seq_len = 9;
  const std::string p = tmp.file("small.bin");
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(h.data()), 28);
  torch::manual_seed(4);
  auto w = (torch::randn({c.file_floats()}, torch::kFloat32) * 0.3).contiguous();
  f.write(reinterpret_cast<const char*>(w.data_ptr<float>()), c.file_floats() * 4);
  f.close();
  return Llama2cModel::load(p);
}

TEST(Llama2cCompress, FullRankFormsReproduceTheModel) {
  testing::TempDir tmp;
  const auto m = small_model(tmp);
  const auto ids = torch::tensor({1, 4, 7, 2, 9, 3}, torch::kLong).view({1, 6});
  const auto ref = m.logits(ids, torch::kFloat64);
  std::vector<std::array<Ranks3, 4>> full(2);
  for (auto& l : full) l = {Ranks3{4, 4, 16}, Ranks3{2, 4, 8}, Ranks3{2, 4, 8}, Ranks3{4, 4, 16}};
  const auto tk = compress_tucker(m, full);
  EXPECT_LT((tk.logits(ids, torch::kFloat64) - ref).abs().max().item<double>(), 1e-5);
  const auto sv = compress_svd(m, std::vector<std::array<int64_t, 4>>(2, {16, 8, 8, 16}));
  EXPECT_LT((sv.logits(ids, torch::kFloat64) - ref).abs().max().item<double>(), 1e-5);
  const auto mg = merge_kv_heads(m, 2);
  EXPECT_LT((mg.logits(ids, torch::kFloat64) - ref).abs().max().item<double>(), 1e-12);
  // Parameter counts of the factorised forms.
  EXPECT_EQ(m.attention_parameters(), 2 * (256 + 128 + 128 + 256));
  EXPECT_EQ(tk.attention_parameters(),
            2 * (2 * tucker_parameters({4, 4, 16}, {4, 4, 16}) + 2 * tucker_parameters({2, 4, 16}, {2, 4, 8})));
  EXPECT_EQ(sv.attention_parameters(), 2 * (16 * 32 + 8 * 24 + 8 * 24 + 16 * 32));
  EXPECT_EQ(m.num_parameters() - m.attention_parameters(), tk.num_parameters() - tk.attention_parameters());
}

TEST(Llama2cCompress, MergedHeadsAreGroupMeans) {
  testing::TempDir tmp;
  const auto m = small_model(tmp);
  const auto g = merge_kv_heads(m, 1);
  const auto& L0 = m.weights().layers[0];
  const auto& G0 = g.weights().layers[0];
  EXPECT_EQ(G0.n_kv_heads, 1);
  EXPECT_TRUE(torch::allclose(G0.wk, (L0.wk.narrow(0, 0, 4) + L0.wk.narrow(0, 4, 4)) / 2));
  EXPECT_TRUE(G0.wq.equal(L0.wq));
  EXPECT_EQ(g.attention_parameters(), 2 * (256 + 64 + 64 + 256));
  // Merged model = the original with every query head reading the mean KV head.
  const auto ids = torch::tensor({1, 4, 7, 2}, torch::kLong).view({1, 4});
  EXPECT_TRUE(torch::isfinite(g.logits(ids)).all().item<bool>());
  testing::expect_input_error([&] { merge_kv_heads(m, 3); }, {"3 groups", "2 KV heads"});
}

TEST(Llama2cCompress, BudgetedPlansStayWithinBudget) {
  testing::TempDir tmp;
  const auto m = small_model(tmp);
  for (double f : {0.9, 0.6, 0.3}) {
    const auto pt = plan_tucker(m, f), ps = plan_svd(m, f);
    const auto tk = apply_plan(m, pt), sv = apply_plan(m, ps);
    EXPECT_LE(tk.attention_parameters(), static_cast<int64_t>(f * static_cast<double>(m.attention_parameters())) + 8)
        << pt.describe();
    EXPECT_LE(sv.attention_parameters(), static_cast<int64_t>(f * static_cast<double>(m.attention_parameters())) + 8)
        << ps.describe();
    EXPECT_FALSE(pt.describe().empty());
  }
  testing::expect_input_error([&] { plan_tucker(m, 0.0); }, {"fraction"});
}

}  // namespace
}  // namespace rankprune
