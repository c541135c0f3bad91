// Tucker decomposition of 3-way tensors by the higher-order SVD (De Lathauwer, De Moor &
// Vandewalle, 2000), model-free. All computation in float64 on the CPU.
//
// For X [I1, I2, I3]: the mode-n unfolding X_(n) [In, prod of the others] (mode n moved first,
// the rest flattened in order); U_n = the leading r_n left singular vectors of X_(n); the core
// G = X x1 U1^T x2 U2^T x3 U3^T [r1, r2, r3]; the reconstruction X^ = G x1 U1 x2 U2 x3 U3.
// X^ is the orthogonal projection of X onto span(U1) (x) span(U2) (x) span(U3), so
//   ||X - X^||^2 = ||X||^2 - ||G||^2   and   max_n D_n <= ||X - X^||^2 <= sum_n D_n,
// D_n = the squared singular values of X_(n) beyond r_n (the HOSVD bounds).
//
// Attention weights as tensors: a projection [n_heads * head_dim, hidden] is read as
// [n_heads, head_dim, hidden] (an output projection [hidden, n_heads * head_dim] is transposed first).
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <vector>

namespace rankprune {

using Ranks3 = std::array<int64_t, 3>;

// The largest useful rank of mode n: min(In, prod of the others) (the unfolding's rank bound).
int64_t max_mode_rank(const torch::Tensor& x, int mode);
Ranks3 max_mode_ranks(const torch::Tensor& x);
// Mode-n unfolding [In, prod others] (float64 copy).
torch::Tensor unfold(const torch::Tensor& x, int mode);
// Singular values of the mode-n unfolding, descending (float64).
std::vector<double> mode_singular_values(const torch::Tensor& x, int mode);

struct Tucker {
  torch::Tensor core;                    // [r1, r2, r3] float64
  std::array<torch::Tensor, 3> factors;  // U_n [In, r_n], orthonormal columns
  std::array<std::vector<double>, 3> singular_values;  // of every unfolding, all max_mode_rank of them
  Ranks3 dims{}, ranks{};
};

// Truncated HOSVD to `ranks` (each in [1, max_mode_rank]; InputError otherwise).
Tucker hosvd(const torch::Tensor& x, Ranks3 ranks);
// G x1 U1 x2 U2 x3 U3 -> [I1, I2, I3] float64.
torch::Tensor tucker_reconstruct(const Tucker& t);
// Stored values of the factorised form: r1 r2 r3 + sum_n In r_n.
int64_t tucker_parameters(const Ranks3& dims, const Ranks3& ranks);

// Squared Frobenius error ||X - X^||^2 for every rank triple at once, from the full HOSVD core
// (ranks = max_mode_ranks): err[a-1][b-1][c-1] = ||X||^2 - ||G_full[:a, :b, :c]||^2 (truncating the
// factors of the full HOSVD is the truncated HOSVD). Returns [R1, R2, R3] float64 (R = max ranks).
torch::Tensor tucker_error_table(const Tucker& full);

// Sum over modes of the squared singular values beyond r_n (the upper bound), and the largest of
// them (the lower bound).
double hosvd_discarded_sum(const Tucker& t, const Ranks3& ranks);
double hosvd_discarded_max(const Tucker& t, const Ranks3& ranks);

// Attention weight -> [heads, head_dim, hidden]: w [heads*head_dim, hidden] (transposed first
// when `output`, w [hidden, heads*head_dim]).
torch::Tensor attention_tensor(const torch::Tensor& w, int64_t heads, bool output);
// The inverse: [heads, head_dim, hidden] -> the projection's matrix shape.
torch::Tensor attention_matrix(const torch::Tensor& t, bool output);

}  // namespace rankprune
