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

// Packed sequences: each equals its own conv (zero start, then from a cache), windows never cross
// sequences, and the new caches equal those of separate runs (incl. sequences shorter than K-1).
TEST(ShortConv, VarlenEqualsEachSequenceAlone) {
  torch::manual_seed(4);
  const std::vector<int64_t> lens = {7, 1, 2, 5};
  const int64_t C = 3, K = 4, N = 15;
  auto x = torch::randn({N, C}, torch::kFloat64);
  auto w = torch::randn({C, 1, K}, torch::kFloat64);
  auto cache = torch::randn({4, C, K - 1}, torch::kFloat64);
  for (bool with_cache : {false, true}) {
    torch::Tensor next;
    auto y = causal_conv1d_varlen(x, lens, w, {}, with_cache ? cache : torch::Tensor(), &next);
    int64_t at = 0;
    for (std::size_t b = 0; b < lens.size(); ++b) {
      const auto i = static_cast<int64_t>(b);
      torch::Tensor ref_next;
      auto ref = causal_conv1d(x.narrow(0, at, lens[b]).unsqueeze(0), w, {},
                               with_cache ? cache.narrow(0, i, 1) : torch::Tensor(), &ref_next)[0];
      EXPECT_LT((y.narrow(0, at, lens[b]) - ref).abs().max().item<double>(), 1e-12) << "sequence " << b;
      EXPECT_TRUE(torch::equal(next[i], ref_next[0])) << "sequence " << b;
      at += lens[b];
    }
  }
}

// Without autograd, float32/float64 CPU inputs take the direct loop; with a gradient to compute
// the torch conv1d path runs. Both give the same outputs and caches (bias, cache, packed
// sequences, float32), and the gradient path still differentiates.
TEST(ShortConv, DirectLoopEqualsTorchConv) {
  torch::manual_seed(5);
  const int64_t B = 3, T = 6, C = 40, K = 4;
  auto x = torch::randn({B, T, C});
  auto w = torch::randn({C, 1, K});
  auto bias = torch::randn({C});
  auto cache = torch::randn({B, C, K - 1});
  torch::Tensor nc_direct, nc_torch;
  auto direct = causal_conv1d(x, w, bias, cache, &nc_direct);
  auto xg = x.clone().requires_grad_(true);
  auto viatorch = causal_conv1d(xg, w, bias, cache, &nc_torch);
  ASSERT_TRUE(viatorch.requires_grad());
  EXPECT_LT((direct - viatorch.detach()).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(nc_direct, nc_torch.detach()));
  viatorch.sum().backward();
  EXPECT_TRUE(xg.grad().defined());

  const std::vector<int64_t> lens = {5, 1, 2, 9};
  auto xp = torch::randn({17, C});
  auto cp = torch::randn({4, C, K - 1});
  torch::Tensor pc_direct, pc_torch;
  auto pd = causal_conv1d_varlen(xp, lens, w, bias, cp, &pc_direct);
  auto pt = causal_conv1d_varlen(xp.clone().requires_grad_(true), lens, w, bias, cp, &pc_torch);
  EXPECT_LT((pd - pt.detach()).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(pc_direct, pc_torch.detach()));
}

// A child sequence's K-1 earlier inputs are its parent's last ones: its outputs and new cache equal
// those of the parent's rows followed by its own, run as one sequence from the parent's cache —
// also when the parent is shorter than K-1 (reaching into the parent's cache). Direct loop and
// torch path.
TEST(ShortConv, ChildrenContinueTheirParents) {
  torch::manual_seed(6);
  const std::vector<int64_t> lens = {4, 1, 3, 2, 5};
  const std::vector<int64_t> parents = {-1, -1, 0, 1, 1};
  const int64_t C = 6, K = 4, N = 15;
  auto x = torch::randn({N, C}, torch::kFloat64);
  auto w = torch::randn({C, 1, K}, torch::kFloat64);
  auto cache = torch::randn({5, C, K - 1}, torch::kFloat64);
  std::vector<int64_t> starts;
  int64_t t = 0;
  for (auto l : lens) starts.push_back(t), t += l;
  for (bool grad : {false, true}) {
    torch::Tensor next;
    auto xin = grad ? x.clone().requires_grad_(true) : x;
    auto y = causal_conv1d_varlen(xin, lens, w, {}, cache, &next, &parents).detach();
    for (std::size_t b = 0; b < lens.size(); ++b) {
      const int64_t p = parents[b];
      const auto root = static_cast<std::size_t>(p < 0 ? static_cast<int64_t>(b) : p);
      auto seq = p < 0 ? x.narrow(0, starts[b], lens[b])
                       : torch::cat({x.narrow(0, starts[root], lens[root]), x.narrow(0, starts[b], lens[b])}, 0);
      torch::Tensor ref_next;
      auto ref = causal_conv1d(seq.unsqueeze(0), w, {}, cache.narrow(0, static_cast<int64_t>(root), 1), &ref_next)[0];
      const int64_t skip = p < 0 ? 0 : lens[root];
      EXPECT_LT((y.narrow(0, starts[b], lens[b]) - ref.narrow(0, skip, lens[b])).abs().max().item<double>(), 1e-12)
          << "sequence " << b << " grad " << grad;
      EXPECT_LT((next.detach()[static_cast<int64_t>(b)] - ref_next[0]).abs().max().item<double>(), 1e-12)
          << "sequence " << b << " grad " << grad;
    }
  }
}

}  // namespace
}  // namespace rankprune
