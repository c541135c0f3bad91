// The calibration Gram on the GPU: the CUDA twin of the dsyrk accumulation in
// worker/calibration.cpp (block_statistics), docs/method.md section 2.
//
// Per head h, with Q_h, K_h the [tokens, d] slices of the layer's queries and keys:
//   G_h += M_h^T M_h,   M_h = [Q_h; K_h] (2 tokens x d),   i.e. G_h += Q_h^T Q_h + K_h^T K_h
// formed in float64 from float32 or bfloat16 activations. Every product of two such values is exact
// in float64, so the only rounding is in the sums.
//
// Device pointers, row-major:
//   q, k: [tokens, heads, d]   the calibration forward's activations (f32 or bf16, `dtype`)
//   G:    [heads, d, d]        float64, accumulated into (zero it for a fresh Gram); on return both
//                              triangles hold the result and G_h is exactly symmetric (bitwise),
//                              given a symmetric G on entry (a zeroed one is)
// All work is queued on `stream` (0 = the legacy default stream) and the call returns without
// synchronising: the workspace comes from the device's stream-ordered pool (cudaMallocAsync /
// cudaFreeAsync on `stream`).
//
// Tokens are processed in chunks of `chunk_tokens` (0 = the default below), so the float64
// workspace is bounded: 2 * chunk * heads * d * 8 bytes, with the default chunk chosen so that this
// is at most kGramWorkspaceBytes (64 MiB), and at least one token (2 * heads * d * 8 bytes) for
// shapes where a single token exceeds it. DeltaNet-1.3B (heads 16, d 128): 2048 tokens a chunk.
//
// Deterministic: the chunks are summed into G in token order on one stream, each by one cuBLAS
// GEMM, and nothing uses atomics. cuBLAS documents its routines as bitwise reproducible run to run
// on GPUs of the same architecture and SM count with the same toolkit ("Results reproducibility";
// the exceptions are routines in atomics mode, which this handle never enables); the tests check
// two runs for equality.
//
// Errors: shapes, pointers and dtype are checked on the host before any CUDA call (InputError
// naming the argument and what was expected); CUDA/cuBLAS failures throw as kernels/cuda/cuda_check.h
// says (out of memory is an InputError).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace rankprune::cuda {

constexpr std::size_t kGramWorkspaceBytes = std::size_t(64) << 20;

// The default chunk: tokens whose float64 [Q; K] copy fits kGramWorkspaceBytes (>= 1).
int64_t gram_default_chunk_tokens(int64_t heads, int64_t d);

// Host-side validation only (what gram_accumulate_cuda checks first); throws InputError.
void check_gram_args(const void* q, const void* k, CudaScalar dtype, int64_t tokens, int64_t heads, int64_t d,
                     const double* G, int64_t chunk_tokens);

void gram_accumulate_cuda(const void* q, const void* k, CudaScalar dtype, int64_t tokens, int64_t heads, int64_t d,
                          double* G, cudaStream_t stream, int64_t chunk_tokens = 0);

}  // namespace rankprune::cuda
