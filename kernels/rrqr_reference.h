// The paper's selection procedure, kept as the benchmark baseline and the test oracle for
// kernels/rrqr.h: QR with column pivoting of the stacked activation matrix M (LAPACK dgeqp3),
// then Gu–Eisenstat strong RRQR where every swap re-runs an unpivoted QR (dgeqrf) of M with the
// new column order and recomputes rho from that R by triangular solves.
//
// M: [rows, n] column-major (LAPACK's layout, leading dimension rows), rows >= n >= 1.
// Cost: dgeqp3 ~2 rows n^2 (mostly BLAS-2), then ~2 rows n^2 per swap — per swap as much as the
// whole Gram of M, which is why kernels/rrqr.h works from G instead.
// Same conventions as strong_rrqr_select: slots in the current column order, the kept slot
// replaced in place, row-major argmax with first-maximum ties, stop when max rho <= f, at
// max_swaps, or when min |diag A| <= kMinDiagA. No rank handling beyond that last guard.
#pragma once

#include <cstdint>
#include <vector>

namespace rankprune {

struct ReferenceRrqrResult {
  int64_t k = 0;
  std::vector<int64_t> kept;     // [k] ascending
  int swaps = 0;
  std::vector<double> swap_rho;  // rho of each swap
  double max_rho = 0;            // final max rho (0 when k == n)
  double log_det_before = 0;     // log |det A| from dgeqp3's R
  double log_det_after = 0;
  bool hit_swap_limit = false;
  bool stopped_small_diag = false;
};

// dgeqp3 of M (all columns free). Returns the 0-based pivot order; when R is non-null it receives
// dgeqp3's R as [n, n] row-major (upper triangular, signs as LAPACK leaves them).
std::vector<int64_t> lapack_qrcp_pivots(const double* M, int64_t rows, int64_t n,
                                        std::vector<double>* R = nullptr);

// One dgeqp3 of M shared by every k (its pivots do not depend on k), then the re-QR swap loop
// per k. One result per entry of ks, in order.
std::vector<ReferenceRrqrResult> strong_rrqr_reference_many(const double* M, int64_t rows, int64_t n,
                                                            const std::vector<int64_t>& ks,
                                                            double f = 1.5, int max_swaps = 20);
ReferenceRrqrResult strong_rrqr_reference(const double* M, int64_t rows, int64_t n, int64_t k,
                                          double f = 1.5, int max_swaps = 20);

}  // namespace rankprune
