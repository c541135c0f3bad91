// Gram-form pivoted Cholesky / strong RRQR (kernels/rrqr.h) against LAPACK on the stacked matrix
// M (dgeqp3 pivots and R), against an independent QR-based evaluation of rho, and against the
// paper's re-QR-per-swap procedure (kernels/rrqr_reference.h). No LibTorch.
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/rrqr.h"
#include "kernels/rrqr_reference.h"

namespace rankprune {
namespace {

// Tolerances (float64 throughout).
constexpr double kFactorTol = 1e-10;  // ||R^T R - P^T G P||_max / max|G|
constexpr double kDiagTol = 1e-9;     // | |R_jj| - |R_qp3,jj| | / R_00
constexpr double kRhoSlack = 1e-9;    // relative slack on "rho <= f" from an independent QR
// log |det A| from G loses accuracy like eps * cond(A)^2 (the Gram squares it): the Kahan cases
// reach ~1e-7 relative.
constexpr double kLogDetTol = 1e-6;

// M: [rows, n] column-major.
struct Mat {
  int64_t rows = 0, n = 0;
  std::vector<double> a;
  double& at(int64_t r, int64_t c) { return a[r + c * rows]; }
  double at(int64_t r, int64_t c) const { return a[r + c * rows]; }
};

Mat gaussian(int64_t rows, int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> nd;
  Mat m{rows, n, std::vector<double>(rows * n)};
  for (double& v : m.a) v = nd(gen);
  return m;
}

Mat matmul(const Mat& x, const Mat& y) {
  Mat z{x.rows, y.n, std::vector<double>(x.rows * y.n, 0.0)};
  for (int64_t c = 0; c < y.n; ++c)
    for (int64_t p = 0; p < x.n; ++p) {
      const double w = y.at(p, c);
      for (int64_t r = 0; r < x.rows; ++r) z.at(r, c) += x.at(r, p) * w;
    }
  return z;
}

// G = M^T M, [n, n] row-major. The same dot-product loop for every entry, so duplicate columns of
// M give bitwise-equal rows of G (the ties dgeqp3 sees).
std::vector<double> gram(const Mat& m) {
  std::vector<double> g(m.n * m.n);
  for (int64_t i = 0; i < m.n; ++i)
    for (int64_t j = 0; j < m.n; ++j) {
      double acc = 0;
      for (int64_t r = 0; r < m.rows; ++r) acc += m.at(r, i) * m.at(r, j);
      g[i * m.n + j] = acc;
    }
  return g;
}

// Kahan-like matrix: block diagonal, block q of size b being diag(1, s, .., s^{b-1})
// (I - c_q * strict upper ones) with s = sqrt(1 - c_q^2), every column then scaled by (1 - 1e-3)^j
// (j = global column) so greedy pivoting keeps the natural order without relying on ties, and the
// whole rotated by a random orthonormal basis [rows, n]. Within a block all column norms and all
// residual norms are equal, so QRCP does not move anything, yet A^{-1} B grows like (1 + c)^b:
// greedy pivoting is not strong and every block needs its own swap. Distinct c_q keep the rho of
// different blocks apart (equal blocks would give exact ties, broken by rounding).
Mat kahan_blocks(int64_t rows, const std::vector<double>& cs, int64_t b, uint64_t seed) {
  const int64_t n = b * static_cast<int64_t>(cs.size());
  Mat k{n, n, std::vector<double>(n * n, 0.0)};
  for (size_t q = 0; q < cs.size(); ++q) {
    const double c = cs[q], s = std::sqrt(1 - c * c);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = i; j < b; ++j)
        k.at(q * b + i, q * b + j) =
            std::pow(s, double(i)) * (i == j ? 1.0 : -c) * std::pow(1 - 1e-3, double(q * b + j));
  }
  Mat qm = gaussian(rows, n, seed);
  std::vector<double> tau(n);
  EXPECT_EQ(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, rows, n, qm.a.data(), rows, tau.data()), 0);
  EXPECT_EQ(LAPACKE_dorgqr(LAPACK_COL_MAJOR, rows, n, n, qm.a.data(), rows, tau.data()), 0);
  return matmul(qm, k);
}
Mat kahan(int64_t rows, int64_t n, double c, uint64_t seed) { return kahan_blocks(rows, {c}, n, seed); }

Mat low_rank(int64_t rows, int64_t n, int64_t r, uint64_t seed) {
  return matmul(gaussian(rows, r, seed), gaussian(r, n, seed + 1000));
}

// Low-rank plus noise: the shape of real key activations.
Mat low_rank_noisy(int64_t rows, int64_t n, int64_t r, double noise, uint64_t seed) {
  Mat m = low_rank(rows, n, r, seed);
  Mat e = gaussian(rows, n, seed + 2000);
  for (size_t i = 0; i < m.a.size(); ++i) m.a[i] += noise * e.a[i];
  return m;
}

// Scaled columns of a Gaussian matrix: norms spread over 1e-2..1e2.
Mat scaled(int64_t rows, int64_t n, uint64_t seed) {
  Mat m = gaussian(rows, n, seed);
  std::mt19937_64 gen(seed + 7);
  std::uniform_real_distribution<double> u(-2, 2);
  for (int64_t c = 0; c < n; ++c) {
    const double f = std::pow(10.0, u(gen));
    for (int64_t r = 0; r < rows; ++r) m.at(r, c) *= f;
  }
  return m;
}

// ||R^T R - P^T G P||_max / max|G|.
double factor_error(const PivotedCholesky& pc, const std::vector<double>& g) {
  const int64_t n = pc.n;
  double err = 0, gmax = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p <= std::min(i, j); ++p) acc += pc.R[p * n + i] * pc.R[p * n + j];
      err = std::max(err, std::fabs(acc - g[pc.perm[i] * n + pc.perm[j]]));
      gmax = std::max(gmax, std::fabs(g[i * n + j]));
    }
  return err / gmax;
}

void expect_matches_dgeqp3(const Mat& m, int64_t compare, const std::string& what) {
  SCOPED_TRACE(what);
  const std::vector<double> g = gram(m);
  const PivotedCholesky pc = pivoted_cholesky(g.data(), m.n);
  std::vector<double> rq;
  const std::vector<int64_t> lp = lapack_qrcp_pivots(m.a.data(), m.rows, m.n, &rq);
  ASSERT_GE(pc.rank, compare);
  for (int64_t j = 0; j < compare; ++j) EXPECT_EQ(pc.perm[j], lp[j]) << "pivot " << j;
  const double r00 = pc.R[0];
  for (int64_t j = 0; j < compare; ++j)
    EXPECT_NEAR(std::fabs(pc.R[j * m.n + j]), std::fabs(rq[j * m.n + j]), kDiagTol * r00) << "diag " << j;
  EXPECT_LT(factor_error(pc, g), kFactorTol);
}

// max rho and log |det A| for the kept set, computed the paper's way on M and from scratch:
// dgeqrf of M with columns [kept ascending, rest ascending], A^{-1} by back substitution,
// A^{-1} B, row norms of A^{-1} and column norms of C by plain loops.
struct Independent {
  double max_rho = 0;
  double log_det = 0;
};
Independent independent_rho(const Mat& m, const std::vector<int64_t>& kept) {
  const int64_t n = m.n, k = kept.size(), rows = m.rows;
  std::vector<int64_t> order(kept);
  std::vector<char> in(n, 0);
  for (int64_t c : kept) in[c] = 1;
  for (int64_t c = 0; c < n; ++c)
    if (!in[c]) order.push_back(c);
  std::vector<double> a(rows * n), tau(n);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < rows; ++r) a[r + j * rows] = m.at(r, order[j]);
  EXPECT_EQ(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, rows, n, a.data(), rows, tau.data()), 0);
  auto R = [&](int64_t i, int64_t j) { return i <= j ? a[i + j * rows] : 0.0; };
  Independent out;
  for (int64_t i = 0; i < k; ++i) out.log_det += std::log(std::fabs(R(i, i)));
  // Ainv: solve A x = e_c column by column.
  std::vector<double> ainv(k * k, 0.0);
  for (int64_t c = 0; c < k; ++c)
    for (int64_t i = k - 1; i >= 0; --i) {
      double acc = (i == c) ? 1.0 : 0.0;
      for (int64_t p = i + 1; p < k; ++p) acc -= R(i, p) * ainv[p * k + c];
      ainv[i * k + c] = acc / R(i, i);
    }
  double best = 0;
  for (int64_t i = 0; i < k; ++i) {
    double gi = 0;
    for (int64_t p = 0; p < k; ++p) gi += ainv[i * k + p] * ainv[i * k + p];
    for (int64_t j = k; j < n; ++j) {
      double w = 0, cn = 0;
      for (int64_t p = 0; p < k; ++p) w += ainv[i * k + p] * R(p, j);
      for (int64_t p = k; p <= j; ++p) cn += R(p, j) * R(p, j);
      best = std::max(best, std::sqrt(w * w + cn * gi));
    }
  }
  out.max_rho = best;
  return out;
}

void expect_strong(const Mat& m, const StrongRrqrResult& r, double f, const std::string& what) {
  SCOPED_TRACE(what + " k=" + std::to_string(r.k));
  ASSERT_EQ(static_cast<int64_t>(r.kept.size()), r.k);
  EXPECT_TRUE(std::is_sorted(r.kept.begin(), r.kept.end()));
  const Independent ind = independent_rho(m, r.kept);
  if (!r.hit_swap_limit) {
    EXPECT_LE(ind.max_rho, f * (1 + kRhoSlack));
  }
  EXPECT_NEAR(ind.max_rho, r.max_rho, 1e-7 * std::max(1.0, ind.max_rho));
  EXPECT_NEAR(ind.log_det, r.log_det_after, kLogDetTol * std::max(1.0, std::fabs(ind.log_det)));
  EXPECT_GE(r.log_det_after, r.log_det_before);
  ASSERT_EQ(static_cast<int>(r.swap_rho.size()), r.swaps);
  double ld = r.log_det_before;
  for (double rho : r.swap_rho) {
    EXPECT_GT(rho, f);  // each swap multiplies |det A| by rho > f
    ld += std::log(rho);
  }
  EXPECT_NEAR(ld, r.log_det_after, 1e-6 * std::max(1.0, std::fabs(ld)));
}

// ---------------------------------------------------------------------------------------------
// Pivoted Cholesky

TEST(PivotedCholesky, HandExample3x3) {
  // G = [[4, 2, 0], [2, 5, 3], [0, 3, 9]].
  // Step 0: diagonal (4, 5, 9) -> pivot column 2; swap it with slot 0: order (2, 1, 0).
  //   R00 = 3, R01 = G21 / 3 = 1, R02 = G20 / 3 = 0; residual diagonal: col 1: 5 - 1 = 4,
  //   col 0: 4 - 0 = 4.
  // Step 1: a tie 4 = 4 between slot 1 (column 1) and slot 2 (column 0): the first slot in the
  //   current order wins, column 1 (a smallest-original-id rule would pick column 0).
  //   R11 = 2, R12 = (G10 - R01 R02) / 2 = 1; residual of column 0: 4 - 1 = 3.
  // Step 2: R22 = sqrt(3). perm = (2, 1, 0).
  const std::vector<double> g = {4, 2, 0, 2, 5, 3, 0, 3, 9};
  const PivotedCholesky pc = pivoted_cholesky(g.data(), 3);
  EXPECT_EQ(pc.perm, (std::vector<int64_t>{2, 1, 0}));
  EXPECT_EQ(pc.rank, 3);
  const std::vector<double> expect = {3, 1, 0, 0, 2, 1, 0, 0, std::sqrt(3.0)};
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(pc.R[i], expect[i], 1e-15) << i;
  EXPECT_EQ(qrcp_select(g.data(), 3, 2), (std::vector<int64_t>{1, 2}));
}

TEST(PivotedCholesky, MatchesDgeqp3FullRank) {
  for (uint64_t seed = 1; seed <= 5; ++seed)
    expect_matches_dgeqp3(gaussian(300, 32, seed), 32, "gaussian seed " + std::to_string(seed));
}

TEST(PivotedCholesky, MatchesDgeqp3ScaledColumns) {
  for (uint64_t seed = 11; seed <= 13; ++seed)
    expect_matches_dgeqp3(scaled(300, 32, seed), 32, "scaled seed " + std::to_string(seed));
}

TEST(PivotedCholesky, MatchesDgeqp3LowRank) {
  for (uint64_t seed = 21; seed <= 23; ++seed) {
    const Mat m = low_rank(300, 32, 10, seed);
    const std::vector<double> g = gram(m);
    EXPECT_EQ(pivoted_cholesky(g.data(), 32).rank, 10);
    // After the rank the residuals are rounding noise and their order is arbitrary.
    expect_matches_dgeqp3(m, 10, "low rank seed " + std::to_string(seed));
  }
}

TEST(PivotedCholesky, MatchesDgeqp3DuplicateAndZeroColumns) {
  Mat m = gaussian(300, 32, 31);
  auto copy_col = [&](int64_t dst, int64_t src) {
    for (int64_t r = 0; r < m.rows; ++r) m.at(r, dst) = m.at(r, src);
  };
  copy_col(17, 5);
  copy_col(3, 20);
  copy_col(26, 5);
  for (int64_t r = 0; r < m.rows; ++r) m.at(r, 9) = m.at(r, 30) = 0;
  const std::vector<double> g = gram(m);
  const PivotedCholesky pc = pivoted_cholesky(g.data(), 32);
  EXPECT_EQ(pc.rank, 32 - 3 - 2);
  expect_matches_dgeqp3(m, pc.rank, "duplicates and zeros");
  // Zero columns are never pivots; each group of twins contributes exactly one.
  const std::vector<int64_t> head(pc.perm.begin(), pc.perm.begin() + pc.rank);
  for (int64_t z : {9, 30}) EXPECT_EQ(std::count(head.begin(), head.end(), z), 0);
  EXPECT_EQ(std::count_if(head.begin(), head.end(), [](int64_t c) { return c == 5 || c == 17 || c == 26; }), 1);
  // Rows of R past the rank are zero and the tail of perm is a permutation of the rest.
  for (int64_t i = pc.rank * 32; i < 32 * 32; ++i) EXPECT_EQ(pc.R[i], 0.0);
  std::vector<int64_t> all(pc.perm);
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 32; ++i) EXPECT_EQ(all[i], i);
}

TEST(PivotedCholesky, ZeroMatrixHasRankZero) {
  const std::vector<double> g(16, 0.0);
  const PivotedCholesky pc = pivoted_cholesky(g.data(), 4);
  EXPECT_EQ(pc.rank, 0);
  EXPECT_EQ(pc.perm, (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(PivotedCholesky, RejectsBadInput) {
  std::vector<double> g = {1, 0, 0, 1};
  g[1] = std::nan("");
  EXPECT_THROW(pivoted_cholesky(g.data(), 2), InputError);
  EXPECT_THROW(pivoted_cholesky(g.data(), 0), InputError);
}

// ---------------------------------------------------------------------------------------------
// Selection

TEST(QrcpSelect, FirstKPivotsSorted) {
  const Mat m = gaussian(300, 32, 41);
  const std::vector<double> g = gram(m);
  const PivotedCholesky pc = pivoted_cholesky(g.data(), 32);
  for (int64_t k : {1, 5, 16, 31, 32}) {
    std::vector<int64_t> expect(pc.perm.begin(), pc.perm.begin() + k);
    std::sort(expect.begin(), expect.end());
    EXPECT_EQ(qrcp_select(g.data(), 32, k), expect) << "k=" << k;
    EXPECT_EQ(qrcp_select(pc, k), expect) << "k=" << k;
  }
}

// k outside 1..n is the user's ratio gone wrong: InputError (exit 1), not an internal error.
TEST(Selection, KOutOfRangeThrowsInputError) {
  const Mat m = gaussian(50, 8, 42);
  const std::vector<double> g = gram(m);
  for (int64_t k : {-1, 0, 9}) {
    EXPECT_THROW(qrcp_select(g.data(), 8, k), InputError) << k;
    EXPECT_THROW(strong_rrqr_select(g.data(), 8, k), InputError) << k;
    EXPECT_THROW(strong_rrqr_select_many(g.data(), 8, {3, k}), InputError) << k;
  }
  EXPECT_THROW(strong_rrqr_select(g.data(), 8, 4, 0.5), InputError);
  EXPECT_THROW(strong_rrqr_select(g.data(), 8, 4, 1.5, -1), InputError);
}

TEST(StrongRrqr, KeepAllIsTrivial) {
  const Mat m = gaussian(100, 16, 43);
  const std::vector<double> g = gram(m);
  const StrongRrqrResult r = strong_rrqr_select(g.data(), 16, 16);
  std::vector<int64_t> all(16);
  std::iota(all.begin(), all.end(), int64_t{0});
  EXPECT_EQ(r.kept, all);
  EXPECT_EQ(r.swaps, 0);
  EXPECT_EQ(r.max_rho, 0.0);
  EXPECT_FALSE(r.rank_deficient);
}

TEST(StrongRrqr, ReachesBoundOnRandomAndKahan) {
  struct Case {
    std::string name;
    Mat m;
  };
  std::vector<Case> cases;
  for (uint64_t s = 51; s <= 53; ++s) cases.push_back({"gaussian " + std::to_string(s), gaussian(300, 32, s)});
  for (uint64_t s = 54; s <= 56; ++s)
    cases.push_back({"low rank + noise " + std::to_string(s), low_rank_noisy(300, 32, 8, 1e-2, s)});
  cases.push_back({"scaled", scaled(300, 32, 57)});
  cases.push_back({"kahan c=0.3", kahan(300, 32, 0.3, 58)});
  cases.push_back({"kahan c=0.5", kahan(300, 24, 0.5, 59)});
  cases.push_back({"kahan blocks", kahan_blocks(300, {0.5, 0.4, 0.3}, 10, 60)});
  for (const Case& c : cases) {
    const std::vector<double> g = gram(c.m);
    std::vector<int64_t> ks;
    for (int64_t k = 1; k <= c.m.n; ++k) ks.push_back(k);
    const auto rs = strong_rrqr_select_many(g.data(), c.m.n, ks);
    for (const auto& r : rs) expect_strong(c.m, r, 1.5, c.name);
  }
}

void expect_same_as_reference(const Mat& m, const std::vector<int64_t>& ks, double f,
                              const std::string& what, int* total_swaps = nullptr) {
  const std::vector<double> g = gram(m);
  const auto ours = strong_rrqr_select_many(g.data(), m.n, ks, f);
  const auto ref = strong_rrqr_reference_many(m.a.data(), m.rows, m.n, ks, f);
  for (size_t t = 0; t < ks.size(); ++t) {
    SCOPED_TRACE(what + " k=" + std::to_string(ks[t]));
    EXPECT_EQ(ours[t].kept, ref[t].kept);
    EXPECT_EQ(ours[t].swaps, ref[t].swaps);
    EXPECT_EQ(ours[t].hit_swap_limit, ref[t].hit_swap_limit);
    EXPECT_NEAR(ours[t].max_rho, ref[t].max_rho, 1e-6 * std::max(1.0, ref[t].max_rho));
    EXPECT_NEAR(ours[t].log_det_before, ref[t].log_det_before, kLogDetTol * std::max(1.0, std::fabs(ref[t].log_det_before)));
    EXPECT_NEAR(ours[t].log_det_after, ref[t].log_det_after, kLogDetTol * std::max(1.0, std::fabs(ref[t].log_det_after)));
    if (total_swaps) *total_swaps += ours[t].swaps;
  }
}

std::vector<int64_t> all_k(int64_t n) {
  std::vector<int64_t> ks(n);
  std::iota(ks.begin(), ks.end(), int64_t{1});
  return ks;
}

// c <= 0.4 at n = 32: at c = 0.5 the Kahan matrix is so ill-conditioned that log |det A| of the
// trailing greedy columns, read from G, differs from dgeqp3's in the 4th digit (selections still
// agree); c = 0.5 is covered at n = 24 above.
TEST(StrongRrqr, KahanNeedsSwapsAndMatchesReference) {
  for (double c : {0.2, 0.3, 0.4}) {
    const Mat m = kahan(300, 32, c, 61);
    const std::vector<double> g = gram(m);
    // Greedy keeps the natural order on a Kahan matrix...
    const PivotedCholesky pc = pivoted_cholesky(g.data(), 32);
    for (int64_t j = 0; j < 32; ++j) ASSERT_EQ(pc.perm[j], j) << "c=" << c;
    // ...and is not strong once k covers a few columns (k >= 9 even for c = 0.2).
    const auto rs = strong_rrqr_select_many(g.data(), pc, {9, 16, 24, 31});
    for (const auto& r : rs) {
      EXPECT_GT(r.swaps, 0) << "c=" << c << " k=" << r.k;
      EXPECT_GT(r.log_det_after, r.log_det_before + std::log(1.5)) << "c=" << c << " k=" << r.k;
      expect_strong(m, r, 1.5, "kahan c=" + std::to_string(c));
    }
    expect_same_as_reference(m, all_k(32), 1.5, "kahan c=" + std::to_string(c));
  }
}

TEST(StrongRrqr, KahanBlocksNeedSeveralSwapsAndMatchReference) {
  int max_swaps_seen = 0;
  const std::vector<std::vector<double>> blocks = {{0.5, 0.4}, {0.5, 0.4, 0.3}, {0.55, 0.45, 0.35, 0.25}};
  for (size_t t = 0; t < blocks.size(); ++t) {
    const Mat m = kahan_blocks(300, blocks[t], 32 / static_cast<int64_t>(blocks[t].size()), 62 + t);
    const std::string name = "kahan blocks " + std::to_string(blocks[t].size());
    const std::vector<double> g = gram(m);
    for (const auto& r : strong_rrqr_select_many(g.data(), m.n, all_k(m.n))) {
      max_swaps_seen = std::max(max_swaps_seen, r.swaps);
      expect_strong(m, r, 1.5, name);
    }
    expect_same_as_reference(m, all_k(m.n), 1.5, name);
  }
  EXPECT_GE(max_swaps_seen, 3);
}

// Generic data is usually strong already at f = 1.5; a bound close to 1 exercises the swaps.
TEST(StrongRrqr, MatchesReferenceOnRandomProblems) {
  int total_swaps = 0;
  for (uint64_t s = 71; s <= 76; ++s) {
    const Mat m = (s % 2) ? gaussian(400, 32, s) : low_rank_noisy(400, 32, 10, 1e-2, s);
    for (double f : {1.5, 1.05, 1.01})
      expect_same_as_reference(m, all_k(32), f, "seed " + std::to_string(s) + " f=" + std::to_string(f),
                               &total_swaps);
  }
  EXPECT_GT(total_swaps, 20);
}

TEST(StrongRrqr, ManyEqualsSingleAndIsDeterministic) {
  const Mat m = low_rank_noisy(300, 32, 8, 1e-2, 81);
  const std::vector<double> g = gram(m);
  const std::vector<int64_t> ks = {20, 3, 32, 16, 3, 1};
  const auto many = strong_rrqr_select_many(g.data(), 32, ks);
  ASSERT_EQ(many.size(), ks.size());
  for (size_t t = 0; t < ks.size(); ++t) {
    const StrongRrqrResult one = strong_rrqr_select(g.data(), 32, ks[t]);
    EXPECT_EQ(many[t].k, ks[t]);
    EXPECT_EQ(many[t].kept, one.kept);
    EXPECT_EQ(many[t].swaps, one.swaps);
    EXPECT_EQ(many[t].swap_rho, one.swap_rho);
    EXPECT_EQ(many[t].max_rho, one.max_rho);
  }
  for (int rep = 0; rep < 3; ++rep) {
    const auto again = strong_rrqr_select_many(g.data(), 32, ks);
    for (size_t t = 0; t < ks.size(); ++t) {
      EXPECT_EQ(again[t].kept, many[t].kept);
      EXPECT_EQ(again[t].swap_rho, many[t].swap_rho);
    }
  }
}

TEST(StrongRrqr, SwapLimit) {
  const Mat m = kahan_blocks(300, {0.55, 0.45, 0.35, 0.25}, 8, 91);
  const std::vector<double> g = gram(m);
  const int64_t k = 24;
  const StrongRrqrResult free_run = strong_rrqr_select(g.data(), 32, k);
  ASSERT_GE(free_run.swaps, 3);
  EXPECT_FALSE(free_run.hit_swap_limit);
  const StrongRrqrResult two = strong_rrqr_select(g.data(), 32, k, 1.5, 2);
  EXPECT_EQ(two.swaps, 2);
  EXPECT_TRUE(two.hit_swap_limit);
  EXPECT_GT(two.max_rho, 1.5);
  EXPECT_EQ(two.swap_rho, std::vector<double>(free_run.swap_rho.begin(), free_run.swap_rho.begin() + 2));
  expect_strong(m, two, 1.5, "limit 2");
  const ReferenceRrqrResult ref = strong_rrqr_reference(m.a.data(), m.rows, m.n, k, 1.5, 2);
  EXPECT_EQ(two.kept, ref.kept);
  EXPECT_TRUE(ref.hit_swap_limit);
  const StrongRrqrResult none = strong_rrqr_select(g.data(), 32, k, 1.5, 0);
  EXPECT_EQ(none.swaps, 0);
  EXPECT_TRUE(none.hit_swap_limit);
  EXPECT_EQ(none.kept, qrcp_select(g.data(), 32, k));
}

// The paper's guard min |diag A| > 1e-9 is absolute: a tiny-scale problem keeps its greedy pivots
// even though they are not strong, in both implementations.
TEST(StrongRrqr, SmallDiagonalStopsSwaps) {
  Mat m = kahan(300, 32, 0.4, 95);
  for (double& v : m.a) v *= 1e-11;
  const std::vector<double> g = gram(m);
  const StrongRrqrResult r = strong_rrqr_select(g.data(), 32, 24);
  EXPECT_EQ(r.swaps, 0);
  EXPECT_TRUE(r.stopped_small_diag);
  EXPECT_FALSE(r.hit_swap_limit);
  EXPECT_FALSE(r.rank_deficient);
  EXPECT_GT(r.max_rho, 1.5);
  EXPECT_EQ(r.kept, qrcp_select(g.data(), 32, 24));
  const ReferenceRrqrResult ref = strong_rrqr_reference(m.a.data(), m.rows, m.n, 24);
  EXPECT_TRUE(ref.stopped_small_diag);
  EXPECT_EQ(ref.kept, r.kept);
}

TEST(StrongRrqr, RankDeficientKeepsGreedy) {
  const Mat m = low_rank(300, 32, 10, 101);
  const std::vector<double> g = gram(m);
  const auto rs = strong_rrqr_select_many(g.data(), 32, {5, 10, 15, 32});
  EXPECT_FALSE(rs[0].rank_deficient);
  EXPECT_FALSE(rs[1].rank_deficient);
  for (int t : {2, 3}) {
    EXPECT_TRUE(rs[t].rank_deficient);
    EXPECT_EQ(rs[t].swaps, 0);
    EXPECT_EQ(rs[t].kept, qrcp_select(g.data(), 32, rs[t].k));
  }
  expect_strong(m, rs[0], 1.5, "rank 10");
}

}  // namespace
}  // namespace rankprune
