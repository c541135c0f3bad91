// CUDA twin of PCA's eigendecomposition (prune/select.cpp: torch::linalg_eigh of the [H, dk, dk]
// key covariances): a batch of symmetric eigenproblems through cuSOLVER.
//
// Host memory in and out: A is `batch` row-major [n, n] symmetric matrices back to back, of which
// only the upper triangle is read (as LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', ...) does).
// Results, per matrix b:
//   evals [batch, n]     ascending, like LAPACK's dsyevd and torch.linalg.eigh;
//   evecs [batch, n, n]  row-major with the eigenvectors as columns: evecs[b][i][j] (at
//                        b * n * n + i * n + j) is component i of the eigenvector of evals[b][j],
//                        i.e. the V of A = V diag(evals) V^T, as linalg.eigh returns it.
// Eigenvectors are unique only up to sign (and, for repeated eigenvalues, up to a rotation within
// the eigenspace); cuSOLVER's choice need not be LAPACK's.
// Input errors (n < 1, batch < 0, null pointers, a non-finite entry in the upper triangle) throw
// InputError before any CUDA call; out of device memory is an InputError, a cuSOLVER failure
// (including non-convergence) an InternalError naming the matrix.
#pragma once

#include <cstdint>

namespace rankprune {

// n <= 32: one cusolverDnDsyevjBatched (Jacobi, all matrices in one call: it is limited to
// n <= 32); larger n: cusolverDnDsyevd (divide and conquer, LAPACK's algorithm) per matrix, one
// after the other on one stream with a shared workspace.
constexpr int64_t kEighJacobiMaxN = 32;

void symmetric_eigh_batched_cuda(const double* A, int64_t batch, int64_t n, double* evals, double* evecs);

}  // namespace rankprune
