// Gram-form pivoted Cholesky and strong RRQR (see rrqr.h for the interface and the formulas).
//
// Strong RRQR bookkeeping. For a kept set K (the first k slots of `order`) and the discarded set
// D (the rest) we keep the principal-pivot transform of G on K,
//
//   Q = [ Ginv   -W ]      Ginv = G_KK^{-1}, W = Ginv G_KD = A^{-1} B,
//       [ W^T     S ]      S = G_DD - G_DK Ginv G_KD (the Gram of C),
//
// i.e. the matrix of the map (y_K, x_D) -> (x_K, y_D) for G x = y. Q for the greedy order is read
// off the pivoted Cholesky factor. Exchanging kept slot i with discarded slot q is a principal
// pivot on the 2x2 block {i, q}, whose determinant is Ginv_ii S_qq + W_iq^2 = rho_iq^2 > f^2:
// a rank-2 O(n^2) update instead of an O(n^3) refactorisation per swap, with a pivot bounded
// away from singular, so it is no less accurate than refactorising G (whose Ginv is only good to
// eps * cond(G_KK) anyway). Rows/columns i and q are then swapped so that Q keeps the block
// layout. At the end one Cholesky of G_KK in the final order gives log |det A| exactly.
#include "kernels/rrqr.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "kernels/rrqr_checks.h"

namespace rankprune {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The checks live in rrqr_checks.h so that the CUDA twin rejects the same inputs the same way.
using rrqr_checks::check_gram;
using rrqr_checks::check_k;

// Greedy state for one k, read off the pivoted Cholesky (no swaps yet).
struct GreedyEval {
  double max_rho2 = 0;
  double min_diag = 0;
  double log_det = 0;
};

// For every requested k <= rank (k < n), the greedy max rho, min |diag A| and log |det A|.
// W^(k) = A_k^{-1} B_k obeys a rank-one recurrence in k (one step of back substitution), and so
// do the squared row norms g of A_k^{-1}: all requested k cost O(n^3 / 6) together, instead of a
// triangular solve O(k^2 (n - k)) per k.
std::vector<GreedyEval> greedy_evals(const PivotedCholesky& pc, const std::vector<int64_t>& ks) {
  const int64_t n = pc.n;
  std::vector<char> wanted(n + 1, 0);
  int64_t kmax = 0;
  for (int64_t k : ks)
    if (k <= pc.rank && k < n) {
      wanted[k] = 1;
      kmax = std::max(kmax, k);
    }
  std::vector<GreedyEval> out(n + 1);
  if (kmax == 0) return out;

  const std::vector<double>& R = pc.R;
  std::vector<double> X(R);          // rows i < m, columns c >= m hold W^(m)[i, c]
  std::vector<double> g(n, 0.0);     // g[i] = ||row_i(A_m^{-1})||^2
  std::vector<double> s(n, 0.0);
  double log_det = 0, min_diag = kInf;
  for (int64_t m = 0; m < kmax; ++m) {
    const double r = R[m * n + m];
    const double inv = 1.0 / r;
    double* xm = &X[m * n];
    for (int64_t c = m + 1; c < n; ++c) xm[c] *= inv;
    for (int64_t i = 0; i < m; ++i) {
      double* xi = &X[i * n];
      const double t = xi[m];
      if (t == 0) continue;
      g[i] += (t * inv) * (t * inv);
      for (int64_t c = m + 1; c < n; ++c) xi[c] -= t * xm[c];
    }
    g[m] = inv * inv;
    log_det += std::log(r);
    min_diag = std::min(min_diag, r);

    const int64_t k = m + 1;
    if (!wanted[k]) continue;
    // ||C[:, c]||^2 from R's own entries (not G_cc - ||B_c||^2, which cancels).
    for (int64_t c = k; c < n; ++c) {
      double acc = 0;
      for (int64_t p = k; p <= c && p < pc.rank; ++p) acc += R[p * n + c] * R[p * n + c];
      s[c] = acc;
    }
    double best = 0;
    for (int64_t i = 0; i < k; ++i) {
      const double* xi = &X[i * n];
      const double gi = g[i];
      for (int64_t c = k; c < n; ++c) best = std::max(best, xi[c] * xi[c] + s[c] * gi);
    }
    out[k] = {best, min_diag, log_det};
  }
  return out;
}

// Q (above) for the greedy order with the first k kept, from R = [[A, B], [0, C]]:
// Ginv = (A^T A)^{-1} by potri on A, W = A^{-1} B by trsm, and S = C^T C (trmm, d^3 / 2) or, when
// k is small, G_DD - B^T B (syrk, k d^2 / 2), whichever is cheaper.
void exchange_from_factor(const double* G, const PivotedCholesky& pc, int64_t k, std::vector<double>& Q) {
  const int64_t n = pc.n, d = n - k;
  const double* R = pc.R.data();
  std::vector<double> ginv(k * k, 0.0), w(k * d), s(d * d);
  for (int64_t i = 0; i < k; ++i) {
    std::copy(R + i * n + i, R + i * n + k, &ginv[i * k + i]);
    std::copy(R + i * n + k, R + i * n + n, &w[i * d]);
  }
  // Row-major upper == column-major lower of the same memory: calling LAPACK in that view skips
  // LAPACKE's row-major transposition copies.
  const lapack_int info = LAPACKE_dpotri_work(LAPACK_COL_MAJOR, 'L', k, ginv.data(), k);
  RP_ASSERT(info == 0, "potri of the greedy A (k = ", k, ", rank ", pc.rank, ") failed: ", info);
  cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, k, d, 1.0, R, n, w.data(), d);
  if (2 * k < d) {
    for (int64_t a = 0; a < d; ++a)
      for (int64_t b = 0; b < d; ++b) s[a * d + b] = G[pc.perm[k + a] * n + pc.perm[k + b]];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, k, -1.0, R + k, n, 1.0, s.data(), d);
  } else {
    for (int64_t a = 0; a < d; ++a) std::copy(R + (k + a) * n + k, R + (k + a) * n + n, &s[a * d]);
    cblas_dtrmm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, d, d, 1.0, R + k * n + k, n,
                s.data(), d);
  }
  Q.assign(n * n, 0.0);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = a; b < k; ++b) Q[a * n + b] = Q[b * n + a] = ginv[a * k + b];
  for (int64_t a = 0; a < k; ++a)
    for (int64_t c = 0; c < d; ++c) {
      Q[a * n + k + c] = -w[a * d + c];
      Q[(k + c) * n + a] = w[a * d + c];
    }
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = a; b < d; ++b) Q[(k + a) * n + k + b] = Q[(k + b) * n + k + a] = s[a * d + b];
}

struct Scan {
  double max_rho2 = 0;
  int64_t i = 0, j = 0;  // kept slot, discarded slot (0-based within D)
  double trace_ginv = 0;
};

// Row-major argmax of rho^2 over kept slots i and discarded slots j (first maximum wins).
Scan scan_exchange(const std::vector<double>& Q, int64_t n, int64_t k) {
  Scan sc;
  sc.max_rho2 = -1;
  for (int64_t i = 0; i < k; ++i) {
    const double* qi = &Q[i * n];
    const double gi = std::max(qi[i], 0.0);
    sc.trace_ginv += gi;
    for (int64_t c = k; c < n; ++c) {
      const double v = qi[c] * qi[c] + gi * std::max(Q[c * n + c], 0.0);
      if (v > sc.max_rho2) {
        sc.max_rho2 = v;
        sc.i = i;
        sc.j = c - k;
      }
    }
  }
  return sc;
}

// Principal pivot on {i, q} followed by the swap of rows/columns i and q. O(n^2).
void exchange(std::vector<double>& Q, int64_t n, int64_t i, int64_t q) {
  const double a = Q[i * n + i], b = Q[i * n + q], c = Q[q * n + i], e = Q[q * n + q];
  const double det = a * e - b * c;  // = Ginv_ii S_qq + W_iq^2 = rho^2
  RP_ASSERT(det > 0, "strong RRQR exchange with rho^2 = ", det);
  const double id = 1.0 / det;
  // Q_EE^{-1} = [[e, -b], [-c, a]] / det.
  std::vector<double> yi(n), yq(n), ci(n), cq(n);
  for (int64_t o = 0; o < n; ++o) {
    yi[o] = (e * Q[i * n + o] - b * Q[q * n + o]) * id;  // row i of Q_EE^{-1} Q_EO
    yq[o] = (-c * Q[i * n + o] + a * Q[q * n + o]) * id;
    ci[o] = Q[o * n + i];
    cq[o] = Q[o * n + q];
  }
  for (int64_t o = 0; o < n; ++o) {
    if (o == i || o == q) continue;
    double* qo = &Q[o * n];
    const double u = ci[o], v = cq[o];
    for (int64_t p = 0; p < n; ++p) qo[p] -= u * yi[p] + v * yq[p];
    qo[i] = (u * e - v * c) * id;  // row o of Q_OE Q_EE^{-1}
    qo[q] = (-u * b + v * a) * id;
  }
  for (int64_t o = 0; o < n; ++o) {
    Q[i * n + o] = -yi[o];
    Q[q * n + o] = -yq[o];
  }
  Q[i * n + i] = e * id;
  Q[i * n + q] = -b * id;
  Q[q * n + i] = -c * id;
  Q[q * n + q] = a * id;
  // Restore the layout: the new kept index to slot i, the newly discarded one to slot q.
  for (int64_t o = 0; o < n; ++o) std::swap(Q[i * n + o], Q[q * n + o]);
  for (int64_t o = 0; o < n; ++o) std::swap(Q[o * n + i], Q[o * n + q]);
}

// diag A of the Cholesky of G_KK in the current slot order; false if G_KK is not numerically
// positive definite. O(k^3 / 3).
bool cholesky_diag(const double* G, int64_t n, const std::vector<int64_t>& order, int64_t k,
                   std::vector<double>& diag) {
  std::vector<double> A(k * k);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) A[a * k + b] = G[order[a] * n + order[b]];
  if (LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', k, A.data(), k) != 0) return false;  // row-major 'U'
  diag.resize(k);
  for (int64_t a = 0; a < k; ++a) diag[a] = A[a * k + a];
  return true;
}

double min_diag_a(const double* G, int64_t n, const std::vector<int64_t>& order, int64_t k) {
  std::vector<double> diag;
  if (!cholesky_diag(G, n, order, k, diag)) return 0;
  return *std::min_element(diag.begin(), diag.end());
}

std::vector<int64_t> sorted_prefix(const std::vector<int64_t>& order, int64_t k) {
  std::vector<int64_t> kept(order.begin(), order.begin() + k);
  std::sort(kept.begin(), kept.end());
  return kept;
}

StrongRrqrResult strong_one(const double* G, const PivotedCholesky& pc, int64_t k,
                            const GreedyEval& ge, double f, int max_swaps) {
  const int64_t n = pc.n;
  StrongRrqrResult res;
  res.k = k;
  res.kept = sorted_prefix(pc.perm, k);
  if (k > pc.rank) {
    // A is singular: rho is unbounded and swaps are meaningless in the noise; keep greedy.
    res.rank_deficient = true;
    res.max_rho = k == n ? 0 : kInf;
    res.log_det_before = res.log_det_after = -kInf;
    return res;
  }
  if (k == n) {
    double ld = 0;
    for (int64_t m = 0; m < n; ++m) ld += std::log(pc.R[m * n + m]);
    res.log_det_before = res.log_det_after = ld;
    return res;
  }
  const double f2 = f * f;
  res.log_det_before = res.log_det_after = ge.log_det;
  res.max_rho = std::sqrt(ge.max_rho2);
  if (!(ge.max_rho2 > f2)) return res;
  if (max_swaps <= 0) {
    res.hit_swap_limit = true;
    return res;
  }
  if (!(ge.min_diag > kMinDiagA)) {
    res.stopped_small_diag = true;
    return res;
  }

  std::vector<int64_t> order(pc.perm);
  std::vector<double> Q;
  exchange_from_factor(G, pc, k, Q);
  Scan sc = scan_exchange(Q, n, k);
  bool small_diag = false;
  while (sc.max_rho2 > f2 && res.swaps < max_swaps) {
    // |r_mm| >= sigma_min(A) >= 1 / ||A^{-1}||_F = 1 / sqrt(trace Ginv): the exact O(k^3) check
    // runs only when this cheap bound does not already clear the threshold.
    if (!(1.0 / std::sqrt(sc.trace_ginv) > kMinDiagA) && !(min_diag_a(G, n, order, k) > kMinDiagA)) {
      small_diag = true;
      break;
    }
    res.swap_rho.push_back(std::sqrt(sc.max_rho2));
    exchange(Q, n, sc.i, k + sc.j);
    std::swap(order[sc.i], order[k + sc.j]);
    ++res.swaps;
    sc = scan_exchange(Q, n, k);
  }
  res.kept = sorted_prefix(order, k);
  res.max_rho = std::sqrt(std::max(sc.max_rho2, 0.0));
  std::vector<double> diag;
  if (res.swaps > 0 && cholesky_diag(G, n, order, k, diag)) {
    double ld = 0;
    for (double v : diag) ld += std::log(v);
    res.log_det_after = ld;
  } else {
    // Each swap multiplied |det A| by its rho (Gu & Eisenstat, Lemma 3.1).
    double ld = res.log_det_before;
    for (double r : res.swap_rho) ld += std::log(r);
    res.log_det_after = ld;
  }
  if (sc.max_rho2 > f2) {
    if (small_diag)
      res.stopped_small_diag = true;
    else
      res.hit_swap_limit = true;
  }
  return res;
}

}  // namespace

PivotedCholesky pivoted_cholesky(const double* G, int64_t n, double tol) {
  check_gram(G, n);
  rrqr_checks::check_rank_tol(tol);
  PivotedCholesky pc;
  pc.n = n;
  pc.perm.resize(n);
  std::iota(pc.perm.begin(), pc.perm.end(), int64_t{0});
  pc.R.assign(n * n, 0.0);
  std::vector<double> d(n);  // residual diagonal (squared residual column norms), permuted order
  double dmax = 0;
  for (int64_t j = 0; j < n; ++j) {
    d[j] = G[j * n + j];
    dmax = std::max(dmax, d[j]);
  }
  const double stop = tol * dmax;
  double* R = pc.R.data();
  for (int64_t j = 0; j < n; ++j) {
    int64_t p = j;
    for (int64_t l = j + 1; l < n; ++l)
      if (d[l] > d[p]) p = l;  // strict: the first maximum in the current order, like idamax
    if (!(d[p] > stop)) break;
    if (p != j) {
      std::swap(pc.perm[j], pc.perm[p]);
      std::swap(d[j], d[p]);
      for (int64_t q = 0; q < j; ++q) std::swap(R[q * n + j], R[q * n + p]);
    }
    const double r = std::sqrt(d[j]);
    double* rj = R + j * n;
    rj[j] = r;
    const double* gj = G + pc.perm[j] * n;
    for (int64_t l = j + 1; l < n; ++l) rj[l] = gj[pc.perm[l]];
    // Row j of R: (G_jl - sum_q R_qj R_ql) / r, accumulated row by row so the loops stay contiguous.
    for (int64_t q = 0; q < j; ++q) {
      const double a = R[q * n + j];
      if (a == 0) continue;
      const double* rq = R + q * n;
      for (int64_t l = j + 1; l < n; ++l) rj[l] -= a * rq[l];
    }
    const double inv = 1.0 / r;
    for (int64_t l = j + 1; l < n; ++l) {
      rj[l] *= inv;
      d[l] -= rj[l] * rj[l];
    }
    pc.rank = j + 1;
  }
  return pc;
}

std::vector<StrongRrqrResult> strong_rrqr_select_many(const double* G, const PivotedCholesky& pc,
                                                      const std::vector<int64_t>& ks, double f,
                                                      int max_swaps) {
  check_gram(G, pc.n);
  RP_ASSERT(static_cast<int64_t>(pc.perm.size()) == pc.n && static_cast<int64_t>(pc.R.size()) == pc.n * pc.n,
            "PivotedCholesky of inconsistent size");
  for (int64_t k : ks) check_k(k, pc.n);
  rrqr_checks::check_swap_params(f, max_swaps);
  const std::vector<GreedyEval> ge = greedy_evals(pc, ks);
  std::vector<StrongRrqrResult> out;
  out.reserve(ks.size());
  for (int64_t k : ks) out.push_back(strong_one(G, pc, k, ge[k], f, max_swaps));
  return out;
}

std::vector<StrongRrqrResult> strong_rrqr_select_many(const double* G, int64_t n,
                                                      const std::vector<int64_t>& ks, double f,
                                                      int max_swaps) {
  check_gram(G, n);
  for (int64_t k : ks) check_k(k, n);
  return strong_rrqr_select_many(G, pivoted_cholesky(G, n), ks, f, max_swaps);
}

StrongRrqrResult strong_rrqr_select(const double* G, int64_t n, int64_t k, double f, int max_swaps) {
  return strong_rrqr_select_many(G, n, std::vector<int64_t>{k}, f, max_swaps).front();
}

std::vector<int64_t> qrcp_select(const PivotedCholesky& pc, int64_t k) {
  check_k(k, pc.n);
  return sorted_prefix(pc.perm, k);
}

std::vector<int64_t> qrcp_select(const double* G, int64_t n, int64_t k) {
  check_gram(G, n);
  check_k(k, n);
  return qrcp_select(pivoted_cholesky(G, n), k);
}

}  // namespace rankprune
