// CUDA twin of the Gram-form channel selection (kernels/rrqr.h) for many (layer, head) problems
// at once: one thread block per problem, one kernel launch for the whole batch.
//
// Interface: plain host memory in and out (no LibTorch, no device pointers): each function checks
// its input on the host (the same InputErrors as the CPU code, before any CUDA call), copies the
// batch to the current device, launches once, and copies the results back. G is `batch` row-major
// [n, n] Gram matrices stored back to back: problem b starts at G + b * n * n.
//
// Contract: problem b gives what the CPU code gives for G + b * n * n — the same pivots and rank,
// the same kept sets, swap counts and flags; R, rho and log |det A| agree to rounding. The greedy
// phase (pivoted Cholesky and the greedy rho of every k) repeats the CPU's floating-point
// operations in the CPU's order without FMA contraction, so it reproduces the CPU's roundings;
// the swap phase starts from an exchange matrix built without LAPACK (different roundings), so a
// near-tie in an argmax (two rho within ~1e-12 of each other, or max rho within ~1e-12 of f) may
// be broken differently. tests/gpu/test_gpu_rrqr.cpp checks parity on inputs without near-ties.
//
// Costs and memory: see rrqr_cuda.cuh. Device memory is about 4 n^2 doubles per problem for
// strong_rrqr_select_batched_cuda (the Gram, R and two work matrices; n = 256: 2 MB) plus
// 16 n + 8 min(max_swaps, kCudaMaxRecordedSwaps) bytes per (problem, distinct k), and 2 n^2
// doubles per problem for the other two. Out of device memory is an InputError (the batch is too
// large for this GPU: split it), CUDA failures are InternalErrors.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/rrqr.h"

namespace rankprune {

// Swaps recorded per (problem, k): a run that would need more than this many swaps (with a
// max_swaps above it) is refused with an InputError instead of truncating swap_rho; run such a
// problem on the CPU. The paper's limit is 20.
constexpr int kCudaMaxRecordedSwaps = 4096;

// pivoted_cholesky of every problem: result[b] equals pivoted_cholesky(G + b * n * n, n, tol)
// (perm and rank exactly, R to rounding).
std::vector<PivotedCholesky> pivoted_cholesky_batched_cuda(const double* G, int64_t batch, int64_t n,
                                                           double tol = kDefaultRankTol);

// qrcp_select of every problem: result[b] equals qrcp_select(G + b * n * n, n, k) ([k] ascending).
std::vector<std::vector<int64_t>> qrcp_select_batched_cuda(const double* G, int64_t batch, int64_t n,
                                                           int64_t k);

// strong_rrqr_select_many of every problem with the same ks: result[b][t] equals
// strong_rrqr_select_many(G + b * n * n, n, ks, f, max_swaps)[t]. Repeated ks are computed once.
std::vector<std::vector<StrongRrqrResult>> strong_rrqr_select_batched_cuda(
    const double* G, int64_t batch, int64_t n, const std::vector<int64_t>& ks,
    double f = kDefaultSwapBound, int max_swaps = kDefaultMaxSwaps);

}  // namespace rankprune
