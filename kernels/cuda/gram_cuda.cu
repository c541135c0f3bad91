// The Gram accumulation as chunks of float64 GEMMs (see gram_cuda.h for the contract).
//
// Why cuBLAS rather than a custom tiled kernel: the work is a float64 matrix product
// (per layer 2 * (2 tokens) * d^2 * heads flops as a GEMM), and H200's FP64 tensor cores
// (~67 TFLOP/s) are reached by cublasDgemm and not by anything short of a hand-tuned DMMA kernel.
// Widening a chunk to float64 costs one pass over it (memory-bound, ~3x the bytes of the bf16
// input) and makes every product exact, as on the CPU. A strided-batched GEMM covers all heads in
// one launch per chunk: head h's M_h^T is the column-major d x (2 chunk) matrix at W + h * d with
// leading dimension heads * d (the row-major [2 chunk, heads, d] workspace read column-major), so
// no transpose copy is needed. GEMM computes both triangles (twice syrk's flops) but is one call
// for all heads instead of one syrk per head; the upper triangle is then overwritten from the lower
// one so that G is exactly symmetric, as the CPU path's mirror makes it.
#include "kernels/cuda/gram_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <vector>

namespace rankprune::cuda {
namespace {

constexpr const char* kWho = "gram_accumulate_cuda";
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride loops beyond this: enough to fill any GPU

__device__ inline double widen(float x) { return static_cast<double>(x); }
__device__ inline double widen(__nv_bfloat16 x) { return static_cast<double>(__bfloat162float(x)); }

// w[0, n) = q[0, n), w[n, 2n) = k[0, n) in float64: the chunk's rows of M = [Q; K], each row
// [heads, d] as in the input.
template <typename T>
__global__ void widen_chunk(const T* __restrict__ q, const T* __restrict__ k, int64_t n, double* __restrict__ w) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < 2 * n; i += stride)
    w[i] = i < n ? widen(q[i]) : widen(k[i - n]);
}

// G_h[i][j] = G_h[j][i] for i < j (row-major): each thread reads only the lower triangle and writes
// only the upper one, so there is no race.
__global__ void mirror_lower(double* __restrict__ G, int64_t heads, int64_t d) {
  const int64_t dd = d * d, total = heads * dd;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t h = idx / dd, r = idx % dd, i = r / d, j = r % d;
    if (i < j) G[h * dd + i * d + j] = G[h * dd + j * d + i];
  }
}

int grid_for(int64_t n) { return static_cast<int>(std::max<int64_t>(1, std::min(kMaxBlocks, (n + kThreads - 1) / kThreads))); }

// One cuBLAS handle per (host thread, device), created on first use and never destroyed: a handle
// destroyed from a static destructor may run after the CUDA runtime has shut down. Per thread,
// because a handle must not be used by two threads at once.
cublasHandle_t cublas_handle() {
  int dev = 0;
  RP_CUDA_CHECK(kWho, cudaGetDevice(&dev));
  thread_local std::vector<cublasHandle_t> handles;
  if (static_cast<std::size_t>(dev) >= handles.size()) handles.resize(static_cast<std::size_t>(dev) + 1, nullptr);
  if (!handles[dev]) RP_CUDA_LIB_CHECK(kWho, cublasCreate(&handles[dev]));
  return handles[dev];
}

// Stream-ordered workspace (cudaMallocAsync / cudaFreeAsync on the call's stream): the call stays
// asynchronous, and the pool reuses the memory across calls instead of a synchronising cudaFree.
class StreamWorkspace {
 public:
  StreamWorkspace(std::size_t bytes, cudaStream_t s) : s_(s) {
    RP_CUDA_CHECK(kWho, cudaMallocAsync(reinterpret_cast<void**>(&p_), bytes, s));
  }
  StreamWorkspace(const StreamWorkspace&) = delete;
  StreamWorkspace& operator=(const StreamWorkspace&) = delete;
  ~StreamWorkspace() {
    if (p_) cudaFreeAsync(p_, s_);
  }
  double* get() const { return p_; }

 private:
  double* p_ = nullptr;
  cudaStream_t s_;
};

template <typename T>
void accumulate(const T* q, const T* k, int64_t tokens, int64_t heads, int64_t d, double* G, cudaStream_t stream,
                int64_t chunk) {
  const int64_t row = heads * d;  // elements per token
  StreamWorkspace w(static_cast<std::size_t>(2 * chunk * row) * sizeof(double), stream);
  cublasHandle_t h = cublas_handle();
  RP_CUDA_LIB_CHECK(kWho, cublasSetStream(h, stream));
  const double one = 1.0;
  const int n = static_cast<int>(d), ld = static_cast<int>(row), batch = static_cast<int>(heads);
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t nc = std::min(chunk, tokens - t0), elems = nc * row;
    widen_chunk<T><<<grid_for(2 * elems), kThreads, 0, stream>>>(q + t0 * row, k + t0 * row, elems, w.get());
    RP_CUDA_CHECK(kWho, cudaGetLastError());
    // Column-major: C_h (d x d) += A_h A_h^T, A_h = W + h d (d x 2nc, lda heads * d).
    RP_CUDA_LIB_CHECK(kWho, cublasDgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, n, n, static_cast<int>(2 * nc),
                                                      &one, w.get(), ld, d, w.get(), ld, d, &one, G, n, d * d,
                                                      batch));
  }
  mirror_lower<<<grid_for(heads * d * d), kThreads, 0, stream>>>(G, heads, d);
  RP_CUDA_CHECK(kWho, cudaGetLastError());
}

}  // namespace

int64_t gram_default_chunk_tokens(int64_t heads, int64_t d) {
  const int64_t per_token = 2 * heads * d * static_cast<int64_t>(sizeof(double));
  return std::max<int64_t>(1, static_cast<int64_t>(kGramWorkspaceBytes) / std::max<int64_t>(1, per_token));
}

void check_gram_args(const void* q, const void* k, CudaScalar dtype, int64_t tokens, int64_t heads, int64_t d,
                     const double* G, int64_t chunk_tokens) {
  check_cuda_scalar(kWho, dtype);
  RP_CHECK_INPUT(tokens >= 0, kWho, ": tokens must be >= 0, got ", tokens);
  RP_CHECK_INPUT(heads >= 1, kWho, ": heads must be >= 1, got ", heads);
  RP_CHECK_INPUT(d >= 1, kWho, ": head dim d must be >= 1, got ", d);
  RP_CHECK_INPUT(chunk_tokens >= 0, kWho, ": chunk_tokens must be >= 0 (0 = default), got ", chunk_tokens);
  // cuBLAS takes int dimensions: the leading dimension heads * d, the GEMM depth 2 * chunk, the
  // batch count heads; the per-head stride d * d is 64-bit.
  RP_CHECK_INPUT(heads <= INT_MAX / d, kWho, ": heads * d = ", heads, " * ", d, " exceeds cuBLAS's int range");
  RP_CHECK_INPUT(chunk_tokens <= INT_MAX / 2, kWho, ": chunk_tokens ", chunk_tokens, " exceeds ", INT_MAX / 2);
  RP_CHECK_INPUT(G != nullptr, kWho, ": G is null; expected a device array [", heads, ", ", d, ", ", d, "]");
  if (tokens > 0) {
    RP_CHECK_INPUT(q != nullptr && k != nullptr, kWho, ": q and k must be device arrays [", tokens, ", ", heads,
                   ", ", d, "], got ", q == nullptr ? "null q" : "q", " and ", k == nullptr ? "null k" : "k");
    RP_CHECK_INPUT(tokens <= INT64_MAX / (16 * heads * d), kWho, ": 16 * tokens * heads * d bytes overflow (tokens ", tokens,
                   ")");
  }
}

void gram_accumulate_cuda(const void* q, const void* k, CudaScalar dtype, int64_t tokens, int64_t heads, int64_t d,
                          double* G, cudaStream_t stream, int64_t chunk_tokens) {
  check_gram_args(q, k, dtype, tokens, heads, d, G, chunk_tokens);
  if (tokens == 0) return;  // nothing to add; G is symmetric already by the contract
  int64_t chunk = chunk_tokens > 0 ? chunk_tokens : gram_default_chunk_tokens(heads, d);
  chunk = std::min(chunk, tokens);
  if (dtype == CudaScalar::F32)
    accumulate(static_cast<const float*>(q), static_cast<const float*>(k), tokens, heads, d, G, stream, chunk);
  else
    accumulate(static_cast<const __nv_bfloat16*>(q), static_cast<const __nv_bfloat16*>(k), tokens, heads, d, G,
               stream, chunk);
}

}  // namespace rankprune::cuda
