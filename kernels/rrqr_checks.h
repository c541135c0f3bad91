// Input checks of the channel selection (kernels/rrqr.h), shared by the CPU code and its CUDA twin
// (kernels/cuda/rrqr_cuda.cu) so that both reject the same inputs with the same InputError
// messages. Header-only: the CUDA library links rp_common, not rp_kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "common/error.h"

namespace rankprune::rrqr_checks {

// n >= 1, G non-null and every entry of the [n, n] matrix finite. `what` names the matrix in the
// messages ("Gram matrix", or "Gram matrix 3 of 64" for a batch).
inline void check_gram(const double* G, int64_t n, const std::string& what = "Gram matrix") {
  RP_CHECK_INPUT(n >= 1, what, ": n must be >= 1, got ", n);
  RP_CHECK_INPUT(G != nullptr, what, ": null pointer for n = ", n);
  for (int64_t i = 0; i < n * n; ++i)
    RP_CHECK_INPUT(std::isfinite(G[i]), what, " [", n, ", ", n, "]: entry (", i / n, ", ", i % n,
                   ") is not finite (", G[i], ")");
}

// k comes from the user's pruning ratio: out of range is an input error.
inline void check_k(int64_t k, int64_t n) {
  RP_CHECK_INPUT(k >= 1 && k <= n, "channel selection: k = ", k, " kept channels out of n = ", n,
                 "; k must be in 1..n");
}

inline void check_rank_tol(double tol) {
  RP_CHECK_INPUT(tol >= 0 && std::isfinite(tol), "pivoted Cholesky: tol must be finite and >= 0, got ", tol);
}

inline void check_swap_params(double f, int max_swaps) {
  RP_CHECK_INPUT(f >= 1 && std::isfinite(f), "strong RRQR: the bound f must be finite and >= 1, got ", f);
  RP_CHECK_INPUT(max_swaps >= 0, "strong RRQR: max_swaps must be >= 0, got ", max_swaps);
}

}  // namespace rankprune::rrqr_checks
