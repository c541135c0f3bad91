// gram_accumulate_cuda (kernels/cuda/gram_cuda.h) against a float64 CPU reference of the same
// statistic as worker/calibration.cpp's dsyrk (G_h += Q_h^T Q_h + K_h^T K_h), from the same f32 or
// bf16 inputs, accumulated onto a non-zero symmetric G, with the default chunk and a forced small
// one; plus exact symmetry and run-to-run bitwise determinism. The input checks run without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <climits>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/gram_cuda.h"
#include "tests/gpu/gpu_testing.h"
#include "tests/gpu/gpu_tensors.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

using cuda::CudaScalar;

// Named tolerance, relative to max |G_ref|. Each entry on each side is a float64 sum of
// n = 2 tokens + 1 exact terms (G0_ij and products of f32/bf16 values, exact in float64), so in any
// summation order it is within (n - 1) (eps / 2) sum |terms| of the exact value, and by
// Cauchy-Schwarz sum |terms| <= sqrt(G_ii G_jj) <= max |G|. The two sides then differ by at most
// (n - 1) eps max |G|; the tolerance allows twice that.
double gram_tolerance(int64_t tokens) {
  return 2.0 * static_cast<double>(2 * tokens + 1) * std::numeric_limits<double>::epsilon();
}

torch::ScalarType torch_type(CudaScalar s) { return s == CudaScalar::F32 ? torch::kFloat32 : torch::kBFloat16; }

// Runs the kernel on device copies of q, k (any dtype) and G0; returns G.
torch::Tensor gram_on_gpu(const torch::Tensor& q, const torch::Tensor& k, CudaScalar dt, const torch::Tensor& G0,
                          int64_t chunk) {
  const int64_t tokens = q.size(0), H = q.size(1), d = q.size(2);
  auto dq = test::to_device(q), dk = test::to_device(k), dG = test::to_device(G0);
  cuda::gram_accumulate_cuda(dq.get(), dk.get(), dt, tokens, H, d, reinterpret_cast<double*>(dG.get()), nullptr,
                             chunk);
  return test::to_host(dG.get(), {H, d, d}, torch::kFloat64);
}

TEST(GpuGram, MatchesFloat64Reference) {
  RP_REQUIRE_GPU();
  for (const CudaScalar dt : {CudaScalar::F32, CudaScalar::BF16})
    for (const int64_t tokens : {1, 7, 1000, 4097})
      for (const int64_t H : {1, 4})
        for (const int64_t d : {16, 64, 128}) {
          SCOPED_TRACE(cat("dtype ", cuda::cuda_scalar_name(dt), " tokens ", tokens, " heads ", H, " d ", d));
          torch::manual_seed(tokens * 1000 + H * 100 + d);
          const auto q = torch::randn({tokens, H, d}).to(torch_type(dt));
          const auto k = (0.5 * torch::randn({tokens, H, d})).to(torch_type(dt));
          const auto a = torch::randn({H, d, d}, torch::kFloat64);
          const auto G0 = torch::bmm(a, a.transpose(1, 2));  // symmetric, as the contract requires
          // Reference from the same (rounded) values: [H, tokens, d] per head.
          const auto qh = q.to(torch::kFloat64).permute({1, 0, 2}), kh = k.to(torch::kFloat64).permute({1, 0, 2});
          const auto ref = G0 + torch::bmm(qh.transpose(1, 2), qh) + torch::bmm(kh.transpose(1, 2), kh);
          const double tol = gram_tolerance(tokens);
          // The default chunk (all tokens at once here), and chunks of 333 (several for the
          // longer inputs, a short last one).
          for (const int64_t chunk : {int64_t(0), int64_t(333)}) {
            SCOPED_TRACE(cat("chunk_tokens ", chunk));
            const auto G = gram_on_gpu(q, k, dt, G0, chunk);
            const double err = (G - ref).abs().max().item<double>() / ref.abs().max().item<double>();
            EXPECT_LE(err, tol) << "max |G - ref| / max |ref|";
            EXPECT_TRUE(torch::equal(G, G.transpose(1, 2))) << "G is not exactly symmetric";
            const auto again = gram_on_gpu(q, k, dt, G0, chunk);
            EXPECT_TRUE(torch::equal(G, again)) << "two runs differ";
          }
        }
}

TEST(GpuGram, AccumulatesOverCalls) {
  RP_REQUIRE_GPU();
  // Two calls on halves of the tokens add up to one call on all of them (to the tolerance: the
  // summation order differs), starting from zeros.
  const int64_t tokens = 1000, H = 4, d = 64;
  torch::manual_seed(7);
  const auto q = torch::randn({tokens, H, d}), k = torch::randn({tokens, H, d});
  const auto zeros = torch::zeros({H, d, d}, torch::kFloat64);
  const auto whole = gram_on_gpu(q, k, CudaScalar::F32, zeros, 0);
  const auto first = gram_on_gpu(q.narrow(0, 0, 400), k.narrow(0, 0, 400), CudaScalar::F32, zeros, 0);
  const auto both = gram_on_gpu(q.narrow(0, 400, 600), k.narrow(0, 400, 600), CudaScalar::F32, first, 0);
  const double m = whole.abs().max().item<double>();
  EXPECT_LE((both - whole).abs().max().item<double>() / m, gram_tolerance(tokens));
}

// ---- host-side checks: no device needed, no CUDA call made -------------------------------------

using testing::expect_input_error;  // tests/testing/testing.h

TEST(GpuGramHost, RejectsBadArguments) {
  // Never dereferenced: every call below must fail its host-side check first.
  float fake[4] = {};
  double fakeG[4] = {};
  const void* p = fake;
  auto call = [&](const void* q, const void* k, CudaScalar dt, int64_t tokens, int64_t H, int64_t d, double* G,
                  int64_t chunk = 0) { cuda::gram_accumulate_cuda(q, k, dt, tokens, H, d, G, nullptr, chunk); };
  expect_input_error([&] { call(p, p, CudaScalar::F32, -1, 4, 16, fakeG); }, {"tokens must be >= 0"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, 0, 16, fakeG); }, {"heads must be >= 1"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, 4, 0, fakeG); }, {"head dim d must be >= 1"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, 4, 16, nullptr); }, {"G is null"});
  expect_input_error([&] { call(nullptr, p, CudaScalar::F32, 8, 4, 16, fakeG); }, {"null q"});
  expect_input_error([&] { call(p, nullptr, CudaScalar::BF16, 8, 4, 16, fakeG); }, {"null k"});
  expect_input_error([&] { call(p, p, static_cast<CudaScalar>(7), 8, 4, 16, fakeG); }, {"unsupported dtype"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, int64_t(1) << 20, 4096, fakeG); }, {"int range"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, 4, 16, fakeG, -5); }, {"chunk_tokens must be >= 0"});
  expect_input_error([&] { call(p, p, CudaScalar::F32, 8, 4, 16, fakeG, int64_t(INT_MAX)); }, {"chunk_tokens"});
}

TEST(GpuGramHost, ZeroTokensIsANoOp) {
  // Nothing to add: returns before any CUDA call (so it runs without a device), G untouched.
  double G[4] = {1, 2, 2, 5};
  cuda::gram_accumulate_cuda(nullptr, nullptr, CudaScalar::BF16, 0, 1, 2, G, nullptr);
  EXPECT_EQ(G[0], 1.0);
  EXPECT_EQ(G[1], 2.0);
  EXPECT_EQ(G[3], 5.0);
}

TEST(GpuGramHost, DefaultChunkBoundsTheWorkspace) {
  // 2 * chunk * heads * d * 8 bytes <= kGramWorkspaceBytes, at least one token.
  EXPECT_EQ(cuda::gram_default_chunk_tokens(16, 128), 2048);  // DeltaNet-1.3B: 64 MiB / 32 KiB
  for (const auto& [H, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 16}, {4, 64}, {16, 128}, {32, 256}}) {
    const int64_t c = cuda::gram_default_chunk_tokens(H, d);
    EXPECT_GE(c, 1);
    EXPECT_LE(static_cast<std::size_t>(2 * c * H * d * 8), cuda::kGramWorkspaceBytes) << H << " heads of " << d;
  }
  EXPECT_EQ(cuda::gram_default_chunk_tokens(1, int64_t(1) << 30), 1);
}

}  // namespace
}  // namespace rankprune
