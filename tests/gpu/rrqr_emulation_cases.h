// Cases of the emulated CUDA selection kernel, included by test_gpu_rrqr_emulated.cpp (4 threads
// per block) and test_gpu_rrqr_emulated_256.cpp (256, the real block size).
//
// The CUDA channel-selection kernel (kernels/cuda/rrqr_cuda.cuh) run on the CPU: the same source,
// compiled by the host compiler with stand-ins for the few CUDA built-ins it uses, a block being
// RP_RRQR_CUDA_THREADS std::threads and __syncthreads() a barrier among them. It checks the
// kernel's logic — index arithmetic, strided loops with more or fewer columns than threads, the
// block reductions and their tie-breaking, which barrier guards what (a __syncthreads() that not
// every thread reaches aborts with a message instead of hanging), the hand-off to the host
// assembly — against strong_rrqr_select_many on machines without a GPU. It cannot check the CUDA
// memory model, occupancy or nvcc's code generation: the GPU tests (test_gpu_rrqr.cpp) do that.
//
// Compiled by g++ like rrqr.cpp (no FMA), the greedy phase must reproduce the CPU's roundings
// exactly: R and the pivots are compared bit for bit here.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// --- CUDA stand-ins (only what rrqr_cuda.cuh uses) -------------------------------------------
#define __global__
#define __device__
#define __launch_bounds__(n)
#define __shared__ static  // one block at a time: a function-local static is the block's copy
#define CUDART_INF (std::numeric_limits<double>::infinity())
#ifndef RP_RRQR_CUDA_THREADS
#error "define RP_RRQR_CUDA_THREADS (the emulated block size) and RP_EMULATION_SUITE before including this"
#endif

namespace {
struct EmulatedDim {
  unsigned x = 0;
};
thread_local EmulatedDim threadIdx;
EmulatedDim blockIdx;

// A reusable barrier; waiting longer than a minute means some thread will never arrive.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const unsigned gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return gen != gen_; })) {
      std::fprintf(stderr, "emulated __syncthreads(): not every thread of the block arrived within 60 s "
                           "(a barrier inside a divergent branch?)\n");
      std::abort();
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  unsigned gen_ = 0;
};
Barrier* g_block_barrier = nullptr;
void __syncthreads() { g_block_barrier->wait(); }
}  // namespace

#include "kernels/cuda/rrqr_cuda.cuh"
#include "kernels/rrqr.h"
#include "tests/gpu/gram_problems.h"

namespace rankprune {
namespace {

using namespace gram_problems;

constexpr double kRhoTol = 1e-8;     // as test_gpu_rrqr.cpp: after swaps the exchange matrices differ
constexpr double kLogDetTol = 1e-8;  // |ld_emu - ld_cpu| / max(1, |ld_cpu|)

// rrqr_cuda.cu's run() with host vectors for device buffers and emulated blocks for the launch.
Launch emulate(const Matrix& G, int64_t batch, int64_t n, const std::vector<int64_t>& kvals, double f,
               int max_swaps, std::vector<double>* R_out = nullptr) {
  Launch out;
  out.batch = batch;
  out.n = n;
  out.nk = static_cast<int64_t>(kvals.size());
  out.max_swaps = max_swaps;
  out.record = std::min(max_swaps, kCudaMaxRecordedSwaps);
  const std::size_t B = batch, N = n, NN = N * N, NK = out.nk, BK = B * NK;
  // cudaMalloc'd memory is not initialised: garbage here (NaN, -77) makes a read of anything the
  // kernel has not written show up in the results.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> R(B * NN, nan), X(B * NN, nan), Q(B * NN, nan), vec(B * kVecs * (N + 1), nan),
      rdiag(B * N, nan);
  std::vector<int64_t> perm(B * N, -77), order(B * N, -77), rank(B, -77), kept(BK * N, -77);
  std::vector<unsigned char> want(N + 1, 0);
  for (int64_t k : kvals) want[k] = 1;
  std::vector<int> path(BK, -77), swaps(BK, -77), flags(BK, -77);
  std::vector<double> max_rho2(BK, nan), swap_rho(BK * out.record + 1, nan), cdiag(BK * N, nan);
  Args a{};
  a.G = G.data();
  a.n = n;
  a.stop_tol = kDefaultRankTol;
  a.R = R.data();
  a.X = X.data();
  a.Q = Q.data();
  a.vec = vec.data();
  a.perm = perm.data();
  a.order = order.data();
  a.rank = rank.data();
  a.rdiag = rdiag.data();
  a.want = want.data();
  a.kvals = kvals.data();
  a.nk = out.nk;
  a.f2 = f * f;
  a.max_swaps = max_swaps;
  a.record = out.record;
  a.path = path.data();
  a.swaps = swaps.data();
  a.flags = flags.data();
  a.max_rho2 = max_rho2.data();
  a.swap_rho = swap_rho.data();
  a.cdiag = cdiag.data();
  a.kept = kept.data();
  for (int64_t b = 0; b < batch; ++b) {
    blockIdx.x = static_cast<unsigned>(b);
    Barrier barrier(kThreads);
    g_block_barrier = &barrier;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([t, &a] {
        threadIdx.x = static_cast<unsigned>(t);
        rrqr_kernel(a);
      });
    for (std::thread& th : threads) th.join();
  }
  out.rank = rank;
  out.perm = perm;
  out.rdiag = rdiag;
  out.path = path;
  out.swaps = swaps;
  out.flags = flags;
  out.max_rho2 = max_rho2;
  out.swap_rho = swap_rho;
  out.cdiag = cdiag;
  out.kept = kept;
  if (R_out) *R_out = R;
  return out;
}

// Concatenates the problems, emulates one launch, compares every problem with the CPU.
int expect_emulation_matches(const std::string& name, const std::vector<Matrix>& problems, int64_t n,
                             std::vector<int64_t> ks, double f = kDefaultSwapBound,
                             int max_swaps = kDefaultMaxSwaps) {
  Matrix G;
  for (const Matrix& p : problems) G.insert(G.end(), p.begin(), p.end());
  const int64_t batch = problems.size();
  std::vector<int64_t> kvals(ks);
  std::sort(kvals.begin(), kvals.end());
  kvals.erase(std::unique(kvals.begin(), kvals.end()), kvals.end());
  std::vector<double> R;
  const Launch L = emulate(G, batch, n, kvals, f, max_swaps, &R);
  int total_swaps = 0;
  for (int64_t b = 0; b < batch; ++b) {
    SCOPED_TRACE(cat(name, ": problem ", b, " of ", batch, ", n = ", n, ", f = ", f, ", max_swaps = ", max_swaps));
    const PivotedCholesky pc = pivoted_cholesky(problems[b].data(), n);
    EXPECT_EQ(L.rank[b], pc.rank);
    EXPECT_EQ(std::vector<int64_t>(L.perm.begin() + b * n, L.perm.begin() + (b + 1) * n), pc.perm);
    int differ = 0;
    for (int64_t i = 0; i < n * n; ++i) differ += R[b * n * n + i] != pc.R[i];
    EXPECT_EQ(differ, 0) << "entries of R not bitwise equal to the CPU's";
    const auto cpu = strong_rrqr_select_many(problems[b].data(), n, ks, f, max_swaps);
    for (std::size_t t = 0; t < ks.size(); ++t) {
      const int64_t kk = std::lower_bound(kvals.begin(), kvals.end(), ks[t]) - kvals.begin();
      const StrongRrqrResult e = assemble(L, b, kk, ks[t], f);
      const StrongRrqrResult& r = cpu[t];
      SCOPED_TRACE(cat("k = ", r.k));
      total_swaps += r.swaps;
      EXPECT_EQ(e.k, r.k);
      EXPECT_EQ(e.kept, r.kept);
      EXPECT_EQ(e.swaps, r.swaps);
      EXPECT_EQ(e.hit_swap_limit, r.hit_swap_limit);
      EXPECT_EQ(e.stopped_small_diag, r.stopped_small_diag);
      EXPECT_EQ(e.rank_deficient, r.rank_deficient);
      if (r.swaps == 0) {
        // No exchange matrix involved: the greedy values are the CPU's roundings.
        EXPECT_EQ(e.max_rho, r.max_rho);
        EXPECT_EQ(e.log_det_before, r.log_det_before);
        EXPECT_EQ(e.log_det_after, r.log_det_after);
      } else {
        expect_near_rel(e.max_rho, r.max_rho, kRhoTol, "max_rho");
        EXPECT_EQ(e.log_det_before, r.log_det_before);
        expect_near_rel(e.log_det_after, r.log_det_after, kLogDetTol, "log_det_after");
      }
      EXPECT_EQ(e.swap_rho.size(), r.swap_rho.size());
      for (std::size_t s = 0; s < r.swap_rho.size() && s < e.swap_rho.size(); ++s)
        expect_near_rel(e.swap_rho[s], r.swap_rho[s], kRhoTol, cat("swap_rho[", s, "]"));
    }
  }
  return total_swaps;
}

std::vector<int64_t> all_k(int64_t n) {
  std::vector<int64_t> ks(n);
  for (int64_t k = 1; k <= n; ++k) ks[k - 1] = k;
  return ks;
}

TEST(RP_EMULATION_SUITE, RandomGramsAllK) {
  expect_emulation_matches("random n=3", {random_gram(3, 1), random_gram(3, 2)}, 3, all_k(3));
  expect_emulation_matches("random n=9", {random_gram(9, 3), random_gram(9, 4), random_gram(9, 5)}, 9, all_k(9));
}

TEST(RP_EMULATION_SUITE, SwapsOnRandomAndDecayingGrams) {
  int swaps = 0;
  swaps += expect_emulation_matches("random n=16 rows=18 f=1.01",
                                    {random_gram(16, 6, 18), random_gram(16, 7, 18), random_gram(16, 8, 18)}, 16,
                                    all_k(16), 1.01);
  swaps += expect_emulation_matches("decaying n=13 f=1.05", {decaying_gram(13, 9), decaying_gram(13, 10)}, 13,
                                    {1, 4, 6, 9, 12, 13}, 1.05);
  EXPECT_GT(swaps, 0);
}

TEST(RP_EMULATION_SUITE, KahanSwapsAndLimits) {
  const std::vector<Matrix> kahan = {kahan_gram({0.4}, 24), kahan_gram({0.5, 0.3}, 12)};
  EXPECT_GT(expect_emulation_matches("kahan", kahan, 24, {1, 9, 16, 23, 24}), 0);
  for (int limit : {0, 1, 2}) expect_emulation_matches("kahan limited", kahan, 24, {9, 16, 23}, 1.5, limit);
}

TEST(RP_EMULATION_SUITE, RankDeficientAndZero) {
  expect_emulation_matches("rank 4 and zero", {rank_r_gram(12, 4, 11), rank_r_gram(12, 4, 12), Matrix(144, 0.0)}, 12,
                           {1, 3, 4, 5, 8, 11, 12});
}

// Scale 1e-11: greedy min |diag A| below kMinDiagA. 1e-7: the cheap trace bound fails at k = 24
// and the exact Cholesky check runs on every swap (test_gpu_rrqr.cpp's margins).
TEST(RP_EMULATION_SUITE, SmallScaleStopRules) {
  expect_emulation_matches("tiny", {kahan_gram({0.4}, 24, 1e-11)}, 24, {9, 16, 23});
  EXPECT_GT(expect_emulation_matches("small", {kahan_gram({0.3}, 32, 1e-7), kahan_gram({0.4}, 32, 1e-7)}, 32, {24}),
            0);
}

// Exact ties in the pivot search (bitwise the same on both sides here, so the tie-breaking itself is
// compared): rrqr.cpp's 3 x 3 hand example (step 1 ties 4 = 4: the first slot in the current order
// wins), and duplicate and zero columns. f is large so that no swap meets the twins' tied rho.
TEST(RP_EMULATION_SUITE, PivotTiesBreakLikeTheCpu) {
  const Matrix hand = {4, 2, 0, 2, 5, 3, 0, 3, 9};
  expect_emulation_matches("hand example", {hand}, 3, {1, 2, 3}, 1e6);
  Matrix m = gaussian(40, 10, 14);  // [rows, n] row-major
  for (int64_t r = 0; r < 40; ++r) {
    m[r * 10 + 7] = m[r * 10 + 2];  // twins
    m[r * 10 + 4] = m[r * 10 + 2];
    m[r * 10 + 9] = 0;  // a zero column
  }
  const Matrix g = gram(m, 40, 10);
  ASSERT_EQ(pivoted_cholesky(g.data(), 10).rank, 7);
  expect_emulation_matches("twins and zeros", {g}, 10, all_k(10), 1e6);
}

// Repeated ks in any order map onto the distinct ones the kernel computes.
TEST(RP_EMULATION_SUITE, RepeatedKs) {
  expect_emulation_matches("repeated", {low_rank_noisy_gram(16, 4, 13)}, 16, {12, 3, 16, 8, 3, 1}, 1.05);
}

}  // namespace
}  // namespace rankprune
