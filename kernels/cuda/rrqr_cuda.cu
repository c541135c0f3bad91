// CUDA channel selection, host side (interface and contract in rrqr_cuda.h; the kernel and its
// design notes in rrqr_cuda.cuh): input checks, device buffers, one launch, copies back.
#include "kernels/cuda/rrqr_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/rrqr_cuda.cuh"
#include "kernels/rrqr_checks.h"

namespace rankprune {
namespace {

using cuda::DeviceBuffer;

constexpr const char* kWho = "strong RRQR (CUDA)";

void check_batch(const double* G, int64_t batch, int64_t n) {
  RP_CHECK_INPUT(batch >= 0, "channel selection (CUDA): batch must be >= 0, got ", batch);
  RP_CHECK_INPUT(batch <= INT_MAX, "channel selection (CUDA): batch of ", batch, " problems; at most ", INT_MAX,
                 " (one thread block each)");
  RP_CHECK_INPUT(n >= 1, "Gram matrix: n must be >= 1, got ", n);
  if (batch == 0) return;
  RP_CHECK_INPUT(G != nullptr, "Gram matrix: null pointer for a batch of ", batch, " with n = ", n);
  for (int64_t b = 0; b < batch; ++b)
    rrqr_checks::check_gram(G + b * n * n, n, batch == 1 ? std::string("Gram matrix")
                                                          : cat("Gram matrix ", b, " of ", batch));
}

template <typename T>
void to_device(DeviceBuffer<T>& dst, const T* src, std::size_t count) {
  if (count) RP_CUDA_CHECK(kWho, cudaMemcpy(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& src, std::size_t count) {
  std::vector<T> out(count);
  if (count) RP_CUDA_CHECK(kWho, cudaMemcpy(out.data(), src.get(), count * sizeof(T), cudaMemcpyDeviceToHost));
  return out;
}


Launch run(const double* G, int64_t batch, int64_t n, double tol, const std::vector<int64_t>& kvals, double f,
           int max_swaps, bool want_R) {
  Launch out;
  out.batch = batch;
  out.n = n;
  out.nk = static_cast<int64_t>(kvals.size());
  out.max_swaps = max_swaps;
  out.record = std::min(max_swaps, kCudaMaxRecordedSwaps);
  const std::size_t B = batch, N = n, NN = N * N, NK = out.nk, BK = B * NK;
  const bool select = NK > 0;

  DeviceBuffer<double> dG(B * NN, kWho), dR(B * NN, kWho), dVec(B * kVecs * (N + 1), kWho), dRdiag(B * N, kWho);
  DeviceBuffer<int64_t> dPerm(B * N, kWho), dRank(B, kWho);
  DeviceBuffer<double> dX, dQ, dMaxRho2, dSwapRho, dCdiag;
  DeviceBuffer<int64_t> dOrder, dKvals, dKept;
  DeviceBuffer<unsigned char> dWant;
  DeviceBuffer<int> dPath, dSwaps, dFlags;
  to_device(dG, G, B * NN);
  if (select) {
    dX = DeviceBuffer<double>(B * NN, kWho);
    dQ = DeviceBuffer<double>(B * NN, kWho);
    dOrder = DeviceBuffer<int64_t>(B * N, kWho);
    std::vector<unsigned char> want(N + 1, 0);
    for (int64_t k : kvals) want[k] = 1;
    dWant = DeviceBuffer<unsigned char>(N + 1, kWho);
    to_device(dWant, want.data(), N + 1);
    dKvals = DeviceBuffer<int64_t>(NK, kWho);
    to_device(dKvals, kvals.data(), NK);
    dPath = DeviceBuffer<int>(BK, kWho);
    dSwaps = DeviceBuffer<int>(BK, kWho);
    dFlags = DeviceBuffer<int>(BK, kWho);
    dMaxRho2 = DeviceBuffer<double>(BK, kWho);
    dSwapRho = DeviceBuffer<double>(BK * static_cast<std::size_t>(out.record), kWho);
    dCdiag = DeviceBuffer<double>(BK * N, kWho);
    dKept = DeviceBuffer<int64_t>(BK * N, kWho);
  }

  Args a{};
  a.G = dG.get();
  a.n = n;
  a.stop_tol = tol;
  a.R = dR.get();
  a.X = dX.get();
  a.Q = dQ.get();
  a.vec = dVec.get();
  a.perm = dPerm.get();
  a.order = dOrder.get();
  a.rank = dRank.get();
  a.rdiag = dRdiag.get();
  a.want = dWant.get();
  a.kvals = dKvals.get();
  a.nk = out.nk;
  a.f2 = f * f;
  a.max_swaps = max_swaps;
  a.record = out.record;
  a.path = dPath.get();
  a.swaps = dSwaps.get();
  a.flags = dFlags.get();
  a.max_rho2 = dMaxRho2.get();
  a.swap_rho = dSwapRho.get();
  a.cdiag = dCdiag.get();
  a.kept = dKept.get();
  rrqr_kernel<<<static_cast<unsigned>(batch), kThreads>>>(a);
  RP_CUDA_CHECK(kWho, cudaGetLastError());
  RP_CUDA_CHECK(kWho, cudaDeviceSynchronize());

  out.rank = to_host(dRank, B);
  out.perm = to_host(dPerm, B * N);
  out.rdiag = to_host(dRdiag, B * N);
  if (want_R) out.R = to_host(dR, B * NN);
  if (select) {
    out.path = to_host(dPath, BK);
    out.swaps = to_host(dSwaps, BK);
    out.flags = to_host(dFlags, BK);
    out.max_rho2 = to_host(dMaxRho2, BK);
    out.swap_rho = to_host(dSwapRho, BK * static_cast<std::size_t>(out.record));
    out.cdiag = to_host(dCdiag, BK * N);
    out.kept = to_host(dKept, BK * N);
  }
  return out;
}

}  // namespace

std::vector<PivotedCholesky> pivoted_cholesky_batched_cuda(const double* G, int64_t batch, int64_t n, double tol) {
  check_batch(G, batch, n);
  rrqr_checks::check_rank_tol(tol);
  std::vector<PivotedCholesky> out(batch);
  if (batch == 0) return out;
  const Launch L = run(G, batch, n, tol, {}, kDefaultSwapBound, 0, /*want_R=*/true);
  for (int64_t b = 0; b < batch; ++b) {
    PivotedCholesky& pc = out[b];
    pc.n = n;
    pc.rank = L.rank[b];
    pc.perm.assign(L.perm.begin() + b * n, L.perm.begin() + (b + 1) * n);
    pc.R.assign(L.R.begin() + b * n * n, L.R.begin() + (b + 1) * n * n);
  }
  return out;
}

std::vector<std::vector<int64_t>> qrcp_select_batched_cuda(const double* G, int64_t batch, int64_t n, int64_t k) {
  check_batch(G, batch, n);
  rrqr_checks::check_k(k, n);
  std::vector<std::vector<int64_t>> out(batch);
  if (batch == 0) return out;
  const Launch L = run(G, batch, n, kDefaultRankTol, {}, kDefaultSwapBound, 0, /*want_R=*/false);
  for (int64_t b = 0; b < batch; ++b) out[b] = sorted_prefix(&L.perm[b * n], k);
  return out;
}

std::vector<std::vector<StrongRrqrResult>> strong_rrqr_select_batched_cuda(const double* G, int64_t batch, int64_t n,
                                                                           const std::vector<int64_t>& ks, double f,
                                                                           int max_swaps) {
  check_batch(G, batch, n);
  for (int64_t k : ks) rrqr_checks::check_k(k, n);
  rrqr_checks::check_swap_params(f, max_swaps);
  std::vector<std::vector<StrongRrqrResult>> out(batch);
  if (batch == 0 || ks.empty()) return out;
  std::vector<int64_t> kvals(ks);
  std::sort(kvals.begin(), kvals.end());
  kvals.erase(std::unique(kvals.begin(), kvals.end()), kvals.end());
  const Launch L = run(G, batch, n, kDefaultRankTol, kvals, f, max_swaps, /*want_R=*/false);
  for (int64_t b = 0; b < batch; ++b) {
    out[b].reserve(ks.size());
    for (int64_t k : ks) {
      const int64_t kk = std::lower_bound(kvals.begin(), kvals.end(), k) - kvals.begin();
      out[b].push_back(assemble(L, b, kk, k, f));
    }
  }
  return out;
}

}  // namespace rankprune
