// The paper's procedure: QRCP of M, then strong-RRQR swaps with a fresh QR of M per swap.
// Deliberately straightforward: it is the baseline the Gram form is measured and tested against.
#include "kernels/rrqr_reference.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "kernels/rrqr.h"

namespace rankprune {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_matrix(const double* M, int64_t rows, int64_t n) {
  RP_CHECK_INPUT(n >= 1 && rows >= n, "reference RRQR: M must be [rows, n] with rows >= n >= 1, got [",
                 rows, ", ", n, "]");
  RP_CHECK_INPUT(M != nullptr, "reference RRQR: null matrix");
}

// R of a QR factorisation (col-major, leading dimension rows) as [n, n] row-major.
void upper_to_rowmajor(const double* qr, int64_t rows, int64_t n, std::vector<double>& R) {
  R.assign(n * n, 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i <= j; ++i) R[i * n + j] = qr[i + j * rows];
}

struct RhoEval {
  double max_rho2 = 0;
  int64_t i = 0, j = 0;
  double min_diag = 0;
  double log_det = 0;
};

// rho from R = [[A, B], [0, C]] directly: W = A^{-1} B (trsm), A^{-1} (trtri) for its row norms,
// column norms of C. The paper's formula, with no Gram-form shortcut.
RhoEval eval_from_r(const std::vector<double>& R, int64_t n, int64_t k) {
  const int64_t d = n - k;
  RhoEval ev;
  ev.min_diag = kInf;
  for (int64_t m = 0; m < k; ++m) {
    const double a = std::fabs(R[m * n + m]);
    ev.min_diag = std::min(ev.min_diag, a);
    ev.log_det += std::log(a);
  }
  if (d == 0) return ev;
  std::vector<double> A(k * k), W(k * d);
  for (int64_t i = 0; i < k; ++i) {
    std::memcpy(&A[i * k], &R[i * n], k * sizeof(double));
    std::memcpy(&W[i * d], &R[i * n + k], d * sizeof(double));
  }
  if (!(ev.min_diag > 0)) {
    ev.max_rho2 = kInf;
    return ev;
  }
  cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, k, d, 1.0, A.data(), k,
              W.data(), d);
  RP_ASSERT(LAPACKE_dtrtri(LAPACK_ROW_MAJOR, 'U', 'N', k, A.data(), k) == 0, "dtrtri failed");
  std::vector<double> g(k, 0.0), c(d, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = i; j < k; ++j) g[i] += A[i * k + j] * A[i * k + j];
  for (int64_t j = 0; j < d; ++j)
    for (int64_t p = k; p <= k + j; ++p) c[j] += R[p * n + k + j] * R[p * n + k + j];
  ev.max_rho2 = -1;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < d; ++j) {
      const double w = W[i * d + j];
      const double v = w * w + c[j] * g[i];
      if (v > ev.max_rho2) {
        ev.max_rho2 = v;
        ev.i = i;
        ev.j = j;
      }
    }
  return ev;
}

}  // namespace

std::vector<int64_t> lapack_qrcp_pivots(const double* M, int64_t rows, int64_t n, std::vector<double>* R) {
  check_matrix(M, rows, n);
  std::vector<double> a(M, M + rows * n), tau(n);
  std::vector<lapack_int> jpvt(n, 0);  // 0: every column is free to move
  const lapack_int info = LAPACKE_dgeqp3(LAPACK_COL_MAJOR, rows, n, a.data(), rows, jpvt.data(), tau.data());
  RP_ASSERT(info == 0, "dgeqp3 failed with info = ", info);
  std::vector<int64_t> perm(n);
  for (int64_t j = 0; j < n; ++j) perm[j] = jpvt[j] - 1;
  if (R) upper_to_rowmajor(a.data(), rows, n, *R);
  return perm;
}

std::vector<ReferenceRrqrResult> strong_rrqr_reference_many(const double* M, int64_t rows, int64_t n,
                                                            const std::vector<int64_t>& ks, double f,
                                                            int max_swaps) {
  check_matrix(M, rows, n);
  for (int64_t k : ks)
    RP_CHECK_INPUT(k >= 1 && k <= n, "reference RRQR: k = ", k, " must be in 1..", n);
  RP_CHECK_INPUT(f >= 1 && std::isfinite(f), "reference RRQR: f must be finite and >= 1, got ", f);
  RP_CHECK_INPUT(max_swaps >= 0, "reference RRQR: max_swaps must be >= 0, got ", max_swaps);
  const double f2 = f * f;
  std::vector<double> R0;
  const std::vector<int64_t> perm = lapack_qrcp_pivots(M, rows, n, &R0);
  std::vector<double> work(rows * n), tau(n), R;
  std::vector<ReferenceRrqrResult> out;
  for (int64_t k : ks) {
    ReferenceRrqrResult res;
    res.k = k;
    std::vector<int64_t> order(perm);
    RhoEval ev = eval_from_r(R0, n, k);
    res.log_det_before = ev.log_det;
    for (;;) {
      if (!(ev.max_rho2 > f2)) break;
      if (res.swaps >= max_swaps) {
        res.hit_swap_limit = true;
        break;
      }
      if (!(ev.min_diag > kMinDiagA)) {
        res.stopped_small_diag = true;
        break;
      }
      res.swap_rho.push_back(std::sqrt(ev.max_rho2));
      std::swap(order[ev.i], order[k + ev.j]);
      ++res.swaps;
      // Re-QR of M with the new column order, no pivoting.
      for (int64_t a = 0; a < n; ++a)
        std::memcpy(&work[a * rows], M + order[a] * rows, rows * sizeof(double));
      const lapack_int info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, rows, n, work.data(), rows, tau.data());
      RP_ASSERT(info == 0, "dgeqrf failed with info = ", info);
      upper_to_rowmajor(work.data(), rows, n, R);
      ev = eval_from_r(R, n, k);
    }
    res.max_rho = std::sqrt(std::max(ev.max_rho2, 0.0));
    res.log_det_after = ev.log_det;
    res.kept.assign(order.begin(), order.begin() + k);
    std::sort(res.kept.begin(), res.kept.end());
    out.push_back(std::move(res));
  }
  return out;
}

ReferenceRrqrResult strong_rrqr_reference(const double* M, int64_t rows, int64_t n, int64_t k, double f,
                                          int max_swaps) {
  return strong_rrqr_reference_many(M, rows, n, std::vector<int64_t>{k}, f, max_swaps).front();
}

}  // namespace rankprune
