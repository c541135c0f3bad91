// delta_rule_recurrent_cuda (kernels/cuda/delta_rule_cuda.h) against delta_rule_recurrent run in
// float64 on the same inputs (the f32 values, or the bf16-rounded ones, widened exactly): outputs
// and final state, gated and ungated, with and without an initial state, lengths around the
// staging tile and fla's chunk (1, 63, 64, 65, 300), square and non-square heads; plus odd head
// sizes, the final state not wanted, in place (s_out == s0), T = 0, and bitwise determinism. The
// input checks run without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/delta_rule_cuda.h"
#include "kernels/delta_rule.h"
#include "tests/gpu/gpu_testing.h"
#include "tests/gpu/gpu_tensors.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

using cuda::CudaScalar;

// Named tolerances, as max |a - ref| / max(1, max |ref|) (test::rel_err).
// The kernel keeps the state in float32. Each step rounds the state at O(eps32) relative (a few
// FMAs per entry plus the dk-term dot products feeding u); the update S -> (I - beta k k^T) S is
// non-expansive (||k|| = 1, 0 <= beta <= 1) and the decay exp(g) <= 1, so earlier rounding is
// carried forward without amplification but does accumulate: at most linearly in T (a random walk,
// ~sqrt(T), in practice). Hence a base plus a per-step allowance (T = 300: 4e-5). The fused CPU
// loop in float32 (delta_rule_recurrent_cpu) stays more than 10x under it on this file's cases and
// up to T = 1000; a wrong index or a missing barrier shows as errors of 1e-2 and more.
constexpr double kTolF32Base = 1e-5;
constexpr double kTolF32PerStep = 1e-7;
// bf16 outputs are the float32 result rounded to nearest once: at most 2^-8 relative (8
// significant bits) on top of the float32 state error.
constexpr double kTolBf16Rounding = 1.0 / 256;

double state_tolerance(int64_t T) { return kTolF32Base + kTolF32PerStep * static_cast<double>(T); }

torch::ScalarType torch_type(CudaScalar s) { return s == CudaScalar::F32 ? torch::kFloat32 : torch::kBFloat16; }

struct Inputs {
  torch::Tensor q, k, v, beta, g, s0;  // activations in the kernel's dtype; s0 float32
};

// As the models feed the recurrence: L2-normalised q and k, beta in [0, 1), g <= 0.
Inputs make_inputs(int64_t B, int64_t H, int64_t T, int64_t dk, int64_t dv, bool gated, bool with_state,
                   CudaScalar dt, uint64_t seed) {
  torch::manual_seed(seed);
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(-1);
  const auto ty = torch_type(dt);
  Inputs in;
  in.q = F::normalize(torch::randn({B, H, T, dk}), unit).to(ty);
  in.k = F::normalize(torch::randn({B, H, T, dk}), unit).to(ty);
  in.v = torch::randn({B, H, T, dv}).to(ty);
  in.beta = torch::rand({B, H, T}).to(ty);
  if (gated) in.g = (-torch::rand({B, H, T}) * 0.5).to(ty);
  if (with_state) in.s0 = torch::randn({B, H, dk, dv}) * 0.3;
  return in;
}

torch::Tensor f64(const torch::Tensor& t) { return t.defined() ? t.to(torch::kFloat64) : t; }

DeltaRuleResult reference(const Inputs& in, double scale) {
  return delta_rule_recurrent(f64(in.q), f64(in.k), f64(in.v), f64(in.beta), f64(in.g), f64(in.s0), scale);
}

// Runs the kernel on device copies, o and the final state poisoned with NaN first. want_state:
// return the final state; in_place: s_out = s0.
DeltaRuleResult run_gpu(const Inputs& in, CudaScalar dt, double scale, bool want_state = true,
                        bool in_place = false) {
  const int64_t B = in.q.size(0), H = in.q.size(1), T = in.q.size(2), dk = in.q.size(3), dv = in.v.size(3);
  auto q = test::to_device(in.q), k = test::to_device(in.k), v = test::to_device(in.v);
  auto beta = test::to_device(in.beta), g = test::to_device(in.g), s0 = test::to_device(in.s0);
  auto o = test::device_poisoned({B, H, T, dv}, torch_type(dt));
  auto s = in_place ? cuda::DeviceBuffer<char>() : test::device_poisoned({B, H, dk, dv}, torch::kFloat32);
  cuda::DeltaRuleCudaArgs a;
  a.q = q.get(), a.k = k.get(), a.v = v.get(), a.beta = beta.get(), a.g = g.get();
  a.s0 = reinterpret_cast<const float*>(s0.get());
  a.dtype = dt;
  a.B = B, a.H = H, a.T = T, a.dk = dk, a.dv = dv;
  a.scale = scale;
  a.o = o.get();
  a.s_out = !want_state ? nullptr : reinterpret_cast<float*>(in_place ? s0.get() : s.get());
  cuda::delta_rule_recurrent_cuda(a, nullptr);
  DeltaRuleResult r;
  r.o = test::to_host(o.get(), {B, H, T, dv}, torch_type(dt));
  if (want_state) r.s = test::to_host(a.s_out, {B, H, dk, dv}, torch::kFloat32);
  return r;
}

void expect_close(const DeltaRuleResult& got, const DeltaRuleResult& ref, CudaScalar dt, int64_t T) {
  const double tol_s = state_tolerance(T);
  const double tol_o = tol_s + (dt == CudaScalar::BF16 ? kTolBf16Rounding : 0.0);
  EXPECT_LE(test::rel_err(got.o, ref.o), tol_o) << "output o";
  if (got.s.defined()) {
    EXPECT_LE(test::rel_err(got.s, ref.s), tol_s) << "final state";
  }
}

TEST(GpuDeltaRule, MatchesFloat64Recurrence) {
  RP_REQUIRE_GPU();
  const std::vector<std::pair<int64_t, int64_t>> heads = {{16, 16}, {64, 64}, {128, 128}, {64, 128}, {128, 16}};
  uint64_t seed = 1;
  for (const CudaScalar dt : {CudaScalar::F32, CudaScalar::BF16})
    for (const int64_t T : {1, 63, 64, 65, 300})
      for (const auto& [dk, dv] : heads)
        for (const bool gated : {false, true})
          for (const bool with_state : {false, true}) {
            SCOPED_TRACE(cat("dtype ", cuda::cuda_scalar_name(dt), " B 2 H 3 T ", T, " dk ", dk, " dv ", dv,
                             gated ? " gated" : " ungated", with_state ? " with s0" : " from zeros"));
            const auto in = make_inputs(2, 3, T, dk, dv, gated, with_state, dt, seed++);
            const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
            expect_close(run_gpu(in, dt, scale), reference(in, scale), dt, T);
          }
}

TEST(GpuDeltaRule, OddHeadSizes) {
  RP_REQUIRE_GPU();
  // dk not a multiple of 32 (padded state rows), dv not a multiple of the 16-column slice (idle
  // warps), the largest dk = dv = 256, and 1 x 1 heads.
  const std::vector<std::pair<int64_t, int64_t>> heads = {{1, 1}, {33, 17}, {200, 40}, {256, 256}, {100, 250}};
  uint64_t seed = 1000;
  for (const CudaScalar dt : {CudaScalar::F32, CudaScalar::BF16})
    for (const auto& [dk, dv] : heads) {
      SCOPED_TRACE(cat("dtype ", cuda::cuda_scalar_name(dt), " B 1 H 2 T 65 dk ", dk, " dv ", dv, " gated, s0"));
      const auto in = make_inputs(1, 2, 65, dk, dv, true, true, dt, seed++);
      const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
      expect_close(run_gpu(in, dt, scale), reference(in, scale), dt, 65);
    }
}

TEST(GpuDeltaRule, StateOptionalInPlaceAndDeterministic) {
  RP_REQUIRE_GPU();
  const auto in = make_inputs(2, 2, 130, 64, 48, true, true, CudaScalar::BF16, 77);
  const double scale = 0.125;
  const auto ref = reference(in, scale);
  const auto full = run_gpu(in, CudaScalar::BF16, scale);
  expect_close(full, ref, CudaScalar::BF16, 130);
  // Final state not wanted: the same outputs, bitwise.
  const auto no_state = run_gpu(in, CudaScalar::BF16, scale, /*want_state=*/false);
  EXPECT_TRUE(torch::equal(no_state.o, full.o));
  // In place (s_out == s0): the same outputs and state, bitwise.
  const auto in_place = run_gpu(in, CudaScalar::BF16, scale, true, /*in_place=*/true);
  EXPECT_TRUE(torch::equal(in_place.o, full.o));
  EXPECT_TRUE(torch::equal(in_place.s, full.s));
  // Run to run.
  const auto again = run_gpu(in, CudaScalar::BF16, scale);
  EXPECT_TRUE(torch::equal(again.o, full.o));
  EXPECT_TRUE(torch::equal(again.s, full.s));
}

TEST(GpuDeltaRule, ZeroTokensReturnsTheInitialState) {
  RP_REQUIRE_GPU();
  const auto in = make_inputs(2, 3, 0, 32, 24, false, true, CudaScalar::F32, 5);
  const auto got = run_gpu(in, CudaScalar::F32, 1.0);
  EXPECT_TRUE(torch::equal(got.s, in.s0));
  const auto fresh = make_inputs(2, 3, 0, 32, 24, false, false, CudaScalar::F32, 5);
  EXPECT_TRUE(torch::equal(run_gpu(fresh, CudaScalar::F32, 1.0).s, torch::zeros({2, 3, 32, 24})));
}

// ---- host-side checks: no device needed, no CUDA call made -------------------------------------

using testing::expect_input_error;  // tests/testing/testing.h

TEST(GpuDeltaRuleHost, RejectsBadArguments) {
  // Never dereferenced: every call below must fail its host-side check first.
  float fake[4] = {};
  auto valid = [&] {
    cuda::DeltaRuleCudaArgs a;
    a.q = a.k = a.v = a.beta = fake;
    a.o = fake;
    a.dtype = CudaScalar::F32;
    a.B = 2, a.H = 3, a.T = 10, a.dk = 64, a.dv = 64;
    a.scale = 0.125;
    return a;
  };
  auto with = [&](auto&& edit) {
    auto a = valid();
    edit(a);
    return [a] { cuda::delta_rule_recurrent_cuda(a, nullptr); };
  };
  using A = cuda::DeltaRuleCudaArgs;
  expect_input_error(with([](A& a) { a.dk = 0; }), {"dk must be in [1, 256], got 0"});
  expect_input_error(with([](A& a) { a.dk = 257; }), {"dk must be in [1, 256], got 257"});
  expect_input_error(with([](A& a) { a.dv = 0; }), {"dv must be in [1, 256]"});
  expect_input_error(with([](A& a) { a.dv = 300; }), {"dv must be in [1, 256], got 300"});
  expect_input_error(with([](A& a) { a.T = -1; }), {"must be >= 0"});
  expect_input_error(with([](A& a) { a.B = -2; }), {"must be >= 0"});
  expect_input_error(with([](A& a) { a.dtype = static_cast<CudaScalar>(3); }), {"unsupported dtype"});
  expect_input_error(with([](A& a) { a.q = nullptr; }), {"null pointer"});
  expect_input_error(with([](A& a) { a.beta = nullptr; }), {"null pointer"});
  expect_input_error(with([](A& a) { a.o = nullptr; }), {"o is null"});
  expect_input_error(with([](A& a) { a.scale = std::numeric_limits<double>::quiet_NaN(); }), {"scale must be finite"});
  expect_input_error(with([](A& a) { a.B = int64_t(1) << 30, a.H = int64_t(1) << 10; }), {"blocks"});
}

TEST(GpuDeltaRuleHost, EmptyProblemsAreNoOps) {
  // No (batch, head), or no tokens and no state wanted: returns before any CUDA call, so this runs
  // without a device (null pointers are fine: nothing is read or written).
  cuda::DeltaRuleCudaArgs a;
  a.B = 0, a.H = 16, a.T = 2048, a.dk = 128, a.dv = 128;
  EXPECT_NO_THROW(cuda::delta_rule_recurrent_cuda(a, nullptr));
  a.B = 8, a.T = 0;
  EXPECT_NO_THROW(cuda::delta_rule_recurrent_cuda(a, nullptr));
}

}  // namespace
}  // namespace rankprune
