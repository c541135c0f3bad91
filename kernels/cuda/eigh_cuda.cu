// Batched symmetric eigendecomposition through cuSOLVER (interface in eigh_cuda.h).
//
// Layout: a row-major symmetric matrix read as column-major is its transpose, so the row-major
// upper triangle is cuSOLVER's column-major lower triangle (CUBLAS_FILL_MODE_LOWER) and no copy
// is needed on the way in. cuSOLVER returns V column-major in place of A; it is transposed on the
// host into the row-major [n, n] of eigh_cuda.h.
//
// Why two routines: syevjBatched runs the whole batch in one call but only up to n = 32, and its
// Jacobi sweeps stop at a tolerance; syevd is LAPACK's divide and conquer (what dsyevd and
// torch.linalg.eigh run on the CPU), one call per matrix. For the real sizes (head_k_dim 64..256,
// a few hundred heads) syevd per matrix costs ~ms each; cusolverDnXsyevBatched (CUDA >= 12.6)
// could batch it, but it is newer and not yet tested here.
#include "kernels/cuda/eigh_cuda.h"

#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <climits>
#include <cmath>
#include <cstddef>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/cuda_check.h"

namespace rankprune {
namespace {

using cuda::DeviceBuffer;

constexpr const char* kWho = "symmetric eigh (CUDA)";

class SolverHandle {
 public:
  SolverHandle() { RP_CUDA_LIB_CHECK(kWho, cusolverDnCreate(&h_)); }
  ~SolverHandle() { cusolverDnDestroy(h_); }
  SolverHandle(const SolverHandle&) = delete;
  SolverHandle& operator=(const SolverHandle&) = delete;
  cusolverDnHandle_t get() const { return h_; }

 private:
  cusolverDnHandle_t h_ = nullptr;
};

class JacobiParams {
 public:
  JacobiParams() { RP_CUDA_LIB_CHECK(kWho, cusolverDnCreateSyevjInfo(&p_)); }
  ~JacobiParams() { cusolverDnDestroySyevjInfo(p_); }
  JacobiParams(const JacobiParams&) = delete;
  JacobiParams& operator=(const JacobiParams&) = delete;
  syevjInfo_t get() const { return p_; }

 private:
  syevjInfo_t p_ = nullptr;
};

void check_input(const double* A, int64_t batch, int64_t n, const double* evals, const double* evecs) {
  RP_CHECK_INPUT(batch >= 0, "symmetric eigh (CUDA): batch must be >= 0, got ", batch);
  RP_CHECK_INPUT(n >= 1, "symmetric eigh (CUDA): n must be >= 1, got ", n);
  // cuSOLVER's 32-bit interface: n * n elements per matrix and the batch size are ints.
  RP_CHECK_INPUT(n <= 46340, "symmetric eigh (CUDA): n = ", n, " is too large (at most 46340: n^2 must fit an int)");
  RP_CHECK_INPUT(batch <= INT_MAX, "symmetric eigh (CUDA): batch of ", batch, " matrices; at most ", INT_MAX);
  if (batch == 0) return;
  RP_CHECK_INPUT(A != nullptr && evals != nullptr && evecs != nullptr,
                 "symmetric eigh (CUDA): null pointer for a batch of ", batch, " [", n, ", ", n, "] matrices");
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i; j < n; ++j) {
        const double v = A[(b * n + i) * n + j];
        RP_CHECK_INPUT(std::isfinite(v), "symmetric eigh (CUDA): matrix ", b, " of ", batch, " [", n, ", ", n,
                       "]: entry (", i, ", ", j, ") is not finite (", v, ")");
      }
}

}  // namespace

void symmetric_eigh_batched_cuda(const double* A, int64_t batch, int64_t n, double* evals, double* evecs) {
  check_input(A, batch, n, evals, evecs);
  if (batch == 0) return;
  const std::size_t B = batch, N = n, NN = N * N;
  const int ni = static_cast<int>(n), bi = static_cast<int>(batch);

  DeviceBuffer<double> dA(B * NN, kWho), dW(B * N, kWho);
  DeviceBuffer<int> dInfo(B, kWho);
  RP_CUDA_CHECK(kWho, cudaMemcpy(dA.get(), A, B * NN * sizeof(double), cudaMemcpyHostToDevice));
  SolverHandle handle;  // default (legacy) stream: the cudaMemcpy calls below order against it
  const cusolverEigMode_t jobz = CUSOLVER_EIG_MODE_VECTOR;
  const cublasFillMode_t uplo = CUBLAS_FILL_MODE_LOWER;  // = the row-major upper triangle
  // Both live until the device has finished (the synchronisation below).
  JacobiParams params;
  DeviceBuffer<double> work;
  if (n <= kEighJacobiMaxN) {
    // Defaults made explicit: tolerance = machine precision, 100 sweeps, ascending eigenvalues.
    RP_CUDA_LIB_CHECK(kWho, cusolverDnXsyevjSetMaxSweeps(params.get(), 100));
    RP_CUDA_LIB_CHECK(kWho, cusolverDnXsyevjSetSortEig(params.get(), 1));
    int lwork = 0;
    RP_CUDA_LIB_CHECK(kWho, cusolverDnDsyevjBatched_bufferSize(handle.get(), jobz, uplo, ni, dA.get(), ni, dW.get(),
                                                               &lwork, params.get(), bi));
    work = DeviceBuffer<double>(static_cast<std::size_t>(lwork), kWho);
    RP_CUDA_LIB_CHECK(kWho, cusolverDnDsyevjBatched(handle.get(), jobz, uplo, ni, dA.get(), ni, dW.get(), work.get(),
                                                    lwork, dInfo.get(), params.get(), bi));
  } else {
    int lwork = 0;
    RP_CUDA_LIB_CHECK(kWho,
                      cusolverDnDsyevd_bufferSize(handle.get(), jobz, uplo, ni, dA.get(), ni, dW.get(), &lwork));
    work = DeviceBuffer<double>(static_cast<std::size_t>(lwork), kWho);
    // One stream: each call finishes with the shared workspace before the next starts.
    for (int64_t b = 0; b < batch; ++b)
      RP_CUDA_LIB_CHECK(kWho, cusolverDnDsyevd(handle.get(), jobz, uplo, ni, dA.get() + b * NN, ni, dW.get() + b * N,
                                               work.get(), lwork, dInfo.get() + b));
  }
  RP_CUDA_CHECK(kWho, cudaDeviceSynchronize());
  std::vector<int> info(B);
  std::vector<double> v(B * NN);
  RP_CUDA_CHECK(kWho, cudaMemcpy(info.data(), dInfo.get(), B * sizeof(int), cudaMemcpyDeviceToHost));
  RP_CUDA_CHECK(kWho, cudaMemcpy(evals, dW.get(), B * N * sizeof(double), cudaMemcpyDeviceToHost));
  RP_CUDA_CHECK(kWho, cudaMemcpy(v.data(), dA.get(), B * NN * sizeof(double), cudaMemcpyDeviceToHost));
  for (int64_t b = 0; b < batch; ++b)
    if (info[b] != 0)
      throw InternalError(cat(kWho, ": ", n <= kEighJacobiMaxN ? "syevjBatched" : "syevd", " failed on matrix ", b,
                              " of ", batch, " [", n, ", ", n, "] with info ", info[b],
                              info[b] > 0 ? " (did not converge)" : " (invalid argument)"));
  // Column-major V (V(i, j) at i + j * n) to row-major evecs[i][j].
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t j = 0; j < N; ++j) evecs[b * NN + i * N + j] = v[b * NN + i + j * N];
}

}  // namespace rankprune
