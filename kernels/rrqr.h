// Rank-revealing channel selection from a Gram matrix G = M^T M (docs/method.md §3).
//
// M is a [rows, n] activation matrix (tokens x channels of one head); only G enters here, so the
// cost is independent of the number of tokens:
//
//   pivoted_cholesky      greedy diagonal pivoting, P^T G P = R^T R. Same pivots as LAPACK's QR with
//                         column pivoting (dgeqp3) of M, and R equal to its R up to row signs.
//                         O(n^3 / 3).
//   qrcp_select           the first k greedy pivots.
//   strong_rrqr_select    the first k greedy pivots, then Gu–Eisenstat swaps until every
//                         rho_ij <= f (or the swap limit). O(n^3 / 6) for the greedy state of all
//                         k together; a (head, k) that needs swaps pays one O(n^3) set-up from the
//                         factor, O(n^2) per swap (a 2x2 principal pivot, see rrqr.cpp) and one
//                         O(k^3 / 3) Cholesky of G_KK for the final log |det A|.
//   strong_rrqr_select_many  the same for several k from one factorisation (a ratio sweep).
//
// Threads: none of its own; BLAS/LAPACK is called on k x k blocks only when swaps are needed.
// A multithreaded OpenBLAS spends more on hand-offs than on such blocks, so callers that run many
// heads are better off with OPENBLAS_NUM_THREADS=1 and parallelism over heads.
// All matrices are row-major float64 and plain host memory (no LibTorch). G must be symmetric
// positive semi-definite; only finite values are accepted. Channel ids are 0-based columns of M.
// Input errors (k outside 1..n, n < 1, f < 1, non-finite G) throw rankprune::InputError, because
// k comes from the user's pruning ratio; broken internal invariants use RP_ASSERT.
#pragma once

#include <cstdint>
#include <vector>

namespace rankprune {

// Rank cut of the pivoted Cholesky, relative to the largest diagonal of G. The Gram form squares
// the conditioning, so a residual diagonal below ~1e-12 of the largest is rounding noise from
// forming G (relative column residual ~1e-6): stop there.
constexpr double kDefaultRankTol = 1e-12;
// Gu–Eisenstat bound and swap limit used by the paper.
constexpr double kDefaultSwapBound = 1.5;
constexpr int kDefaultMaxSwaps = 20;
// Swaps stop once min |diag A| (absolute, like the paper's R of the raw activations) falls to this.
constexpr double kMinDiagA = 1e-9;

struct PivotedCholesky {
  int64_t n = 0;
  int64_t rank = 0;           // number of pivots taken before the residual fell to tol * max diag
  std::vector<int64_t> perm;  // [n] pivot order: column perm[j] of M is the j-th pivot
  std::vector<double> R;      // [n, n] row-major, upper triangular, R^T R = P^T G P (rows >= rank
                              // are zero; diag R >= 0 and non-increasing up to rounding)
};

// Greedy diagonal pivoting: at step j the largest remaining diagonal of the Schur complement
// (the largest residual column norm of M); a tie goes to the first candidate in the current
// permuted order, and the pivot is swapped into place (not rotated), exactly as dgeqp3 does.
// Stops when the largest remaining diagonal is <= tol * max_i G_ii; the rest of perm keeps the
// current order. G: [n, n]. O(n^3 / 3), no allocation beyond the result.
PivotedCholesky pivoted_cholesky(const double* G, int64_t n, double tol = kDefaultRankTol);

struct StrongRrqrResult {
  int64_t k = 0;
  std::vector<int64_t> kept;  // [k] original channel ids, ascending
  int swaps = 0;
  std::vector<double> swap_rho;  // rho of each swap = the factor it multiplied |det A| by (> f)
  double max_rho = 0;            // final max_ij rho_ij (0 when k == n; +inf when rank_deficient);
                                 // after swaps it comes from the updated exchange matrix
  double log_det_before = 0;     // log |det A| of the greedy selection (-inf when rank < k)
  double log_det_after = 0;      // log |det A| of the final selection
  bool hit_swap_limit = false;   // stopped at max_swaps with max_rho still > f
  bool stopped_small_diag = false;  // stopped because min |diag A| <= kMinDiagA
  bool rank_deficient = false;   // rank(G) < k: greedy pivots kept, no swaps attempted
};

// Gu–Eisenstat strong RRQR in Gram form. For kept set K, discarded D, Ginv = G_KK^{-1}:
//   A^{-1} B = Ginv G_KD,  ||row_i(A^{-1})||^2 = Ginv_ii,  ||C[:, j]||^2 = S_jj,
//   S = G_DD - G_DK Ginv G_KD,  rho_ij = sqrt((A^{-1} B)_ij^2 + S_jj Ginv_ii).
// While max rho > f, swaps < max_swaps and min |diag A| > kMinDiagA: swap the kept slot i with
// the discarded slot j of the argmax (slots in the current column order, kept slot i replaced in
// place; ties go to the smallest i, then the smallest j, like a row-major argmax). k in 1..n.
StrongRrqrResult strong_rrqr_select(const double* G, int64_t n, int64_t k,
                                    double f = kDefaultSwapBound, int max_swaps = kDefaultMaxSwaps);

// One pivoted Cholesky, then strong RRQR for every k in ks (any order, repeats allowed).
// Returns one result per entry of ks, in the same order.
std::vector<StrongRrqrResult> strong_rrqr_select_many(const double* G, int64_t n,
                                                      const std::vector<int64_t>& ks,
                                                      double f = kDefaultSwapBound,
                                                      int max_swaps = kDefaultMaxSwaps);
// The same from a factorisation the caller already has (pc must come from this G).
std::vector<StrongRrqrResult> strong_rrqr_select_many(const double* G, const PivotedCholesky& pc,
                                                      const std::vector<int64_t>& ks,
                                                      double f = kDefaultSwapBound,
                                                      int max_swaps = kDefaultMaxSwaps);

// Greedy pivots only: the first k entries of pivoted_cholesky(G).perm, ascending. k in 1..n.
std::vector<int64_t> qrcp_select(const double* G, int64_t n, int64_t k);
std::vector<int64_t> qrcp_select(const PivotedCholesky& pc, int64_t k);

}  // namespace rankprune
