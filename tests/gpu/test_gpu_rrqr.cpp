// CUDA channel selection (kernels/cuda/rrqr_cuda.h) against its CPU twin kernels/rrqr.h, and the
// CUDA symmetric eigendecomposition (kernels/cuda/eigh_cuda.h) against LAPACK's dsyevd.
//
// Three kinds of cases:
//  - GpuRrqr.* / GpuEigh.*: parity on a device; each starts with RP_REQUIRE_GPU(), so a machine
//    without one reports them skipped.
//  - GpuRrqrHost.* / GpuEighHost.*: the input errors, which the CUDA entry points raise on the host
//    before any CUDA call: they run everywhere.
//  - GpuRrqrInputs.*: the test problems themselves, on the CPU: each is free of near-ties and
//    exercises what its name says (swaps, swap limit, rank deficiency, ...). Runs everywhere.
//
// Near-ties. The GPU repeats the CPU's roundings in the greedy phase, but its swap phase starts
// from an exchange matrix computed differently (no LAPACK), so values differ by ~1e-13 relative
// there, and an argmax whose two best candidates are closer than that, or a max rho that close to
// f, may go the other way on the two devices — both answers correct. The problems here are checked
// on the CPU to have every discrete decision (pivot, rank cut, rho vs f, the argmax of each swap)
// decided by more than kTieGap; random problems that are not are replaced by the next seed
// (deterministically), constructed ones must pass.
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <iostream>
#include <iterator>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/eigh_cuda.h"
#include "kernels/cuda/rrqr_cuda.h"
#include "kernels/rrqr.h"
#include "tests/gpu/gpu_testing.h"
#include "tests/gpu/gram_problems.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

// Tolerances (float64 throughout).
constexpr double kTieGap = 1e-9;      // relative margin every discrete decision must have (see above)
constexpr double kFactorTol = 1e-12;  // |R_gpu - R_cpu|_max / R_00 (the same roundings: expect 0)
// rho after swaps comes from exchange matrices built differently on the two sides: they agree to
// ~eps * cond(A), and the Kahan cases have cond(A) ~1e4.
constexpr double kRhoTol = 1e-8;      // |rho_gpu - rho_cpu| / max(1, rho_cpu), max_rho and swap_rho
// log |det A| after swaps: the GPU's own Cholesky of G_KK vs LAPACK's dpotrf, both backward
// stable on a matrix of condition up to ~1e8 here.
constexpr double kLogDetTol = 1e-8;   // |ld_gpu - ld_cpu| / max(1, |ld_cpu|)
constexpr double kEvalTol = 1e-11;    // |lambda_gpu - lambda_lapack| / max |lambda|
constexpr double kEvecMinGap = 1e-4;  // eigenvectors compared only where the gap / max |lambda| is above
constexpr double kEvecTol = 1e-9;     // |v_gpu -+ v_lapack|_max for those
constexpr double kOrthoTol = 1e-11;   // |V^T V - I|_max
constexpr double kResidualTol = 1e-11;  // |A V - V diag(lambda)|_max / max |lambda|

constexpr double kInf = std::numeric_limits<double>::infinity();

using namespace gram_problems;

// ---------------------------------------------------------------------------------------------
// The near-tie guard (see the top of the file).

// rho_ij for every kept i and discarded j of the kept set `kept` (any order), from G alone:
// Ginv = G_KK^{-1}, W = Ginv G_KD, S_jj = G_jj - G_jK W_j; and trace Ginv. Empty if G_KK is not
// numerically positive definite.
struct RhoState {
  std::vector<double> rho;  // descending
  double trace_ginv = 0;
};
RhoState all_rho(const Matrix& G, int64_t n, const std::vector<int64_t>& kept) {
  const int64_t k = kept.size();
  std::vector<char> in(n, 0);
  for (int64_t c : kept) in[c] = 1;
  std::vector<int64_t> disc;
  for (int64_t c = 0; c < n; ++c)
    if (!in[c]) disc.push_back(c);
  const int64_t d = disc.size();
  Matrix ginv(k * k);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) ginv[a * k + b] = G[kept[a] * n + kept[b]];
  RhoState out;
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', k, ginv.data(), k) != 0 ||
      LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', k, ginv.data(), k) != 0)
    return out;
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < a; ++b) ginv[a * k + b] = ginv[b * k + a];
  for (int64_t a = 0; a < k; ++a) out.trace_ginv += std::max(ginv[a * k + a], 0.0);
  Matrix w(k * d, 0.0);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b)
      for (int64_t j = 0; j < d; ++j) w[a * d + j] += ginv[a * k + b] * G[kept[b] * n + disc[j]];
  out.rho.reserve(k * d);
  for (int64_t j = 0; j < d; ++j) {
    double s = G[disc[j] * n + disc[j]];
    for (int64_t a = 0; a < k; ++a) s -= G[disc[j] * n + kept[a]] * w[a * d + j];
    for (int64_t a = 0; a < k; ++a)
      out.rho.push_back(std::sqrt(w[a * d + j] * w[a * d + j] + std::max(s, 0.0) * std::max(ginv[a * k + a], 0.0)));
  }
  std::sort(out.rho.begin(), out.rho.end(), std::greater<double>());
  return out;
}

// min diag of the Cholesky factor of G_KK with K = order[0, k) in that order (0 if it fails).
double min_diag_in_order(const Matrix& G, int64_t n, const std::vector<int64_t>& order, int64_t k) {
  Matrix a(k * k);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) a[i * k + j] = G[order[i] * n + order[j]];
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', k, a.data(), k) != 0) return 0;
  double m = kInf;
  for (int64_t i = 0; i < k; ++i) m = std::min(m, a[i * k + i]);
  return m;
}

bool close_relative(double a, double b) { return std::fabs(a - b) <= kTieGap * std::max(std::fabs(a), std::fabs(b)); }

std::vector<int64_t> sorted_prefix(const std::vector<int64_t>& order, int64_t k) {
  std::vector<int64_t> kept(order.begin(), order.begin() + k);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// "" when every discrete decision of strong_rrqr_select_many(G, n, ks, f, max_swaps) on the CPU
// has a margin above kTieGap; else what is near-tied. The decisions, as rrqr.cpp takes them:
// each pivot and the rank cut; per k the greedy max rho vs f and min |diag A| vs kMinDiagA; then
// per state of the swap loop max rho vs f, 1 / sqrt(trace Ginv) and (where that bound fails) the
// exact min |diag A| vs kMinDiagA, and the argmax (the two largest rho). The states are replayed
// from the CPU's own results with max_swaps = 0, 1, 2, ... (the slot order follows from which
// column left and which entered) and rho is recomputed from G: one O(n^3) step per swap.
std::string near_tie(const Matrix& G, int64_t n, const std::vector<int64_t>& ks, double f, int max_swaps) {
  const PivotedCholesky pc = pivoted_cholesky(G.data(), n);
  double dmax = 0;
  for (int64_t j = 0; j < n; ++j) dmax = std::max(dmax, G[j * n + j]);
  const double stop = kDefaultRankTol * dmax;
  // Pivots: at step j the candidates are the columns in slots >= j (final order), with residual
  // G_ll - sum_{q < j} R_ql^2.
  for (int64_t j = 0; j <= std::min(pc.rank, n - 1); ++j) {
    double first = -kInf, second = -kInf;
    for (int64_t l = j; l < n; ++l) {
      double r = G[pc.perm[l] * n + pc.perm[l]];
      for (int64_t q = 0; q < j; ++q) r -= pc.R[q * n + l] * pc.R[q * n + l];
      if (r > first) {
        second = first;
        first = r;
      } else {
        second = std::max(second, r);
      }
    }
    if (j < pc.rank) {
      if (second > -kInf && close_relative(first, second))
        return cat("pivot ", j, ": residuals ", first, " ~ ", second);
      if (close_relative(first, stop)) return cat("pivot ", j, ": residual ", first, " ~ the rank cut ", stop);
    } else if (first != 0 && close_relative(first, stop)) {
      return cat("rank cut at ", j, ": residual ", first, " ~ ", stop);
    }
  }
  for (int64_t k : ks) {
    if (k > pc.rank || k == n) continue;
    double ge_min_diag = kInf;
    for (int64_t m = 0; m < k; ++m) ge_min_diag = std::min(ge_min_diag, pc.R[m * n + m]);
    std::vector<int64_t> order(pc.perm);
    for (int s = 0;; ++s) {
      const RhoState st = all_rho(G, n, sorted_prefix(order, k));
      if (st.rho.empty()) return cat("k = ", k, ", state ", s, ": G_KK not positive definite");
      const double max_rho = st.rho[0];
      if (close_relative(max_rho, f)) return cat("k = ", k, ", state ", s, ": max rho ", max_rho, " ~ f");
      if (!(max_rho > f) || s == max_swaps) break;
      if (s == 0) {
        if (close_relative(ge_min_diag, kMinDiagA)) return cat("k = ", k, ": greedy min |diag A| ~ kMinDiagA");
        if (!(ge_min_diag > kMinDiagA)) break;
      }
      const double bound = 1 / std::sqrt(st.trace_ginv);
      if (close_relative(bound, kMinDiagA))
        return cat("k = ", k, ", state ", s, ": 1 / sqrt(trace Ginv) ~ kMinDiagA");
      if (!(bound > kMinDiagA)) {
        const double md = min_diag_in_order(G, n, order, k);
        if (close_relative(md, kMinDiagA)) return cat("k = ", k, ", state ", s, ": min |diag A| ~ kMinDiagA");
        if (!(md > kMinDiagA)) break;
      }
      if (st.rho.size() >= 2 && close_relative(st.rho[0], st.rho[1]))
        return cat("k = ", k, ", swap ", s + 1, ": rho ", st.rho[0], " ~ ", st.rho[1]);
      // The CPU's next state: which column left the kept set and which entered.
      const StrongRrqrResult next = strong_rrqr_select_many(G.data(), pc, {k}, f, s + 1)[0];
      if (next.swaps != s + 1) return cat("k = ", k, ": the replay disagrees with the CPU at swap ", s + 1);
      const std::vector<int64_t> before = sorted_prefix(order, k);
      std::vector<int64_t> left, entered;
      std::set_difference(before.begin(), before.end(), next.kept.begin(), next.kept.end(),
                          std::back_inserter(left));
      std::set_difference(next.kept.begin(), next.kept.end(), before.begin(), before.end(),
                          std::back_inserter(entered));
      if (left.size() != 1 || entered.size() != 1) return cat("k = ", k, ": swap ", s + 1, " is not one exchange");
      std::iter_swap(std::find(order.begin(), order.end(), left[0]),
                     std::find(order.begin(), order.end(), entered[0]));
    }
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Test problems: `batch` Grams of one n and the selection arguments.

struct Case {
  std::string name;
  int64_t n = 0;
  int64_t batch = 0;
  Matrix G;  // [batch, n, n]
  std::vector<int64_t> ks;
  double f = kDefaultSwapBound;
  int max_swaps = kDefaultMaxSwaps;
  int replaced = 0;  // random problems replaced for near-ties
};

const double* problem(const Case& c, int64_t b) { return c.G.data() + b * c.n * c.n; }
Matrix problem_copy(const Case& c, int64_t b) { return Matrix(problem(c, b), problem(c, b) + c.n * c.n); }

template <typename Make>
Case random_case(std::string name, int64_t n, int64_t batch, std::vector<int64_t> ks, double f, uint64_t seed0,
                 Make make) {
  Case c{std::move(name), n, batch, {}, std::move(ks), f};
  for (int64_t b = 0; b < batch; ++b) {
    for (uint64_t attempt = 0;; ++attempt) {
      Matrix g = make(seed0 + 1000 * static_cast<uint64_t>(b) + 100000 * attempt);
      const std::string tie = near_tie(g, n, c.ks, c.f, c.max_swaps);
      if (std::getenv("RP_DEBUG_TIES") && !tie.empty())  // which decision a replaced seed had near-tied
        std::cout << c.name << " problem " << b << ": " << tie << "\n";
      if (tie.empty()) {
        c.G.insert(c.G.end(), g.begin(), g.end());
        break;
      }
      ++c.replaced;
      if (attempt == 20) {
        ADD_FAILURE() << c.name << ": no tie-free problem " << b << " in 21 seeds";
        c.G.insert(c.G.end(), g.begin(), g.end());
        break;
      }
    }
  }
  return c;
}

std::vector<int64_t> all_k(int64_t n) {
  std::vector<int64_t> ks(n);
  std::iota(ks.begin(), ks.end(), int64_t{1});
  return ks;
}

// rows = 0: 4n rows.
Case random_case_n(int64_t n, int64_t batch, double f = kDefaultSwapBound, int64_t rows = 0) {
  std::vector<int64_t> ks = n <= 8 ? all_k(n) : std::vector<int64_t>{1, 2, n / 4, n / 2, 3 * n / 4, n - 1, n};
  return random_case(cat("random n=", n, " rows=", rows == 0 ? 4 * n : rows, " f=", f), n, batch, ks, f, 100 + n,
                     [n, rows](uint64_t s) { return random_gram(n, s, rows); });
}

Case decaying_case(int64_t n, int64_t batch, double f, std::vector<int64_t> ks) {
  return random_case(cat("decaying n=", n, " f=", f), n, batch, std::move(ks), f,
                     200 + n, [n](uint64_t s) { return decaying_gram(n, s); });
}

Case low_rank_noisy_case(int64_t n, int64_t batch, double f) {
  return random_case("low rank + noise n=" + std::to_string(n), n, batch, {1, n / 8, n / 4, n / 2, n - 1, n}, f,
                     300 + n, [n](uint64_t s) { return low_rank_noisy_gram(n, n / 4, s); });
}

// Rank n / 4 (3 for n = 8) with ks on both sides of the rank, plus one zero matrix.
Case rank_deficient_case(int64_t n, int64_t batch) {
  const int64_t r = n <= 8 ? 3 : n / 4;
  Case c = random_case("rank " + std::to_string(r) + " n=" + std::to_string(n), n, batch - 1,
                       {1, r - 1, r, r + 1, n / 2, n - 1, n}, kDefaultSwapBound, 400 + n,
                       [n, r](uint64_t s) { return rank_r_gram(n, r, s); });
  c.G.insert(c.G.end(), n * n, 0.0);
  c.batch = batch;
  return c;
}

// Kahan blocks: greedy keeps the natural order and is not strong, so every k >= 9 needs swaps.
Case kahan_case(double scale = 1.0, int max_swaps = kDefaultMaxSwaps) {
  Case c;
  c.name = cat("kahan scale=", scale, " max_swaps=", max_swaps);
  c.n = 32;
  c.max_swaps = max_swaps;
  c.ks = {1, 9, 16, 24, 31, 32};
  for (const std::vector<double>& cs :
       std::vector<std::vector<double>>{{0.3}, {0.4}, {0.5, 0.4}, {0.5, 0.4, 0.3, 0.2}, {0.55, 0.45, 0.35, 0.25}}) {
    const Matrix g = kahan_gram(cs, 32 / static_cast<int64_t>(cs.size()), scale);
    c.G.insert(c.G.end(), g.begin(), g.end());
    ++c.batch;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Parity.

void expect_same_factor(const Case& c) {
  const std::vector<PivotedCholesky> gpu = pivoted_cholesky_batched_cuda(c.G.data(), c.batch, c.n);
  ASSERT_EQ(static_cast<int64_t>(gpu.size()), c.batch);
  for (int64_t b = 0; b < c.batch; ++b) {
    SCOPED_TRACE(cat(c.name, ": problem ", b, " of ", c.batch, ", n = ", c.n));
    const PivotedCholesky cpu = pivoted_cholesky(problem(c, b), c.n);
    EXPECT_EQ(gpu[b].n, c.n);
    EXPECT_EQ(gpu[b].rank, cpu.rank);
    EXPECT_EQ(gpu[b].perm, cpu.perm);
    ASSERT_EQ(gpu[b].R.size(), cpu.R.size());
    double err = 0;
    for (std::size_t i = 0; i < cpu.R.size(); ++i) err = std::max(err, std::fabs(gpu[b].R[i] - cpu.R[i]));
    EXPECT_LE(err, kFactorTol * std::max(cpu.R[0], 1e-300)) << "max |R_gpu - R_cpu|";
  }
  for (int64_t k : {int64_t{1}, c.n / 2 + 1, c.n}) {
    const auto q = qrcp_select_batched_cuda(c.G.data(), c.batch, c.n, k);
    for (int64_t b = 0; b < c.batch; ++b)
      EXPECT_EQ(q[b], qrcp_select(problem(c, b), c.n, k)) << c.name << ": problem " << b << ", k = " << k;
  }
}

// Returns the total number of swaps (CPU side).
int expect_same_selection(const Case& c) {
  const auto gpu = strong_rrqr_select_batched_cuda(c.G.data(), c.batch, c.n, c.ks, c.f, c.max_swaps);
  EXPECT_EQ(static_cast<int64_t>(gpu.size()), c.batch);
  int swaps = 0;
  for (int64_t b = 0; b < c.batch && b < static_cast<int64_t>(gpu.size()); ++b) {
    const auto cpu = strong_rrqr_select_many(problem(c, b), c.n, c.ks, c.f, c.max_swaps);
    EXPECT_EQ(gpu[b].size(), cpu.size());
    for (std::size_t t = 0; t < cpu.size() && t < gpu[b].size(); ++t) {
      const StrongRrqrResult& g = gpu[b][t];
      const StrongRrqrResult& r = cpu[t];
      const std::string what = cat(c.name, ": problem ", b, " of ", c.batch, ", n = ", c.n, ", k = ", r.k,
                                   ", f = ", c.f, ", max_swaps = ", c.max_swaps);
      SCOPED_TRACE(what);
      swaps += r.swaps;
      EXPECT_EQ(g.k, r.k);
      EXPECT_EQ(g.kept, r.kept);
      EXPECT_EQ(g.swaps, r.swaps);
      EXPECT_EQ(g.hit_swap_limit, r.hit_swap_limit);
      EXPECT_EQ(g.stopped_small_diag, r.stopped_small_diag);
      EXPECT_EQ(g.rank_deficient, r.rank_deficient);
      expect_near_rel(g.max_rho, r.max_rho, kRhoTol, "max_rho");
      expect_near_rel(g.log_det_before, r.log_det_before, kLogDetTol, "log_det_before");
      expect_near_rel(g.log_det_after, r.log_det_after, kLogDetTol, "log_det_after");
      EXPECT_EQ(g.swap_rho.size(), r.swap_rho.size());
      for (std::size_t s = 0; s < r.swap_rho.size() && s < g.swap_rho.size(); ++s)
        expect_near_rel(g.swap_rho[s], r.swap_rho[s], kRhoTol, cat("swap_rho[", s, "]"));
    }
  }
  return swaps;
}

void expect_parity(const Case& c) {
  expect_same_factor(c);
  expect_same_selection(c);
}

// ---------------------------------------------------------------------------------------------
// GPU parity (skipped without a device).

TEST(GpuRrqr, RandomWellConditionedGrams) {
  RP_REQUIRE_GPU();
  expect_parity(random_case_n(8, 16));
  expect_parity(random_case_n(64, 64));  // a batch of 64 problems
  expect_parity(random_case_n(128, 8));
}

// Fewer rows and f close to 1 make generic problems swap.
TEST(GpuRrqr, RandomGramsWithSwaps) {
  RP_REQUIRE_GPU();
  for (double f : {1.05, 1.01}) {
    const Case c = random_case_n(64, 64, f, 72);
    expect_same_factor(c);
    EXPECT_GT(expect_same_selection(c), 0) << c.name;
  }
}

TEST(GpuRrqr, DecayingSpectra) {
  RP_REQUIRE_GPU();
  expect_parity(decaying_case(64, 64, kDefaultSwapBound, {1, 8, 16, 32, 48, 63, 64}));
  expect_parity(decaying_case(128, 16, 1.05, {1, 16, 32, 64, 96, 127, 128}));
  expect_parity(low_rank_noisy_case(64, 64, 1.05));
}

TEST(GpuRrqr, RankDeficientGrams) {
  RP_REQUIRE_GPU();
  for (int64_t n : {8, 64, 128}) expect_parity(rank_deficient_case(n, n == 128 ? 8 : 16));
}

TEST(GpuRrqr, KahanNeedsSwaps) {
  RP_REQUIRE_GPU();
  const Case c = kahan_case();
  expect_same_factor(c);
  EXPECT_GT(expect_same_selection(c), 0);
}

TEST(GpuRrqr, SwapLimitAndNoSwaps) {
  RP_REQUIRE_GPU();
  for (int limit : {0, 1, 2}) expect_same_selection(kahan_case(1.0, limit));
}

// 1e-11: the greedy min |diag A| is already below kMinDiagA, no swap. 1e-7: the cheap bound
// 1 / sqrt(trace Ginv) fails, so each swap first runs the exact Cholesky check, which passes.
TEST(GpuRrqr, SmallScaleStopRules) {
  RP_REQUIRE_GPU();
  expect_same_selection(kahan_case(1e-11));
  expect_same_selection(kahan_case(1e-7));
}

// head_k_dim 256, the top of the real range (global-memory workspace: 1.5 MB per problem).
TEST(GpuRrqr, HeadDim256) {
  RP_REQUIRE_GPU();
  expect_parity(decaying_case(256, 2, 1.05, {1, 64, 128, 192, 255, 256}));
}

// Any order, repeats: one result per entry of ks, in order.
TEST(GpuRrqr, RepeatedKsInAnyOrder) {
  RP_REQUIRE_GPU();
  const Case c = random_case("repeated ks", 32, 8, {20, 3, 32, 16, 3, 1}, 1.05, 500,
                              [](uint64_t s) { return low_rank_noisy_gram(32, 8, s); });
  expect_same_selection(c);
}

// ---------------------------------------------------------------------------------------------
// Inputs (CPU only): the problems above are tie-free and exercise what their tests claim.

TEST(GpuRrqrInputs, ProblemsAreTieFreeAndExerciseTheirPaths) {
  // Random families: the generators found tie-free seeds (near_tie ran inside random_case).
  for (const Case& c : {random_case_n(8, 16), random_case_n(64, 64), rank_deficient_case(64, 16),
                        decaying_case(64, 64, kDefaultSwapBound, {1, 8, 16, 32, 48, 63, 64})}) {
    EXPECT_EQ(static_cast<int64_t>(c.G.size()), c.batch * c.n * c.n) << c.name;
    EXPECT_LE(c.replaced, c.batch) << c.name << ": many near-ties; is the generator degenerate?";
  }
  // Kahan: tie-free as constructed, greedy keeps the natural order, swaps are needed.
  const Case kahan = kahan_case();
  int swaps = 0;
  for (int64_t b = 0; b < kahan.batch; ++b) {
    const Matrix g = problem_copy(kahan, b);
    EXPECT_EQ(near_tie(g, kahan.n, kahan.ks, kahan.f, kahan.max_swaps), "") << "kahan problem " << b;
    if (b < 2) {  // the single blocks (with several, the next block's first column takes over early)
      const PivotedCholesky pc = pivoted_cholesky(g.data(), kahan.n);
      for (int64_t j = 0; j < kahan.n; ++j) EXPECT_EQ(pc.perm[j], j) << "kahan problem " << b;
    }
    for (const auto& r : strong_rrqr_select_many(g.data(), kahan.n, kahan.ks)) {
      if (b < 2 && r.k >= 9 && r.k < kahan.n) {
        EXPECT_GT(r.swaps, 0) << "kahan problem " << b << ", k = " << r.k;
      }
      swaps += r.swaps;
    }
  }
  EXPECT_GE(swaps, 20);
  // The swap limit is reached at 1 and 2.
  for (int limit : {1, 2}) {
    const Case c = kahan_case(1.0, limit);
    bool hit = false;
    for (int64_t b = 0; b < c.batch; ++b)
      for (const auto& r : strong_rrqr_select_many(problem(c, b), c.n, c.ks, c.f, limit)) hit |= r.hit_swap_limit;
    EXPECT_TRUE(hit) << "limit " << limit;
  }
  // Rank deficient: some k above the rank, and the zero matrix has rank 0.
  const Case rd = rank_deficient_case(64, 16);
  EXPECT_EQ(pivoted_cholesky(problem(rd, 0), 64).rank, 16);
  EXPECT_EQ(pivoted_cholesky(problem(rd, rd.batch - 1), 64).rank, 0);
  bool deficient = false;
  for (const auto& r : strong_rrqr_select_many(problem(rd, 0), 64, rd.ks)) deficient |= r.rank_deficient;
  EXPECT_TRUE(deficient);
  // Generic problems with fewer rows and f close to 1 swap; so do the realistic shapes.
  for (const Case& c : {random_case_n(64, 64, 1.05, 72), random_case_n(64, 64, 1.01, 72),
                        decaying_case(128, 16, 1.05, {1, 16, 32, 64, 96, 127, 128}),
                        low_rank_noisy_case(64, 64, 1.05),
                        decaying_case(256, 2, 1.05, {1, 64, 128, 192, 255, 256})}) {
    int total = 0;
    for (int64_t b = 0; b < c.batch; ++b)
      for (const auto& r : strong_rrqr_select_many(problem(c, b), c.n, c.ks, c.f)) total += r.swaps;
    EXPECT_GT(total, 0) << c.name;
    std::cout << c.name << ": " << total << " swaps over " << c.batch << " problems, " << c.replaced
              << " replaced for near-ties\n";
  }
}

// The two small-scale Kahan families take the stop rules they are meant to, with margins.
TEST(GpuRrqrInputs, SmallScaleStopRulesHaveMargins) {
  const Case tiny = kahan_case(1e-11);
  int stopped = 0;
  for (int64_t b = 0; b < tiny.batch; ++b) {
    EXPECT_EQ(near_tie(problem_copy(tiny, b), tiny.n, tiny.ks, tiny.f, tiny.max_swaps), "") << "problem " << b;
    for (const auto& r : strong_rrqr_select_many(problem(tiny, b), tiny.n, tiny.ks)) {
      if (r.k < tiny.n && r.max_rho > tiny.f) {
        EXPECT_TRUE(r.stopped_small_diag) << "problem " << b << ", k = " << r.k;
      }
      stopped += r.stopped_small_diag;
      EXPECT_EQ(r.swaps, 0);
    }
  }
  EXPECT_GT(stopped, 0);
  // Scale 1e-7, greedy state of k = 24 of the single blocks: 1 / sqrt(trace Ginv) well below
  // kMinDiagA (the exact check runs), min |diag A| well above it (and the swaps go ahead).
  const Case small = kahan_case(1e-7);
  int swaps = 0;
  for (int64_t b = 0; b < small.batch; ++b) {
    EXPECT_EQ(near_tie(problem_copy(small, b), small.n, small.ks, small.f, small.max_swaps), "") << "problem " << b;
    if (b >= 2) continue;
    const Matrix g = problem_copy(small, b);
    const int64_t n = small.n, k = 24;
    Matrix a(k * k);
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) a[i * k + j] = g[i * n + j];  // greedy order = natural order
    ASSERT_EQ(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', k, a.data(), k), 0);
    double min_diag = kInf;
    for (int64_t i = 0; i < k; ++i) min_diag = std::min(min_diag, a[i * k + i]);
    ASSERT_EQ(LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', k, a.data(), k), 0);
    double trace = 0;
    for (int64_t i = 0; i < k; ++i) trace += a[i * k + i];
    EXPECT_LT(1 / std::sqrt(trace), 0.5 * kMinDiagA) << "problem " << b;
    EXPECT_GT(min_diag, 2 * kMinDiagA) << "problem " << b;
    for (const auto& r : strong_rrqr_select_many(g.data(), n, {k})) swaps += r.swaps;
  }
  EXPECT_GT(swaps, 0);
}

// ---------------------------------------------------------------------------------------------
// Input errors: raised on the host before any CUDA call, so these run without a GPU.

TEST(GpuRrqrHost, BadKIsAnInputError) {
  const int64_t n = 8;
  Matrix g(2 * n * n);
  const Matrix one = random_gram(n, 1);
  std::copy(one.begin(), one.end(), g.begin());
  std::copy(one.begin(), one.end(), g.begin() + n * n);
  for (int64_t k : {int64_t{-1}, int64_t{0}, n + 1}) {
    testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), 2, n, {3, k}); },
                                {"k = " + std::to_string(k), "k must be in 1..n"});
    testing::expect_input_error([&] { qrcp_select_batched_cuda(g.data(), 2, n, k); }, {"k must be in 1..n"});
    // The CPU twin says the same.
    testing::expect_input_error([&] { strong_rrqr_select_many(one.data(), n, {3, k}); }, {"k must be in 1..n"});
  }
}

TEST(GpuRrqrHost, BadArgumentsAreInputErrors) {
  const int64_t n = 8;
  Matrix g = random_gram(n, 2);
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), 1, n, {4}, 0.5); },
                              {"the bound f must be finite and >= 1"});
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), 1, n, {4}, kInf); },
                              {"the bound f must be finite and >= 1"});
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), 1, n, {4}, 1.5, -1); },
                              {"max_swaps must be >= 0"});
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), 1, 0, {1}); }, {"n must be >= 1"});
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(g.data(), -1, n, {1}); },
                              {"batch must be >= 0"});
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(nullptr, 2, n, {1}); }, {"null pointer"});
  testing::expect_input_error([&] { pivoted_cholesky_batched_cuda(g.data(), 1, n, -1.0); },
                              {"tol must be finite and >= 0"});
  // A non-finite entry names the problem of the batch and the entry.
  Matrix two(2 * n * n);
  std::copy(g.begin(), g.end(), two.begin());
  std::copy(g.begin(), g.end(), two.begin() + n * n);
  two[n * n + 3 * n + 5] = std::nan("");
  testing::expect_input_error([&] { strong_rrqr_select_batched_cuda(two.data(), 2, n, {4}); },
                              {"Gram matrix 1 of 2", "entry (3, 5) is not finite"});
  testing::expect_input_error([&] { pivoted_cholesky_batched_cuda(two.data(), 2, n); }, {"Gram matrix 1 of 2"});
  // A batch of one says what the CPU says.
  g[7] = kInf;
  testing::expect_input_error([&] { qrcp_select_batched_cuda(g.data(), 1, n, 2); },
                              {"Gram matrix [8, 8]: entry (0, 7) is not finite"});
  testing::expect_input_error([&] { qrcp_select(g.data(), n, 2); },
                              {"Gram matrix [8, 8]: entry (0, 7) is not finite"});
}

// Nothing to do: no CUDA call, empty results.
TEST(GpuRrqrHost, EmptyBatchOrNoKs) {
  EXPECT_TRUE(strong_rrqr_select_batched_cuda(nullptr, 0, 8, {1, 4}).empty());
  EXPECT_TRUE(qrcp_select_batched_cuda(nullptr, 0, 8, 4).empty());
  EXPECT_TRUE(pivoted_cholesky_batched_cuda(nullptr, 0, 8).empty());
  const Matrix g = random_gram(8, 3);
  const auto none = strong_rrqr_select_batched_cuda(g.data(), 1, 8, {});
  ASSERT_EQ(none.size(), 1u);
  EXPECT_TRUE(none[0].empty());
}

// ---------------------------------------------------------------------------------------------
// Eigendecomposition.

// A = V diag(lambda) V^T with a random orthonormal V.
Matrix with_spectrum(const std::vector<double>& lambda, uint64_t seed) {
  const int64_t n = lambda.size();
  const Matrix v = orthonormal(n, seed);
  Matrix a(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < n; ++p) acc += v[i * n + p] * lambda[p] * v[j * n + p];
      a[i * n + j] = acc;
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) a[i * n + j] = a[j * n + i];  // exactly symmetric
  return a;
}

// The three spectra: linear (well separated: eigenvectors compared everywhere), decaying over 6
// decades (a key covariance), and a Wishart Gram (random gaps).
Matrix eigh_batch(int64_t n, int64_t batch, uint64_t seed) {
  Matrix all;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> lambda(n);
    Matrix a;
    switch (b % 3) {
      case 0:
        for (int64_t i = 0; i < n; ++i) lambda[i] = 1.0 + double(i) - 0.5 * double(n);  // indefinite
        a = with_spectrum(lambda, seed + b);
        break;
      case 1:
        for (int64_t i = 0; i < n; ++i)
          lambda[i] = std::pow(10.0, -6.0 * double(i) / double(std::max<int64_t>(n - 1, 1)));
        a = with_spectrum(lambda, seed + b);
        break;
      default:
        a = random_gram(n, seed + b);
    }
    all.insert(all.end(), a.begin(), a.end());
  }
  return all;
}

void expect_eigh_matches_lapack(int64_t n, int64_t batch, uint64_t seed) {
  const Matrix a = eigh_batch(n, batch, seed);
  std::vector<double> evals(batch * n), evecs(batch * n * n);
  symmetric_eigh_batched_cuda(a.data(), batch, n, evals.data(), evecs.data());
  for (int64_t b = 0; b < batch; ++b) {
    SCOPED_TRACE(cat("eigh: matrix ", b, " of ", batch, ", n = ", n,
                     n <= kEighJacobiMaxN ? " (syevjBatched)" : " (syevd)"));
    Matrix ref(a.begin() + b * n * n, a.begin() + (b + 1) * n * n);
    std::vector<double> w(n);
    ASSERT_EQ(LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, ref.data(), n, w.data()), 0);
    const double* lam = &evals[b * n];
    const double* v = &evecs[b * n * n];
    const double* ab = &a[b * n * n];
    double scale = 0;
    for (double x : w) scale = std::max(scale, std::fabs(x));
    double eval_err = 0, ortho_err = 0, resid = 0;
    for (int64_t j = 0; j < n; ++j) eval_err = std::max(eval_err, std::fabs(lam[j] - w[j]));
    for (int64_t j = 1; j < n; ++j) EXPECT_LE(lam[j - 1], lam[j]) << "ascending at " << j;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = 0; q < n; ++q) {
        double vtv = 0, av = 0;
        for (int64_t i = 0; i < n; ++i) {
          vtv += v[i * n + p] * v[i * n + q];
          av += ab[p * n + i] * v[i * n + q];  // (A V)[p, q]
        }
        ortho_err = std::max(ortho_err, std::fabs(vtv - (p == q ? 1.0 : 0.0)));
        resid = std::max(resid, std::fabs(av - v[p * n + q] * lam[q]));
      }
    EXPECT_LE(eval_err, kEvalTol * scale) << "eigenvalues";
    EXPECT_LE(ortho_err, kOrthoTol) << "V^T V - I";
    EXPECT_LE(resid, kResidualTol * scale) << "A V - V diag(lambda)";
    // Eigenvectors up to sign, where the gap determines them.
    int compared = 0;
    for (int64_t j = 0; j < n; ++j) {
      double gap = kInf;
      if (j > 0) gap = std::min(gap, w[j] - w[j - 1]);
      if (j + 1 < n) gap = std::min(gap, w[j + 1] - w[j]);
      if (gap < kEvecMinGap * scale) continue;
      double dot = 0;
      for (int64_t i = 0; i < n; ++i) dot += v[i * n + j] * ref[i * n + j];
      const double s = dot < 0 ? -1.0 : 1.0;
      double err = 0;
      for (int64_t i = 0; i < n; ++i) err = std::max(err, std::fabs(v[i * n + j] - s * ref[i * n + j]));
      EXPECT_LE(err, kEvecTol) << "eigenvector " << j << " (gap " << gap / scale << ")";
      ++compared;
    }
    if (b % 3 == 0) {
      EXPECT_EQ(compared, n) << "the linear spectrum is well separated";
    }
  }
}

TEST(GpuEigh, MatchesLapackJacobiSizes) {
  RP_REQUIRE_GPU();
  expect_eigh_matches_lapack(8, 64, 11);
  expect_eigh_matches_lapack(32, 16, 12);
}

TEST(GpuEigh, MatchesLapackDivideAndConquerSizes) {
  RP_REQUIRE_GPU();
  expect_eigh_matches_lapack(33, 6, 13);
  expect_eigh_matches_lapack(64, 12, 14);
  expect_eigh_matches_lapack(128, 6, 15);
  expect_eigh_matches_lapack(256, 3, 16);
}

TEST(GpuEighHost, BadInputIsAnInputError) {
  const int64_t n = 4;
  Matrix a = random_gram(n, 5);
  std::vector<double> w(n), v(n * n);
  testing::expect_input_error([&] { symmetric_eigh_batched_cuda(a.data(), 1, 0, w.data(), v.data()); },
                              {"n must be >= 1"});
  testing::expect_input_error([&] { symmetric_eigh_batched_cuda(a.data(), -2, n, w.data(), v.data()); },
                              {"batch must be >= 0"});
  testing::expect_input_error([&] { symmetric_eigh_batched_cuda(a.data(), 1, n, nullptr, v.data()); },
                              {"null pointer"});
  a[1 * n + 2] = std::nan("");  // upper triangle
  testing::expect_input_error([&] { symmetric_eigh_batched_cuda(a.data(), 1, n, w.data(), v.data()); },
                              {"matrix 0 of 1", "entry (1, 2) is not finite"});
  symmetric_eigh_batched_cuda(nullptr, 0, n, nullptr, nullptr);  // an empty batch: nothing to do
}

}  // namespace
}  // namespace rankprune
