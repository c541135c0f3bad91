#include "kernels/gram.h"

#include "common/error.h"

#if defined(RANKPRUNE_TORCH_CUDA) && defined(RANKPRUNE_HAVE_CUDA_KERNELS)
#include <ATen/cuda/CUDAContext.h>

#include "kernels/cuda/gram_cuda.h"
#endif

// BLAS symmetric rank-k update (Fortran interface, in every BLAS): C = alpha X X^T + beta C.
extern "C" void dsyrk_(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
                       const double* a, const int* lda, const double* beta, double* c, const int* ldc);

namespace rankprune {

namespace {

void check_args(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& G) {
  RP_ASSERT(q.dim() >= 2 && q.sizes() == k.sizes(), "gram_accumulate: q ", q.sizes(), " and k ", k.sizes(),
            " must be [..., H, d] of one shape");
  const int64_t H = q.size(-2), d = q.size(-1);
  RP_ASSERT(G.scalar_type() == torch::kFloat64 && G.is_contiguous() && G.dim() == 3 && G.size(0) == H &&
                G.size(1) == d && G.size(2) == d,
            "gram_accumulate: G must be contiguous float64 [", H, ", ", d, ", ", d, "], got ", G.sizes(), " ",
            G.scalar_type());
  RP_ASSERT(q.device() == G.device() && k.device() == G.device(), "gram_accumulate: q, k and G on one device");
  RP_ASSERT(torch::isFloatingType(q.scalar_type()) && torch::isFloatingType(k.scalar_type()),
            "gram_accumulate: q and k must be floating point");
}

// Row-major M [2N, d] is column-major M^T, so dsyrk('U', 'N') on it accumulates the row-major lower
// triangle of G_h; the upper one is then copied from it (dsyrk with beta = 1 reads only the lower).
void gram_accumulate_cpu(const torch::Tensor& q, const torch::Tensor& k, torch::Tensor& G) {
  const int64_t H = q.size(-2), d = q.size(-1);
  auto qh = q.to(torch::kFloat64).reshape({-1, H, d}).transpose(0, 1);
  auto kh = k.to(torch::kFloat64).reshape({-1, H, d}).transpose(0, 1);
  auto qk = torch::cat({qh, kh}, 1).contiguous();  // [H, 2N, d]
  const int n = static_cast<int>(d), rows = static_cast<int>(qk.size(1));
  RP_ASSERT(qk.size(1) <= INT32_MAX, "gram_accumulate: ", qk.size(1), " rows exceed BLAS's int");
  if (rows == 0) return;
  const double one = 1.0;
  for (int64_t h = 0; h < H; ++h)
    dsyrk_("U", "N", &n, &rows, &one, qk[h].data_ptr<double>(), &n, &one, G[h].data_ptr<double>(), &n);
  G.copy_(G.tril() + G.tril(-1).transpose(-1, -2));
}

}  // namespace

void gram_accumulate(const torch::Tensor& q, const torch::Tensor& k, torch::Tensor& G) {
  check_args(q, k, G);
  if (G.device().is_cpu()) return gram_accumulate_cpu(q, k, G);
#if defined(RANKPRUNE_TORCH_CUDA) && defined(RANKPRUNE_HAVE_CUDA_KERNELS)
  // f32 and bf16 go to the kernel as they are; other dtypes (f16, f64) as float32 (f64 loses bits:
  // the GPU path computes in bf16/f32 like the model's GPU forward).
  const bool direct = q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat32;
  const auto dt = direct ? q.scalar_type() : torch::kFloat32;
  auto qc = q.to(dt).contiguous(), kc = k.to(dt).contiguous();
  const int64_t H = q.size(-2), d = q.size(-1), tokens = qc.numel() / (H * d);
  cuda::gram_accumulate_cuda(qc.data_ptr(), kc.data_ptr(), dt == torch::kBFloat16 ? cuda::CudaScalar::BF16
                                                                                  : cuda::CudaScalar::F32,
                             tokens, H, d, G.data_ptr<double>(), at::cuda::getCurrentCUDAStream().stream());
#else
  throw UsageError(cat("gram_accumulate: tensors on ", G.device().str(),
                       ", but rankprune was built without CUDA (docs/gpu.md)"));
#endif
}

}  // namespace rankprune
