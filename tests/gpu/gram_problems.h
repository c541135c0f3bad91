// Gram matrices of the shapes channel selection meets, for the GPU tests (tests/gpu): seeded,
// row-major, float64.
#pragma once

#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace rankprune::gram_problems {

using Matrix = std::vector<double>;  // row-major

inline Matrix gaussian(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> nd;
  Matrix m(rows * cols);
  for (double& v : m) v = nd(gen);
  return m;
}

// [m, p] x [p, q].
inline Matrix matmul(const Matrix& a, const Matrix& b, int64_t m, int64_t p, int64_t q) {
  Matrix c(m * q, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t l = 0; l < p; ++l) {
      const double x = a[i * p + l];
      for (int64_t j = 0; j < q; ++j) c[i * q + j] += x * b[l * q + j];
    }
  return c;
}

// G = M^T M for M [rows, n]. The same loop for (i, j) and (j, i): G is exactly symmetric.
inline Matrix gram(const Matrix& M, int64_t rows, int64_t n) {
  Matrix g(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t r = 0; r < rows; ++r) acc += M[r * n + i] * M[r * n + j];
      g[i * n + j] = acc;
    }
  return g;
}

// A random orthonormal [n, n] (Q of a Gaussian matrix).
inline Matrix orthonormal(int64_t n, uint64_t seed) {
  Matrix q = gaussian(n, n, seed);
  std::vector<double> tau(n);
  EXPECT_EQ(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q.data(), n, tau.data()), 0);
  EXPECT_EQ(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q.data(), n, tau.data()), 0);
  return q;
}

// Gaussian rows: well conditioned with 4n of them (cond(G) ~ 9), less so with n + 8.
inline Matrix random_gram(int64_t n, uint64_t seed, int64_t rows = 0) {
  if (rows == 0) rows = 4 * n;
  return gram(gaussian(rows, n, seed), rows, n);
}

// Decaying spectrum, the shape of trained key states: M = Z diag(sigma) V^T with Z Gaussian
// [4n, n], V orthonormal and sigma_p = 10^(-4 p / (n - 1)): singular values of G over 8 decades,
// all above the rank cut.
inline Matrix decaying_gram(int64_t n, uint64_t seed) {
  Matrix z = gaussian(4 * n, n, seed);
  const Matrix v = orthonormal(n, seed + 1);
  for (int64_t r = 0; r < 4 * n; ++r)
    for (int64_t p = 0; p < n; ++p) z[r * n + p] *= std::pow(10.0, -4.0 * p / double(std::max<int64_t>(n - 1, 1)));
  Matrix vt(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) vt[i * n + j] = v[j * n + i];
  return gram(matmul(z, vt, 4 * n, n, n), 4 * n, n);
}

// Low rank plus noise (rank r signal, 1e-3 noise floor).
inline Matrix low_rank_noisy_gram(int64_t n, int64_t r, uint64_t seed) {
  Matrix m = matmul(gaussian(4 * n, r, seed), gaussian(r, n, seed + 1), 4 * n, r, n);
  const Matrix e = gaussian(4 * n, n, seed + 2);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] += 1e-3 * e[i];
  return gram(m, 4 * n, n);
}

// Exactly rank r (as exactly as forming G allows: residuals ~1e-16 of the largest, far below the
// 1e-12 rank cut).
inline Matrix rank_r_gram(int64_t n, int64_t r, uint64_t seed) {
  return gram(matmul(gaussian(4 * n, r, seed), gaussian(r, n, seed + 1), 4 * n, r, n), 4 * n, n);
}

// Kahan-like blocks (as tests/kernels/test_rrqr.cpp builds them): K block-diagonal, block q of
// size b diag(1, s, .., s^{b-1}) (I - c_q * strict upper ones), s = sqrt(1 - c_q^2), column j
// scaled by (1 - 1e-3)^j so that greedy pivoting keeps the natural order of a single block with a
// margin, G = K^T K scaled by `scale`^2. Greedy pivoting is not strong on it: the blocks need
// swaps.
inline Matrix kahan_gram(const std::vector<double>& cs, int64_t b, double scale = 1.0) {
  const int64_t n = b * static_cast<int64_t>(cs.size());
  Matrix k(n * n, 0.0);
  for (std::size_t q = 0; q < cs.size(); ++q) {
    const double c = cs[q], s = std::sqrt(1 - c * c);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = i; j < b; ++j)
        k[(q * b + i) * n + q * b + j] =
            scale * std::pow(s, double(i)) * (i == j ? 1.0 : -c) * std::pow(1 - 1e-3, double(q * b + j));
  }
  return gram(k, n, n);
}

// Equal when either is infinite (log|det| of a rank-deficient selection), else within tol relative
// to max(1, |ref|): how the selection tests compare a twin's doubles with the CPU's.
inline void expect_near_rel(double got, double ref, double tol, const std::string& what) {
  if (std::isinf(ref) || std::isinf(got)) {
    EXPECT_EQ(got, ref) << what;
    return;
  }
  EXPECT_NEAR(got, ref, tol * std::max(1.0, std::fabs(ref))) << what;
}

}  // namespace rankprune::gram_problems
