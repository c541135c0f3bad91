// Channel selection: which query/key channels of every (layer, head) to keep.
//
// One index set per head, shared by q and k (the state's key dimension), the same count
// k = floor(dk * (1 - ratio)) (at least 1) for every head and layer, since fla's config holds one
// head_k_dim per model. Methods (method.md §3):
//   drrqr  pivoted Cholesky of the Gram G = sum q q^T + k k^T + Gu-Eisenstat strong-RRQR swaps
//   qrcp   the greedy pivots only
//   l1     ||W_q[i,:]||_1 + ||W_k[i,:]||_1, top-k per head (no data)
//   wanda  sum_j (|W_q[i,j]| + |W_k[i,j]|) * sqrt(mean_t x_j^2), top-k per head
//   random seeded choice per (layer, head)
//   taylor first-order Taylor importance (the paper's code, after LLM-Pruner):
//          sum_j |W_q[i,j] G_q[i,j]| + sum_j |W_k[i,j] G_k[i,j]|, top-k per head, with G = dL/dW of
//          the next-token cross-entropy summed over every calibration token (stats.taylor_grad_*;
//          the absolute value is taken after the sum over tokens, as the paper's code does)
//   pca    the only rotating method: T = top-k eigenvectors of the covariance of the L2-normalised
//          keys (--pca-include-queries: keys and queries pooled, as the paper's code does);
//          W_q <- T W_q, W_k <- T W_k. The depthwise conv cannot be rotated exactly; like the
//          paper's code we approximate the new filter as sum_d T[r,d]^2 w_old[d,:].
// Pure functions of (weights, statistics, method, ratio, seed): no I/O.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "model/linear_lm.h"
#include "model/calibration_stats.h"

namespace rankprune {

struct Selection {
  std::string method;
  double ratio = 0;
  uint64_t seed = 0;
  int64_t head_k_dim = 0;                                // channels kept per head
  std::vector<std::vector<std::vector<int64_t>>> kept;  // [layer][head] ascending channel ids
  nlohmann::json extra = nlohmann::json::object();       // method diagnostics (swaps, ...)
  torch::Tensor rotation;  // pca only: [L, H, k, dk] float64 rows = eigenvectors (kept is empty)

  // {"method","ratio","head_k_dim","layers":[{"layer":0,"heads":[[...],...]},...]} (+ "seed")
  nlohmann::ordered_json to_json() const;
  static Selection from_json(const nlohmann::json& j, const std::string& source);
  // selection.json text: the JSON above, one line per head's index list.
  std::string to_text() const;
};

const std::vector<std::string>& selection_methods();  // names accepted by select_channels
bool method_needs_statistics(const std::string& method);
bool method_needs_taylor(const std::string& method);  // needs stats.has_taylor() (backward passes)
void check_method(const std::string& method);  // UsageError listing the methods

// k = floor(dk * (1 - ratio)), at least 1. UsageError unless 0 <= ratio < 1.
int64_t kept_channels(int64_t head_k_dim, double ratio);

// UsageError for an unknown method or a ratio out of range; InputError when `stats` is needed
// and missing (or, for taylor, lacks the taylor gradient sums).
Selection select_channels(const LinearLM& model, const CalibrationStats* stats, const std::string& method,
                          double ratio, uint64_t seed, bool pca_include_queries = false);

// The same in shares, for ranks that each solve part of it (worker/selection.h). A selection is
// L*H independent problems, problem p = (layer p / H, head p % H); pca's are L, one per layer.
struct HeadSelection {
  std::vector<int64_t> kept;  // ascending
  int64_t swaps = 0;          // drrqr diagnostics
  bool hit_swap_limit = false;
};
// Problems [lo, hi) of a non-rotating method.
std::vector<HeadSelection> select_heads(const LinearLM& model, const CalibrationStats* stats, const std::string& method,
                                        double ratio, uint64_t seed, int64_t lo, int64_t hi);
// pca rotations of layers [lo, hi): [hi - lo, H, k, dk] float64.
torch::Tensor pca_layers(const CalibrationStats& stats, double ratio, bool include_queries, int64_t lo, int64_t hi);
// Every problem's answer (all L*H heads in order, or pca's [L, H, k, dk] rotation) -> the Selection
// select_channels returns.
Selection assemble_selection(const ModelConfig& cfg, const std::string& method, double ratio, uint64_t seed,
                             std::vector<HeadSelection> heads, const torch::Tensor& rotation,
                             bool pca_include_queries = false);

// For pca the rows are T W and the conv filters sum_d T[r,d]^2 w[d,:] (approximate).
// A new model whose q_proj / k_proj rows and q_conv1d / k_conv1d channels are those of `sel`
// (exact: the convolution is depthwise), with the config updated so fla reloads it. Weights keep
// their dtype; untouched tensors are shared with `model`.
LinearLM apply_selection(const LinearLM& model, const Selection& sel);

// taylor's per-channel importance of layer `layer`: [H, dk] float64,
// sum_j |W_q (.) G_q|[h*dk + i, j] + sum_j |W_k (.) G_k|[h*dk + i, j]. Needs stats.has_taylor().
torch::Tensor taylor_importance(const LinearLM& model, const CalibrationStats& stats, int64_t layer);

}  // namespace rankprune
