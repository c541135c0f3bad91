// The calibration Gram of one layer: per head h, G_h += M_h^T M_h with M_h = [Q_h; K_h] (the
// layer's queries stacked on its keys), formed in float64 (docs/method.md §2). Every product of two
// float32 / bfloat16 values is exact in float64, so only the sums round.
//
// One function, two twins picked by where the data lives (docs/gpu.md):
//   CPU tensors   a float64 copy [H, 2N, d] and one BLAS dsyrk per head (half a GEMM's flops);
//   CUDA tensors  kernels/cuda/gram_cuda.h (float64 GEMMs in bounded chunks), in a build against a
//                 CUDA LibTorch with the CUDA kernels; elsewhere a CUDA tensor cannot exist.
//
//   q, k: [..., H, d], the same shape, any floating dtype (rows = the product of the leading dims;
//         the calibration forward's [B, T, H, dk])
//   G:    [H, d, d] float64, contiguous, on q's device; accumulated into, symmetric on entry and on
//         return (both triangles written; bitwise symmetric)
// Shape or dtype mismatches are InternalErrors (the callers build these tensors).
#pragma once

#include <torch/torch.h>

namespace rankprune {

void gram_accumulate(const torch::Tensor& q, const torch::Tensor& k, torch::Tensor& G);

}  // namespace rankprune
