// Delta rule: the torch recurrence and the fused CPU loop against a scalar loop written from the
// equations, the fused loop against the torch recurrence, and the chunked (WY) form against the
// recurrence, over random shapes, gated and ungated, with and
// without an initial state, for lengths that are and are not multiples of the chunk.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>
#include <vector>

#include "kernels/delta_rule.h"
#include "kernels/threads.h"

namespace rankprune {
namespace {

// Named tolerances (max |a-b| / max(1, max|ref|)).
constexpr double kTolF64 = 1e-10;
constexpr double kTolF32 = 2e-4;

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = (a.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>();
  auto m = std::max(1.0, ref.to(torch::kFloat64).abs().max().item<double>());
  return d / m;
}

struct Inputs {
  torch::Tensor q, k, v, beta, g, s0;
};

Inputs make_inputs(int64_t B, int64_t H, int64_t T, int64_t dk, int64_t dv, bool gated, bool with_state,
                   torch::ScalarType dt, uint64_t seed) {
  torch::manual_seed(seed);
  Inputs in;
  auto o = torch::TensorOptions().dtype(dt);
  // L2-normalised keys, as the models feed them (keeps the recurrence contractive).
  in.q = torch::nn::functional::normalize(torch::randn({B, H, T, dk}, o),
                                          torch::nn::functional::NormalizeFuncOptions().dim(-1));
  in.k = torch::nn::functional::normalize(torch::randn({B, H, T, dk}, o),
                                          torch::nn::functional::NormalizeFuncOptions().dim(-1));
  in.v = torch::randn({B, H, T, dv}, o);
  in.beta = torch::rand({B, H, T}, o);
  if (gated) in.g = -torch::rand({B, H, T}, o) * 0.5;  // decays in (exp(-0.5), 1]
  if (with_state) in.s0 = torch::randn({B, H, dk, dv}, o) * 0.3;
  return in;
}

// The recurrence with plain loops over doubles: S_t = e^{g} S; u = b (v - S^T k); S += k u^T;
// o = S^T (scale q). Independent of every torch kernel.
torch::Tensor scalar_reference(const Inputs& in, double scale, torch::Tensor* final_state) {
  auto q = in.q.to(torch::kFloat64).contiguous(), k = in.k.to(torch::kFloat64).contiguous(),
       v = in.v.to(torch::kFloat64).contiguous(), beta = in.beta.to(torch::kFloat64).contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3), dv = v.size(3);
  auto out = torch::zeros({B, H, T, dv}, torch::kFloat64);
  auto fs = torch::zeros({B, H, dk, dv}, torch::kFloat64);
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto ba = beta.accessor<double, 3>();
  auto oa = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(static_cast<std::size_t>(dk * dv), 0.0);
      if (in.s0.defined()) {
        auto s0 = in.s0.to(torch::kFloat64).contiguous();
        auto sa = s0.accessor<double, 4>();
        for (int64_t i = 0; i < dk; ++i)
          for (int64_t j = 0; j < dv; ++j) S[i * dv + j] = sa[b][h][i][j];
      }
      for (int64_t t = 0; t < T; ++t) {
        if (in.g.defined()) {
          double d = std::exp(in.g[b][h][t].item<double>());
          for (auto& x : S) x *= d;
        }
        for (int64_t j = 0; j < dv; ++j) {
          double pred = 0;
          for (int64_t i = 0; i < dk; ++i) pred += S[i * dv + j] * ka[b][h][t][i];
          double u = ba[b][h][t] * (va[b][h][t][j] - pred);
          for (int64_t i = 0; i < dk; ++i) S[i * dv + j] += ka[b][h][t][i] * u;
        }
        for (int64_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < dk; ++i) acc += S[i * dv + j] * qa[b][h][t][i] * scale;
          oa[b][h][t][j] = acc;
        }
      }
      for (int64_t i = 0; i < dk; ++i)
        for (int64_t j = 0; j < dv; ++j) fs[b][h][i][j] = S[i * dv + j];
    }
  *final_state = fs;
  return out;
}

TEST(DeltaRule, RecurrentMatchesScalarLoop) {
  for (bool gated : {false, true})
    for (bool with_state : {false, true}) {
      auto in = make_inputs(2, 3, 11, 5, 4, gated, with_state, torch::kFloat64, 7);
      torch::Tensor ref_s;
      auto ref = scalar_reference(in, 0.37, &ref_s);
      auto r = delta_rule_recurrent(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.37);
      EXPECT_LT(rel_err(r.o, ref), kTolF64) << "gated=" << gated << " state=" << with_state;
      EXPECT_LT(rel_err(r.s, ref_s), kTolF64) << "gated=" << gated << " state=" << with_state;
    }
}

struct Shape {
  int64_t B, H, T, dk, dv, chunk;
};

TEST(DeltaRule, ChunkedMatchesRecurrentRandomShapes) {
  std::vector<Shape> shapes = {
      {1, 1, 1, 4, 4, 64},   {1, 2, 7, 8, 6, 4},     {2, 2, 63, 16, 8, 64}, {1, 3, 64, 16, 16, 64},
      {1, 2, 65, 16, 16, 64}, {2, 1, 130, 32, 16, 64}, {1, 2, 200, 8, 12, 16}, {1, 1, 33, 5, 3, 8},
  };
  // Plus random shapes from a fixed seed.
  std::mt19937 rng(123);
  for (int i = 0; i < 6; ++i) {
    std::uniform_int_distribution<int64_t> t(1, 300), d(1, 40), c(1, 80);
    shapes.push_back({1 + i % 2, 1 + i % 3, t(rng), d(rng), d(rng), c(rng)});
  }
  uint64_t seed = 0;
  for (const auto& s : shapes)
    for (bool gated : {false, true})
      for (bool with_state : {false, true}) {
        auto in = make_inputs(s.B, s.H, s.T, s.dk, s.dv, gated, with_state, torch::kFloat64, ++seed);
        const double scale = 1.0 / std::sqrt(static_cast<double>(s.dk));
        auto a = delta_rule_recurrent(in.q, in.k, in.v, in.beta, in.g, in.s0, scale);
        auto b = delta_rule_chunked(in.q, in.k, in.v, in.beta, in.g, in.s0, scale, s.chunk);
        SCOPED_TRACE(testing::Message() << "B=" << s.B << " H=" << s.H << " T=" << s.T << " dk=" << s.dk
                                        << " dv=" << s.dv << " chunk=" << s.chunk << " gated=" << gated
                                        << " state=" << with_state);
        EXPECT_LT(rel_err(b.o, a.o), kTolF64);
        EXPECT_LT(rel_err(b.s, a.s), kTolF64);
      }
}

TEST(DeltaRule, ChunkedFloat32WithinTolerance) {
  auto in = make_inputs(1, 4, 512, 64, 64, true, false, torch::kFloat32, 99);
  auto a = delta_rule_recurrent(in.q.to(torch::kFloat64), in.k.to(torch::kFloat64), in.v.to(torch::kFloat64),
                                in.beta.to(torch::kFloat64), in.g.to(torch::kFloat64), {}, 0.125);
  auto b = delta_rule_chunked(in.q, in.k, in.v, in.beta, in.g, {}, 0.125, 64);
  EXPECT_EQ(b.o.scalar_type(), torch::kFloat32);
  EXPECT_LT(rel_err(b.o, a.o), kTolF32);
}

TEST(DeltaRule, SplitSequenceEqualsWhole) {
  // Running [0, a) then [a, T) from the carried state equals one pass: what generation and
  // state reuse rely on.
  auto in = make_inputs(1, 2, 150, 16, 8, true, false, torch::kFloat64, 5);
  auto whole = delta_rule_chunked(in.q, in.k, in.v, in.beta, in.g, {}, 0.25, 32);
  using torch::indexing::Slice;
  auto part = [&](const torch::Tensor& t, int64_t lo, int64_t hi) { return t.index({Slice(), Slice(), Slice(lo, hi)}); };
  auto first = delta_rule_chunked(part(in.q, 0, 70), part(in.k, 0, 70), part(in.v, 0, 70), part(in.beta, 0, 70),
                                  part(in.g, 0, 70), {}, 0.25, 32);
  auto second = delta_rule_recurrent(part(in.q, 70, 150), part(in.k, 70, 150), part(in.v, 70, 150),
                                     part(in.beta, 70, 150), part(in.g, 70, 150), first.s, 0.25);
  EXPECT_LT(rel_err(torch::cat({first.o, second.o}, 2), whole.o), kTolF64);
  EXPECT_LT(rel_err(second.s, whole.s), kTolF64);
}

TEST(DeltaRule, ChunkedIsDifferentiable) {
  auto in = make_inputs(1, 2, 40, 8, 8, true, false, torch::kFloat64, 11);
  auto k = in.k.clone().requires_grad_(true);
  auto r = delta_rule_chunked(in.q, k, in.v, in.beta, in.g, {}, 0.3, 16);
  r.o.sum().backward();
  ASSERT_TRUE(k.grad().defined());
  // Finite-difference check of one coordinate.
  const double eps = 1e-6;
  auto kp = in.k.clone();
  kp[0][1][5][3] += eps;
  auto km = in.k.clone();
  km[0][1][5][3] -= eps;
  double fd = (delta_rule_chunked(in.q, kp, in.v, in.beta, in.g, {}, 0.3, 16).o.sum().item<double>() -
               delta_rule_chunked(in.q, km, in.v, in.beta, in.g, {}, 0.3, 16).o.sum().item<double>()) /
              (2 * eps);
  EXPECT_NEAR(k.grad()[0][1][5][3].item<double>(), fd, 1e-6);
}

TEST(DeltaRule, FusedCpuMatchesScalarLoop) {
  for (bool gated : {false, true})
    for (bool with_state : {false, true}) {
      auto in = make_inputs(2, 3, 11, 5, 4, gated, with_state, torch::kFloat64, 8);
      torch::Tensor ref_s;
      auto ref = scalar_reference(in, 0.37, &ref_s);
      auto r = delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.37);
      EXPECT_LT(rel_err(r.o, ref), kTolF64) << "gated=" << gated << " state=" << with_state;
      EXPECT_LT(rel_err(r.s, ref_s), kTolF64) << "gated=" << gated << " state=" << with_state;
    }
}

// The model feeds [B, T, H, d] tensors permuted to [B, H, T, d]: strided rows, contiguous last dim.
TEST(DeltaRule, FusedCpuMatchesTorchRecurrenceOnStridedInputs) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> t(1, 70), d(1, 70), small(1, 4);
  uint64_t seed = 100;
  for (int i = 0; i < 8; ++i) {
    const int64_t B = small(rng), H = small(rng), T = t(rng), dk = d(rng), dv = d(rng);
    for (bool gated : {false, true})
      for (auto dt : {torch::kFloat64, torch::kFloat32}) {
        auto in = make_inputs(B, H, T, dk, dv, gated, i % 2 == 0, dt, seed++);
        auto strided = [](const torch::Tensor& x) { return x.transpose(1, 2).contiguous().transpose(1, 2); };
        auto a = delta_rule_recurrent(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.3);
        auto b = delta_rule_recurrent_cpu(strided(in.q), strided(in.k), strided(in.v), strided(in.beta),
                                          in.g.defined() ? strided(in.g) : in.g, in.s0, 0.3);
        const double tol = dt == torch::kFloat64 ? kTolF64 : kTolF32;
        EXPECT_LT(rel_err(b.o, a.o), tol) << B << "x" << H << "x" << T << " dk " << dk << " dv " << dv;
        EXPECT_LT(rel_err(b.s, a.s), tol) << B << "x" << H << "x" << T << " dk " << dk << " dv " << dv;
        EXPECT_EQ(b.o.scalar_type(), dt);
      }
  }
}

// The fused loop splits (sequence, head, column block) tasks over kernel_threads(): the result is
// bit-identical whatever the thread count, at the fla-340M head shape (dk = dv = 128: four column
// blocks in float32) and with a ragged last block (dv = 100).
TEST(DeltaRule, FusedCpuResultDoesNotDependOnThreadCount) {
  for (const int64_t dv : {128, 100}) {
    auto in = make_inputs(3, 4, 20, 128, dv, true, true, torch::kFloat32, 41);
    set_cpu_threads(1);
    auto one = delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.09);
    set_cpu_threads(3);
    ASSERT_EQ(kernel_threads(), 3);
    auto three = delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.09);
    set_cpu_threads(1);
    EXPECT_TRUE(torch::equal(one.o, three.o)) << "dv " << dv;
    EXPECT_TRUE(torch::equal(one.s, three.s)) << "dv " << dv;
    auto ref = delta_rule_recurrent(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.09);
    EXPECT_LT(rel_err(one.o, ref.o), kTolF32) << "dv " << dv;
    EXPECT_LT(rel_err(one.s, ref.s), kTolF32) << "dv " << dv;
  }
}

// Packed sequences with parents: a child's outputs and final state equal those of its parent's
// tokens followed by its own, run as one sequence by the torch recurrence (roots from rows of a
// bigger state). Fused loop (float64, float32 with two threads) and the one-at-a-time path.
TEST(DeltaRule, ChildrenContinueTheirParentsFinalState) {
  const std::vector<int64_t> lens = {5, 3, 4, 1, 6, 2, 3};
  const std::vector<int64_t> parents = {-1, -1, 0, 1, 0, -1, 0};
  const int64_t H = 2, dk = 37, dv = 40, N = 24;
  for (auto dt : {torch::kFloat64, torch::kFloat32})
    for (int impl = 0; impl < 2; ++impl) {
      auto in = make_inputs(1, H, N, dk, dv, true, false, dt, 51);
      auto big = torch::randn({4, H, dk, dv}, torch::TensorOptions().dtype(dt)) * 0.3;
      const auto rows = torch::tensor(std::vector<int64_t>{3, 0, 9, 9, 9, 2, 9});  // 9: a child's, unused
      const std::vector<int64_t> root_rows = {3, 0, -1, -1, -1, 2, -1};
      set_cpu_threads(dt == torch::kFloat32 ? 2 : 1);
      auto r = delta_rule_varlen(in.q, in.k, in.v, in.beta, in.g, big, 0.3, lens,
                                 impl == 0 ? DeltaRuleImpl::Auto : DeltaRuleImpl::Chunked, 3,
                                 rows.clamp_max(3), true, &parents);
      set_cpu_threads(1);
      std::vector<int64_t> starts;
      int64_t t = 0;
      for (auto l : lens) starts.push_back(t), t += l;
      const double tol = dt == torch::kFloat64 ? kTolF64 : kTolF32;
      for (std::size_t b = 0; b < lens.size(); ++b) {
        const int64_t p = parents[b];
        const auto root = static_cast<std::size_t>(p < 0 ? static_cast<int64_t>(b) : p);
        auto pick = [&](const torch::Tensor& x) {
          if (p < 0) return x.narrow(2, starts[b], lens[b]);
          return torch::cat({x.narrow(2, starts[root], lens[root]), x.narrow(2, starts[b], lens[b])}, 2);
        };
        auto ref = delta_rule_recurrent(pick(in.q), pick(in.k), pick(in.v), pick(in.beta), pick(in.g),
                                        big.narrow(0, root_rows[root], 1), 0.3);
        const int64_t skip = p < 0 ? 0 : lens[root];
        SCOPED_TRACE(testing::Message() << "sequence " << b << " impl " << impl << " dtype " << dt);
        EXPECT_LT(rel_err(r.o.narrow(2, starts[b], lens[b]), ref.o.narrow(2, skip, lens[b])), tol);
        EXPECT_LT(rel_err(r.s.narrow(0, static_cast<int64_t>(b), 1), ref.s), tol);
      }
    }
}

TEST(DeltaRule, FusedCpuComputesBf16InFloat32) {
  auto in = make_inputs(2, 2, 9, 16, 8, true, true, torch::kFloat32, 11);
  auto bf = [](const torch::Tensor& x) { return x.to(torch::kBFloat16); };
  auto a = delta_rule_recurrent(bf(in.q), bf(in.k), bf(in.v), bf(in.beta), bf(in.g), in.s0, 0.25);
  auto b = delta_rule_recurrent_cpu(bf(in.q), bf(in.k), bf(in.v), bf(in.beta), bf(in.g), in.s0, 0.25);
  EXPECT_EQ(b.o.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(b.s.scalar_type(), torch::kFloat32);
  EXPECT_LT(rel_err(b.s, a.s), kTolF32);
  EXPECT_LT(rel_err(b.o, a.o), 1e-2);  // one bf16 rounding of the output
}

// Rows that start from rows of a bigger state, read in place (repeats allowed), equal running
// them from a gathered copy; without want_state no final state comes back.
TEST(DeltaRule, InitialStateRowsAreReadInPlace) {
  auto in = make_inputs(5, 2, 13, 8, 6, true, false, torch::kFloat64, 21);
  auto big = torch::randn({3, 2, 8, 6}, torch::kFloat64) * 0.3;
  auto rows = torch::tensor(std::vector<int64_t>{2, 0, 2, 1, 0});
  auto gathered = big.index_select(0, rows);
  auto ref = delta_rule_recurrent(in.q, in.k, in.v, in.beta, in.g, gathered, 0.5);
  auto r = delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, in.g, big, 0.5, rows, /*want_state=*/true);
  EXPECT_LT(rel_err(r.o, ref.o), kTolF64);
  EXPECT_LT(rel_err(r.s, ref.s), kTolF64);
  auto before = big.clone();
  auto n = delta_rule(in.q, in.k, in.v, in.beta, in.g, big, 0.5, DeltaRuleImpl::Recurrent, 64, rows, false);
  EXPECT_FALSE(n.s.defined());
  EXPECT_TRUE(torch::equal(n.o, r.o));
  EXPECT_TRUE(torch::equal(big, before));
  // The chunked path gathers the rows itself.
  auto c = delta_rule(in.q, in.k, in.v, in.beta, in.g, big, 0.5, DeltaRuleImpl::Chunked, 4, rows, false);
  EXPECT_LT(rel_err(c.o, ref.o), kTolF64);
}

// Dispatch: with a gradient to compute the recurrence stays in autograd-visible torch ops.
TEST(DeltaRule, RecurrenceWithGradientsUsesTheTorchPath) {
  auto in = make_inputs(1, 2, 6, 4, 4, true, false, torch::kFloat64, 31);
  auto k = in.k.clone().requires_grad_(true);
  auto r = delta_rule(in.q, k, in.v, in.beta, in.g, {}, 0.5, DeltaRuleImpl::Recurrent);
  ASSERT_TRUE(r.o.requires_grad());
  r.o.sum().backward();
  ASSERT_TRUE(k.grad().defined());
  EXPECT_GT(k.grad().abs().sum().item<double>(), 0.0);
}

TEST(DeltaRule, AutoDispatchFollowsFla) {
  // fla uses the recurrence for T <= 64: both paths agree, so check only that it runs and matches.
  auto in = make_inputs(1, 1, 64, 8, 8, false, false, torch::kFloat64, 3);
  auto a = delta_rule(in.q, in.k, in.v, in.beta, {}, {}, 0.5);
  auto b = delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, {}, {}, 0.5);
  EXPECT_TRUE(torch::equal(a.o, b.o));
}

// Above 64 tokens Auto takes chunks under autograd (fla) but the fused recurrence on CPU without
// it; both compute the recurrence.
TEST(DeltaRule, AutoDispatchOnCpuWithoutGradientIsFusedAtAnyLength) {
  auto in = make_inputs(1, 2, 150, 8, 8, true, true, torch::kFloat64, 4);
  auto fused = delta_rule(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.5);
  EXPECT_TRUE(torch::equal(fused.o, delta_rule_recurrent_cpu(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.5).o));
  auto k = in.k.clone().requires_grad_(true);
  auto chunked = delta_rule(in.q, k, in.v, in.beta, in.g, in.s0, 0.5);
  ASSERT_TRUE(chunked.o.requires_grad());
  auto ref = delta_rule_chunked(in.q, in.k, in.v, in.beta, in.g, in.s0, 0.5);
  EXPECT_TRUE(torch::equal(chunked.o.detach(), ref.o));
  EXPECT_LT(rel_err(fused.o, ref.o), kTolF64);
}

}  // namespace
}  // namespace rankprune
