// gram_accumulate on the CPU against a plain float64 triple loop (the definition), on top of a
// symmetric non-zero G, for float32, bfloat16 and float64 activations.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/gram.h"

namespace rankprune {
namespace {

// G_h[i][j] + sum over rows r of q[r,h,i] q[r,h,j] + k[r,h,i] k[r,h,j], one multiply-add at a time.
torch::Tensor naive_gram(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& G0) {
  const int64_t H = q.size(-2), d = q.size(-1);
  auto q2 = q.to(torch::kFloat64).reshape({-1, H, d}), k2 = k.to(torch::kFloat64).reshape({-1, H, d});
  auto G = G0.clone();
  auto g = G.accessor<double, 3>();
  auto qa = q2.accessor<double, 3>(), ka = k2.accessor<double, 3>();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j)
        for (int64_t r = 0; r < q2.size(0); ++r) g[h][i][j] += qa[r][h][i] * qa[r][h][j] + ka[r][h][i] * ka[r][h][j];
  return G;
}

TEST(Gram, CpuMatchesTheDefinitionAndIsSymmetric) {
  torch::manual_seed(11);
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat64}) {
    auto q = torch::randn({2, 7, 3, 5}).to(dt), k = torch::randn({2, 7, 3, 5}).to(dt);  // [B, T, H, d]
    auto a = torch::randn({3, 5, 5}, torch::kFloat64);
    auto G = a + a.transpose(1, 2);
    const auto expected = naive_gram(q, k, G);
    gram_accumulate(q, k, G);
    // Products are exact in float64; the sums of 28 terms differ only in order.
    const double scale = expected.abs().max().item<double>();
    EXPECT_LT((G - expected).abs().max().item<double>(), 64 * 1e-16 * scale) << dt;
    EXPECT_TRUE(torch::equal(G, G.transpose(1, 2))) << "not bitwise symmetric for " << dt;
  }
}

TEST(Gram, NoRowsLeavesGUnchanged) {
  auto q = torch::zeros({0, 2, 4}), k = torch::zeros({0, 2, 4});
  auto G = torch::eye(4, torch::kFloat64).repeat({2, 1, 1});
  const auto before = G.clone();
  gram_accumulate(q, k, G);
  EXPECT_TRUE(torch::equal(G, before));
}

}  // namespace
}  // namespace rankprune
