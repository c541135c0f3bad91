// Device half of the CUDA channel selection (interface and contract in rrqr_cuda.h; host code in
// rrqr_cuda.cu), and the host code that reads the kernel's outputs. Read rrqr.cpp first:
// every step here is the same step there, in the same order, with the same tie-breaking; only the
// loops are spread over the threads of a block.
//
// Launch: grid = batch (one block per problem), kThreads = 256 threads per block. A block walks
// its problem's steps one after the other (pivots, greedy rho, then each distinct k) and spreads
// each step over its threads with strided loops; __syncthreads() separates every step that reads
// what another thread wrote. head_k_dim is 64..256, so a block has 64..256 columns to share out;
// batch = layers x heads (a few hundred) fills the GPU's 132 SMs.
//
// Memory: a [256, 256] double matrix is 512 KB and shared memory is at most 227 KB per block, so
// the matrices (R, the greedy X, the exchange matrix Q) and the length-n vectors live in a global
// workspace per problem (3 n^2 + 10 (n + 1) doubles + 2 n int64; n = 256: 1.5 MB; a block's
// working set fits the 50 MB L2, a whole batch of hundreds does not). Shared memory holds only
// the block reductions' kThreads (value, index) pairs: 4 KB. __syncthreads() orders global as
// well as shared memory within a block, which is all the communication there is.
//
// Rounding: rrqr_cuda.cu, which includes this, is compiled with --fmad=false
// (kernels/CMakeLists.txt). The CPU code is built for baseline x86-64 (no FMA) in ISO C++ mode
// (no contraction), and IEEE division and sqrt are correctly rounded on both, so the pivoted
// Cholesky and the greedy rho, written here with the CPU's expressions and summation orders,
// reproduce the CPU's roundings (the emulation tests check this bit for bit on the CPU, the GPU
// tests to a tolerance). The swap phase builds its exchange matrix from the factor by plain
// substitutions where the CPU calls LAPACK (potri, trsm, syrk / trmm), so from there on values
// differ in the last bits; the discrete outcomes (argmax, the stop rules) agree except at
// near-ties, which the tests exclude.
//
// Costs per problem (block of 256 threads): pivoted Cholesky n^3 / 3 flops; greedy rho of all
// requested k n^3 / 6 together; per k that needs swaps an O(n^3) set-up, O(n^2) per swap and an
// O(k^3 / 3) Cholesky at the end — as on the CPU, but without BLAS-3 blocking or shared-memory
// tiling: simple over fast (it is expected to be latency-bound; no timing yet, written without a
// GPU).
//
// Included by rrqr_cuda.cu and by tests/gpu/rrqr_emulation_cases.h, which runs this kernel on the
// CPU with std::threads standing in for a block (4 or 256 of them: RP_RRQR_CUDA_THREADS) to test
// its logic where there is no GPU. Everything is in an anonymous namespace so that each includer
// gets its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/rrqr_cuda.h"
#include "kernels/rrqr.h"

#ifdef __CUDACC__
#include <math_constants.h>
#endif

#ifndef RP_RRQR_CUDA_THREADS
#define RP_RRQR_CUDA_THREADS 256
#endif

namespace rankprune {
namespace {

constexpr int kThreads = RP_RRQR_CUDA_THREADS;  // per block
static_assert(kThreads > 0 && (kThreads & (kThreads - 1)) == 0, "the tree reductions halve the block");
constexpr int64_t kNone = -1;  // "no candidate" in an argmax

// What happened to one (problem, k), written by the kernel, read by assemble() on the host. The
// paths are the branches of strong_one() in rrqr.cpp, in its order.
enum Path : int {
  kRankDeficient = 1,   // k > rank
  kKeepAll = 2,         // k == n
  kGreedyStrong = 3,    // greedy max rho <= f
  kNoSwapsAllowed = 4,  // max_swaps == 0
  kGreedySmallDiag = 5, // greedy min |diag A| <= kMinDiagA
  kSwapLoop = 6,        // exchange matrix built, swaps run (possibly none)
};
enum Flag : int {
  kFlagSmallDiag = 1,     // the swap loop stopped on min |diag A|
  kFlagCholeskyOk = 2,    // the final Cholesky of G_KK succeeded (cdiag valid)
  kFlagBadPivot = 4,      // an exchange met rho^2 <= 0 (rrqr.cpp asserts)
  kFlagRecordFull = 8,    // more than kCudaMaxRecordedSwaps swaps
};

// Device pointers of one launch. Per-problem arrays are indexed by blockIdx.x; per-(problem, k)
// outputs by blockIdx.x * nk + kk (kk indexes kvals).
struct Args {
  const double* G;  // [batch, n, n]
  int64_t n;
  double stop_tol;  // rank tolerance (relative to max diag G)
  // workspace
  double* R;        // [batch, n, n] the factor (zeroed by the kernel)
  double* X;        // [batch, n, n] greedy W^(m), then A^{-1} and G_KK's Cholesky (nullptr if nk == 0)
  double* Q;        // [batch, n, n] exchange matrix (nullptr if nk == 0)
  double* vec;      // [batch, kVecs, n + 1]
  int64_t* perm;    // [batch, n] pivot order (output too)
  int64_t* order;   // [batch, n] current slot order of the swap loop (nullptr if nk == 0)
  int64_t* rank;    // [batch]
  double* rdiag;    // [batch, n] diag R
  // selection (nk == 0: factor only)
  const unsigned char* want;  // [n + 1] 1 where k is requested
  const int64_t* kvals;       // [nk] distinct requested k, ascending
  int64_t nk;
  double f2;
  int max_swaps;
  int record;  // swap_rho slots per (problem, k) = min(max_swaps, kCudaMaxRecordedSwaps)
  // per (problem, k) outputs
  int* path;
  int* swaps;
  int* flags;
  double* max_rho2;   // greedy max rho^2, or the last scan's after the swap loop
  double* swap_rho;   // [batch * nk, record]
  double* cdiag;      // [batch * nk, n] diag of chol(G_KK) in the final order
  int64_t* kept;      // [batch * nk, n] final slot order (first k kept)
};

// Vectors of the per-problem workspace `vec`, each n + 1 doubles.
enum Vec : int { kD, kG, kS, kYi, kYq, kCi, kCq, kDiag, kGeRho2, kGeMinDiag, kVecs };

struct Scratch {
  double v[kThreads];
  int64_t i[kThreads];
  double scalar;
};

// ------------------------------------------------------------------------------------------------
// Block reductions. Every thread passes its own candidate and gets the block's result; they end
// with a barrier, so the scratch may be reused at once.

// (a, ia) beats (b, ib): larger value, or an equal value at a smaller index — the first maximum
// of a serial scan in index order (rrqr.cpp's strict `>` loops). kNone never wins. (No value is
// NaN: the input is checked finite.)
__device__ bool beats(double a, int64_t ia, double b, int64_t ib) {
  if (ia == kNone) return false;
  if (ib == kNone) return true;
  return a > b || (a == b && ia < ib);
}

__device__ void block_argmax(double& v, int64_t& idx, Scratch& s) {
  const int t = threadIdx.x;
  s.v[t] = v;
  s.i[t] = idx;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (t < half && beats(s.v[t + half], s.i[t + half], s.v[t], s.i[t])) {
      s.v[t] = s.v[t + half];
      s.i[t] = s.i[t + half];
    }
    __syncthreads();
  }
  v = s.v[0];
  idx = s.i[0];
  __syncthreads();
}

// max as std::max(best, v) folds it: (best < v) ? v : best, so a NaN candidate is ignored.
__device__ double block_max(double v, Scratch& s) {
  const int t = threadIdx.x;
  s.v[t] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (t < half && s.v[t] < s.v[t + half]) s.v[t] = s.v[t + half];
    __syncthreads();
  }
  v = s.v[0];
  __syncthreads();
  return v;
}

__device__ inline double max0(double x) { return x < 0.0 ? 0.0 : x; }  // std::max(x, 0.0)

template <typename T>
__device__ inline void swap_values(T& a, T& b) {
  const T t = a;
  a = b;
  b = t;
}

// ------------------------------------------------------------------------------------------------
// pivoted_cholesky() of rrqr.cpp. Returns the rank (the same value in every thread).
__device__ int64_t pivoted_cholesky_block(const double* G, int64_t n, double tol, double* R, double* d,
                                          int64_t* perm, Scratch& s) {
  const int t = threadIdx.x;
  for (int64_t e = t; e < n * n; e += kThreads) R[e] = 0.0;
  double local_max = 0.0;
  for (int64_t j = t; j < n; j += kThreads) {
    perm[j] = j;
    d[j] = G[j * n + j];
    if (local_max < d[j]) local_max = d[j];
  }
  const double dmax = block_max(local_max, s);  // max(0, max_j G_jj), as rrqr.cpp's dmax
  const double stop = tol * dmax;
  int64_t rank = 0;
  for (int64_t j = 0; j < n; ++j) {
    // The pivot: the first maximum of d over slots j..n-1 in the current order.
    double pv = 0.0;
    int64_t p = kNone;
    for (int64_t l = j + t; l < n; l += kThreads)
      if (p == kNone || d[l] > pv) {
        pv = d[l];
        p = l;
      }
    block_argmax(pv, p, s);
    if (!(pv > stop)) break;
    if (p != j) {
      if (t == 0) {
        swap_values(perm[j], perm[p]);
        swap_values(d[j], d[p]);
      }
      for (int64_t q = t; q < j; q += kThreads) swap_values(R[q * n + j], R[q * n + p]);
    }
    __syncthreads();
    const double r = sqrt(d[j]);
    const double inv = 1.0 / r;
    const double* gj = G + perm[j] * n;
    // Row j of R, one column l per thread: (G_jl - sum_q R_qj R_ql) * inv with q ascending, the
    // same sequence of roundings as rrqr.cpp's row-by-row accumulation.
    for (int64_t l = j + 1 + t; l < n; l += kThreads) {
      double acc = gj[perm[l]];
      for (int64_t q = 0; q < j; ++q) {
        const double a = R[q * n + j];
        if (a == 0) continue;
        acc -= a * R[q * n + l];
      }
      acc *= inv;
      R[j * n + l] = acc;
      d[l] -= acc * acc;
    }
    if (t == 0) R[j * n + j] = r;
    rank = j + 1;
    __syncthreads();
  }
  return rank;
}

// ------------------------------------------------------------------------------------------------
// greedy_evals() of rrqr.cpp: for each wanted k <= rank, k < n, the greedy max rho^2 and
// min |diag A|, into ge_rho2[k], ge_min_diag[k]. (log |det A| is summed on the host from diag R,
// with the CPU's std::log.)
__device__ void greedy_evals_block(const Args& a, int64_t n, int64_t rank, const double* R, double* X,
                                   double* g, double* sv, double* ge_rho2, double* ge_min_diag, Scratch& s) {
  const int t = threadIdx.x;
  int64_t kmax = 0;
  for (int64_t k = 1; k <= n; ++k)
    if (a.want[k] && k <= rank && k < n) kmax = k;
  if (kmax == 0) return;
  for (int64_t e = t; e < n * n; e += kThreads) X[e] = R[e];
  for (int64_t i = t; i < n; i += kThreads) g[i] = 0.0;
  __syncthreads();
  double min_diag = CUDART_INF;
  for (int64_t m = 0; m < kmax; ++m) {
    const double r = R[m * n + m];
    const double inv = 1.0 / r;
    double* xm = X + m * n;
    for (int64_t c = m + 1 + t; c < n; c += kThreads) xm[c] *= inv;
    __syncthreads();
    // Rows i < m, columns c > m: one step of back substitution. Column m itself is only read.
    const int64_t w = n - m - 1;
    for (int64_t e = t; e < m * w; e += kThreads) {
      const int64_t i = e / w, c = m + 1 + e % w;
      const double ti = X[i * n + m];
      if (ti == 0) continue;
      X[i * n + c] -= ti * xm[c];
    }
    for (int64_t i = t; i < m; i += kThreads) {
      const double ti = X[i * n + m];
      if (ti == 0) continue;
      g[i] += (ti * inv) * (ti * inv);
    }
    if (t == 0) g[m] = inv * inv;
    if (r < min_diag) min_diag = r;  // std::min(min_diag, r)
    __syncthreads();

    const int64_t k = m + 1;
    if (!a.want[k]) continue;
    // ||C[:, c]||^2 from R's own entries, p ascending as in rrqr.cpp.
    for (int64_t c = k + t; c < n; c += kThreads) {
      double acc = 0;
      for (int64_t p = k; p <= c && p < rank; ++p) acc += R[p * n + c] * R[p * n + c];
      sv[c] = acc;
    }
    __syncthreads();
    double best = 0;
    const int64_t dd = n - k;
    for (int64_t e = t; e < k * dd; e += kThreads) {
      const int64_t i = e / dd, c = k + e % dd;
      const double x = X[i * n + c];
      const double v = x * x + sv[c] * g[i];
      if (best < v) best = v;
    }
    best = block_max(best, s);  // max is exact: the order of the fold does not matter
    if (t == 0) {
      ge_rho2[k] = best;
      ge_min_diag[k] = min_diag;
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------------------
// exchange_from_factor() of rrqr.cpp: Q = [[Ginv, -W], [W^T, S]] for the greedy order with the
// first k kept, from R = [[A, B], [0, C]]. Ainv goes to the scratch X (leading dimension n).
__device__ void exchange_from_factor_block(const double* G, int64_t n, int64_t k, const double* R,
                                           const int64_t* perm, double* X, double* Q) {
  const int t = threadIdx.x;
  const int64_t d = n - k;
  // W = A^{-1} B, one column c of B per thread, by back substitution. W[:, c] is kept in row k + c
  // of Q (the W^T block, columns < k), which only this thread touches.
  for (int64_t c = t; c < d; c += kThreads) {
    double* wc = Q + (k + c) * n;  // wc[i] = W[i, c]
    for (int64_t i = k - 1; i >= 0; --i) {
      double acc = R[i * n + k + c];
      for (int64_t p = i + 1; p < k; ++p) acc -= R[i * n + p] * wc[p];
      wc[i] = acc / R[i * n + i];
    }
    for (int64_t i = 0; i < k; ++i) Q[i * n + k + c] = -wc[i];
  }
  // A^{-1} (upper triangular), one column c per thread: A Ainv[:, c] = e_c. Rows > c stay unset and
  // are never read.
  for (int64_t c = t; c < k; c += kThreads)
    for (int64_t i = c; i >= 0; --i) {
      double acc = (i == c) ? 1.0 : 0.0;
      for (int64_t p = i + 1; p <= c; ++p) acc -= R[i * n + p] * X[p * n + c];
      X[i * n + c] = acc / R[i * n + i];
    }
  __syncthreads();
  // Ginv = (A^T A)^{-1} = Ainv Ainv^T: Ginv[a, b] = sum_{p >= max(a, b)} Ainv[a, p] Ainv[b, p].
  for (int64_t e = t; e < k * k; e += kThreads) {
    const int64_t ra = e / k, rb = e % k;
    if (rb < ra) continue;
    double acc = 0;
    for (int64_t p = rb; p < k; ++p) acc += X[ra * n + p] * X[rb * n + p];
    Q[ra * n + rb] = acc;
    Q[rb * n + ra] = acc;
  }
  // S = Gram of C: G_DD - B^T B when k is small (2k < d, rrqr.cpp's syrk branch), else C^T C with
  // C = R[k:, k:] upper triangular (the trmm branch). Rows of R past the rank are zero.
  const bool from_g = 2 * k < d;
  for (int64_t e = t; e < d * d; e += kThreads) {
    const int64_t ra = e / d, rb = e % d;
    if (rb < ra) continue;
    double acc;
    if (from_g) {
      acc = G[perm[k + ra] * n + perm[k + rb]];
      for (int64_t p = 0; p < k; ++p) acc -= R[p * n + k + ra] * R[p * n + k + rb];
    } else {
      acc = 0;
      for (int64_t p = 0; p <= ra; ++p) acc += R[(k + p) * n + k + ra] * R[(k + p) * n + k + rb];
    }
    Q[(k + ra) * n + k + rb] = acc;
    Q[(k + rb) * n + k + ra] = acc;
  }
  __syncthreads();
}

struct ScanResult {
  double max_rho2;
  int64_t i, j;  // kept slot, discarded slot (0-based within D)
  double trace_ginv;
};

// scan_exchange() of rrqr.cpp: row-major argmax of rho^2 over kept slots i and discarded slots j,
// the first maximum winning (block_argmax on the row-major index i * (n - k) + j).
__device__ ScanResult scan_exchange_block(const double* Q, int64_t n, int64_t k, Scratch& s) {
  const int t = threadIdx.x;
  const int64_t d = n - k;
  if (t == 0) {
    double tr = 0;  // summed serially, i ascending, as rrqr.cpp does
    for (int64_t i = 0; i < k; ++i) tr += max0(Q[i * n + i]);
    s.scalar = tr;
  }
  double best = -1;  // rrqr.cpp starts at -1: any rho^2 >= 0 beats it
  int64_t at = kNone;
  for (int64_t e = t; e < k * d; e += kThreads) {
    const int64_t i = e / d, c = k + e % d;
    const double gi = max0(Q[i * n + i]);
    const double q = Q[i * n + c];
    const double v = q * q + gi * max0(Q[c * n + c]);
    if (v > best) {
      best = v;
      at = e;
    }
  }
  block_argmax(best, at, s);  // its barriers also publish s.scalar
  ScanResult r;
  r.trace_ginv = s.scalar;
  r.max_rho2 = (at == kNone) ? -1.0 : best;
  r.i = (at == kNone) ? 0 : at / d;
  r.j = (at == kNone) ? 0 : at % d;
  __syncthreads();  // everyone has read s.scalar before it is written again
  return r;
}

// exchange() of rrqr.cpp: principal pivot on {i, q}, then the swap of rows/columns i and q.
// Returns false (in every thread, nothing written) if rho^2 = det <= 0.
__device__ bool exchange_block(double* Q, int64_t n, int64_t i, int64_t q, double* yi, double* yq, double* ci,
                               double* cq) {
  const int t = threadIdx.x;
  const double a = Q[i * n + i], b = Q[i * n + q], c = Q[q * n + i], e = Q[q * n + q];
  const double det = a * e - b * c;  // = Ginv_ii S_qq + W_iq^2 = rho^2
  if (!(det > 0)) {
    __syncthreads();  // all have read Q before anyone writes it again
    return false;
  }
  const double id = 1.0 / det;
  for (int64_t o = t; o < n; o += kThreads) {
    yi[o] = (e * Q[i * n + o] - b * Q[q * n + o]) * id;  // row i of Q_EE^{-1} Q_EO
    yq[o] = (-c * Q[i * n + o] + a * Q[q * n + o]) * id;
    ci[o] = Q[o * n + i];
    cq[o] = Q[o * n + q];
  }
  __syncthreads();
  // Rows o other than i and q; columns i and q of those rows get Q_OE Q_EE^{-1} (rrqr.cpp updates
  // them with the rest and then overwrites them: the same final values).
  for (int64_t el = t; el < n * n; el += kThreads) {
    const int64_t o = el / n, p = el % n;
    if (o == i || o == q) continue;
    const double u = ci[o], v = cq[o];
    if (p == i)
      Q[el] = (u * e - v * c) * id;
    else if (p == q)
      Q[el] = (-u * b + v * a) * id;
    else
      Q[el] -= u * yi[p] + v * yq[p];
  }
  // Rows i and q (disjoint from the rows above).
  for (int64_t o = t; o < n; o += kThreads) {
    if (o == i || o == q) continue;
    Q[i * n + o] = -yi[o];
    Q[q * n + o] = -yq[o];
  }
  if (t == 0) {
    Q[i * n + i] = e * id;
    Q[i * n + q] = -b * id;
    Q[q * n + i] = -c * id;
    Q[q * n + q] = a * id;
  }
  __syncthreads();
  // Restore the layout: the new kept index to slot i, the newly discarded one to slot q. All row
  // swaps, then all column swaps, as rrqr.cpp.
  for (int64_t o = t; o < n; o += kThreads) swap_values(Q[i * n + o], Q[q * n + o]);
  __syncthreads();
  for (int64_t o = t; o < n; o += kThreads) swap_values(Q[o * n + i], Q[o * n + q]);
  __syncthreads();
  return true;
}

// cholesky_diag() of rrqr.cpp: diag of the Cholesky factor of G_KK in the current slot order,
// right-looking, the upper triangle of the scratch A (leading dimension n). Returns false (in every
// thread) if G_KK is not numerically positive definite (a pivot <= 0 or NaN, as dpotrf reports).
__device__ bool cholesky_diag_block(const double* G, int64_t n, const int64_t* order, int64_t k, double* A,
                                    double* diag) {
  const int t = threadIdx.x;
  for (int64_t e = t; e < k * k; e += kThreads) {
    const int64_t ra = e / k, rb = e % k;
    A[ra * n + rb] = G[order[ra] * n + order[rb]];
  }
  __syncthreads();
  for (int64_t j = 0; j < k; ++j) {
    const double ajj = A[j * n + j];  // last written before the previous barrier
    if (!(ajj > 0)) {
      __syncthreads();  // all have read A before a caller reuses it
      return false;
    }
    const double r = sqrt(ajj);
    if (t == 0) diag[j] = r;  // A[j, j] itself is not rewritten: other threads may still read it
    for (int64_t l = j + 1 + t; l < k; l += kThreads) A[j * n + l] /= r;
    __syncthreads();
    const int64_t w = k - j - 1;
    for (int64_t e = t; e < w * w; e += kThreads) {
      const int64_t ra = j + 1 + e / w, rb = j + 1 + e % w;
      if (rb < ra) continue;
      A[ra * n + rb] -= A[j * n + ra] * A[j * n + rb];
    }
    __syncthreads();
  }
  return true;
}

// min_diag_a() of rrqr.cpp: min diag A of G_KK's Cholesky, 0 if it fails.
__device__ double min_diag_a_block(const double* G, int64_t n, const int64_t* order, int64_t k, double* A,
                                   double* diag) {
  if (!cholesky_diag_block(G, n, order, k, A, diag)) return 0;
  double m = diag[0];
  for (int64_t j = 1; j < k; ++j)
    if (diag[j] < m) m = diag[j];
  __syncthreads();  // diag is scratch: nobody overwrites it before all have read it
  return m;
}

// ------------------------------------------------------------------------------------------------
// strong_one() of rrqr.cpp for one (problem, k), up to what needs std::log (done on the host).
__device__ void strong_one_block(const Args& a, int64_t b, int64_t kk, int64_t rank, const double* G,
                                 const double* R, const int64_t* perm, double* X, double* Q, int64_t* order,
                                 double* vec, Scratch& s) {
  const int t = threadIdx.x;
  const int64_t n = a.n, k = a.kvals[kk], o = b * a.nk + kk;
  const int64_t stride = n + 1;
  int path;
  if (k > rank) {
    path = kRankDeficient;
  } else if (k == n) {
    path = kKeepAll;
  } else {
    const double rho2 = vec[kGeRho2 * stride + k];
    if (!(rho2 > a.f2))
      path = kGreedyStrong;
    else if (a.max_swaps <= 0)
      path = kNoSwapsAllowed;
    else if (!(vec[kGeMinDiag * stride + k] > kMinDiagA))
      path = kGreedySmallDiag;
    else
      path = kSwapLoop;
    if (t == 0) a.max_rho2[o] = rho2;
  }
  if (t == 0) {
    a.path[o] = path;
    a.swaps[o] = 0;
    a.flags[o] = 0;
  }
  if (path != kSwapLoop) return;

  for (int64_t j = t; j < n; j += kThreads) order[j] = perm[j];
  exchange_from_factor_block(G, n, k, R, perm, X, Q);  // ends with a barrier (order published too)
  ScanResult sc = scan_exchange_block(Q, n, k, s);
  int swaps = 0, flags = 0;
  double* diag = vec + kDiag * stride;
  while (sc.max_rho2 > a.f2 && swaps < a.max_swaps) {
    // |r_mm| >= sigma_min(A) >= 1 / sqrt(trace Ginv): the exact check only when the bound fails.
    if (!(1.0 / sqrt(sc.trace_ginv) > kMinDiagA) && !(min_diag_a_block(G, n, order, k, X, diag) > kMinDiagA)) {
      flags |= kFlagSmallDiag;
      break;
    }
    if (swaps >= a.record) {
      flags |= kFlagRecordFull;
      break;
    }
    if (t == 0) a.swap_rho[o * a.record + swaps] = sqrt(sc.max_rho2);
    if (!exchange_block(Q, n, sc.i, k + sc.j, vec + kYi * stride, vec + kYq * stride, vec + kCi * stride,
                        vec + kCq * stride)) {
      flags |= kFlagBadPivot;
      break;
    }
    if (t == 0) swap_values(order[sc.i], order[k + sc.j]);
    ++swaps;
    __syncthreads();
    sc = scan_exchange_block(Q, n, k, s);
  }
  for (int64_t j = t; j < n; j += kThreads) a.kept[o * n + j] = order[j];
  if (swaps > 0 && !(flags & (kFlagBadPivot | kFlagRecordFull)) &&
      cholesky_diag_block(G, n, order, k, X, a.cdiag + o * n))
    flags |= kFlagCholeskyOk;
  if (t == 0) {
    a.swaps[o] = swaps;
    a.flags[o] = flags;
    a.max_rho2[o] = sc.max_rho2;
  }
  __syncthreads();  // the next k reuses order, X, Q and vec
}

__global__ void __launch_bounds__(kThreads) rrqr_kernel(Args a) {
  __shared__ Scratch s;
  const int64_t b = blockIdx.x, n = a.n, nn = n * n, stride = n + 1;
  const double* G = a.G + b * nn;
  double* R = a.R + b * nn;
  double* vec = a.vec + b * kVecs * stride;
  int64_t* perm = a.perm + b * n;
  const int64_t rank = pivoted_cholesky_block(G, n, a.stop_tol, R, vec + kD * stride, perm, s);
  for (int64_t j = threadIdx.x; j < n; j += kThreads) a.rdiag[b * n + j] = R[j * n + j];
  if (threadIdx.x == 0) a.rank[b] = rank;
  if (a.nk == 0) return;
  double* X = a.X + b * nn;
  double* Q = a.Q + b * nn;
  greedy_evals_block(a, n, rank, R, X, vec + kG * stride, vec + kS * stride, vec + kGeRho2 * stride,
                     vec + kGeMinDiag * stride, s);
  __syncthreads();
  for (int64_t kk = 0; kk < a.nk; ++kk)
    strong_one_block(a, b, kk, rank, G, R, perm, X, Q, a.order + b * n, vec, s);
}

// ------------------------------------------------------------------------------------------------
// Host half: the kernel's outputs, copied back, and strong_one()'s remaining steps.

std::vector<int64_t> sorted_prefix(const int64_t* order, int64_t k) {
  std::vector<int64_t> kept(order, order + k);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// One launch over the batch: the factor always, the selection for `kvals` when non-empty.
struct Launch {
  int64_t batch = 0, n = 0, nk = 0;
  int max_swaps = 0, record = 0;
  std::vector<int64_t> rank, perm;
  std::vector<double> rdiag, R;  // R only when asked for
  std::vector<int> path, swaps, flags;
  std::vector<double> max_rho2, swap_rho, cdiag;
  std::vector<int64_t> kept;
};

// The host half of strong_one() in rrqr.cpp: the fields from the kernel's path and the log-dets
// with std::log, summed in the CPU's order.
StrongRrqrResult assemble(const Launch& L, int64_t b, int64_t kk, int64_t k, double f) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const int64_t n = L.n, o = b * L.nk + kk;
  const int64_t* perm = &L.perm[b * n];
  const double* rdiag = &L.rdiag[b * n];
  StrongRrqrResult res;
  res.k = k;
  res.kept = sorted_prefix(perm, k);
  const int path = L.path[o];
  if (path == kRankDeficient) {
    res.rank_deficient = true;
    res.max_rho = k == n ? 0 : kInf;
    res.log_det_before = res.log_det_after = -kInf;
    return res;
  }
  double ld = 0;
  for (int64_t m = 0; m < k; ++m) ld += std::log(rdiag[m]);
  res.log_det_before = res.log_det_after = ld;
  if (path == kKeepAll) return res;
  if (path != kSwapLoop) {
    RP_ASSERT(path == kGreedyStrong || path == kNoSwapsAllowed || path == kGreedySmallDiag,
              "unknown path ", path, " for problem ", b, ", k = ", k);
    res.max_rho = std::sqrt(L.max_rho2[o]);
    res.hit_swap_limit = path == kNoSwapsAllowed;
    res.stopped_small_diag = path == kGreedySmallDiag;
    return res;
  }
  const int flags = L.flags[o];
  RP_ASSERT(!(flags & kFlagBadPivot), "strong RRQR exchange with rho^2 <= 0 (CUDA, problem ", b, ", k = ", k,
            ", after ", L.swaps[o], " swaps)");
  RP_CHECK_INPUT(!(flags & kFlagRecordFull), "strong RRQR (CUDA): problem ", b, ", k = ", k, " needs more than ",
                 kCudaMaxRecordedSwaps, " swaps (max_swaps = ", L.max_swaps, "); the GPU records at most ",
                 kCudaMaxRecordedSwaps, ": lower max_swaps or select on the CPU");
  res.swaps = L.swaps[o];
  res.swap_rho.assign(L.swap_rho.begin() + o * L.record, L.swap_rho.begin() + o * L.record + res.swaps);
  res.kept = sorted_prefix(&L.kept[o * n], k);
  const double max_rho2 = L.max_rho2[o];
  res.max_rho = std::sqrt(std::max(max_rho2, 0.0));
  if (res.swaps > 0 && (flags & kFlagCholeskyOk)) {
    double after = 0;
    for (int64_t m = 0; m < k; ++m) after += std::log(L.cdiag[o * n + m]);
    res.log_det_after = after;
  } else {
    double after = res.log_det_before;
    for (double r : res.swap_rho) after += std::log(r);
    res.log_det_after = after;
  }
  if (max_rho2 > f * f) {
    if (flags & kFlagSmallDiag)
      res.stopped_small_diag = true;
    else
      res.hit_swap_limit = true;
  }
  return res;
}

}  // namespace
}  // namespace rankprune
