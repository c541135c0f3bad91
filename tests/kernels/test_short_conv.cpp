// Causal depthwise conv: against a scalar loop from the definition, causality, and carried cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/short_conv.h"

namespace rankprune {
namespace {

using torch::indexing::Slice;

torch::Tensor scalar_conv(const torch::Tensor& x, const torch::Tensor& w) {
  // y[t, c] = sum_j w[c, j] x[t - (K-1) + j, c], zero before the start.
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  auto y = torch::zeros_like(x);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < K; ++j) {
          int64_t src = t - (K - 1) + j;
          if (src >= 0) acc += w[c][j].item<double>() * x[b][src][c].item<double>();
        }
        y[b][t][c] = acc;
      }
  return y;
}

TEST(ShortConv, MatchesDefinition) {
  torch::manual_seed(1);
  auto x = torch::randn({2, 9, 5}, torch::kFloat64);
  auto w = torch::randn({5, 4}, torch::kFloat64);
  auto y = causal_conv1d(x, w, {}, {});
  EXPECT_LT((y - scalar_conv(x, w)).abs().max().item<double>(), 1e-12);
  // fla's weight layout [C, 1, K] gives the same.
  EXPECT_TRUE(torch::allclose(causal_conv1d(x, w.unsqueeze(1), {}, {}), y));
}

TEST(ShortConv, IsCausal) {
  torch::manual_seed(2);
  auto x = torch::randn({1, 12, 3}, torch::kFloat64);
  auto w = torch::randn({3, 4}, torch::kFloat64);
  auto y = causal_conv1d(x, w, {}, {});
  for (int64_t t = 0; t < 12; ++t) {
    auto x2 = x.clone();
    x2.index_put_({0, t}, x2.index({0, t}) + 10.0);
    auto y2 = causal_conv1d(x2, w, {}, {});
    // Outputs before t are untouched; output t changes.
    if (t > 0) {
      EXPECT_TRUE(torch::equal(y2.index({0, Slice(0, t)}), y.index({0, Slice(0, t)}))) << "t=" << t;
    }
    EXPECT_FALSE(torch::equal(y2.index({0, t}), y.index({0, t}))) << "t=" << t;
  }
}

TEST(ShortConv, CacheContinuesSequence) {
  torch::manual_seed(3);
  auto x = torch::randn({2, 10, 6}, torch::kFloat64);
  auto w = torch::randn({6, 4}, torch::kFloat64);
  auto whole = causal_conv1d(x, w, {}, {});
  // Split at every point, including segments shorter than K-1.
  for (int64_t a : {1, 2, 3, 5, 9}) {
    torch::Tensor cache;
    auto y1 = causal_conv1d(x.index({Slice(), Slice(0, a)}), w, {}, {}, &cache);
    torch::Tensor cache2;
    auto y2 = causal_conv1d(x.index({Slice(), Slice(a, 10)}), w, {}, cache, &cache2);
    EXPECT_LT((torch::cat({y1, y2}, 1) - whole).abs().max().item<double>(), 1e-12) << "split " << a;
    EXPECT_TRUE(torch::equal(cache2, x.index({Slice(), Slice(7, 10)}).transpose(1, 2))) << "split " << a;
  }
  // One token at a time.
  torch::Tensor cache;
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < 10; ++t) {
    torch::Tensor nc;
    ys.push_back(causal_conv1d(x.index({Slice(), Slice(t, t + 1)}), w, {}, cache, &nc));
    cache = nc;
  }
  EXPECT_LT((torch::cat(ys, 1) - whole).abs().max().item<double>(), 1e-12);
}

TEST(ShortConv, Bias) {
  auto x = torch::zeros({1, 3, 2}, torch::kFloat64);
  auto w = torch::ones({2, 4}, torch::kFloat64);
  auto b = torch::tensor({1.5, -2.0}, torch::kFloat64);
  auto y = causal_conv1d(x, w, b, {});
  EXPECT_DOUBLE_EQ(y[0][2][0].item<double>(), 1.5);
  EXPECT_DOUBLE_EQ(y[0][0][1].item<double>(), -2.0);
}

}  // namespace
}  // namespace rankprune
