// The statistics a calibration pass collects about a model (method.md §2), their file format and
// the packed form the ranks of a distributed run exchange. All are float64 sums over tokens, so
// shards add up; the symmetric matrices travel as their upper triangles.
//
// The taylor baseline's gradient sums are optional (they cost a backward pass per block, and
// L * 2 * key_dim * D doubles: 1 MB for the fixtures, 1.6 GB for DeltaNet-1.3B): present only
// when a calibration was asked for them (has_taylor()).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace rankprune {

struct CalibrationStats {
  int64_t layers = 0, heads = 0, head_k_dim = 0, hidden = 0;
  int64_t tokens = 0;
  torch::Tensor gram;      // [L, H, dk, dk]  sum_t q q^T + k k^T (q, k after conv+act, before L2 norm)
  torch::Tensor x_sq;      // [L, D]          sum_t x_j^2 (x = attn_norm output; Wanda)
  torch::Tensor k_sum;     // [L, H, dk]      sum_t k_hat (L2-normalised keys; PCA)
  torch::Tensor k_outer;   // [L, H, dk, dk]  sum_t k_hat k_hat^T
  torch::Tensor q_sum;     // [L, H, dk]      same for queries
  torch::Tensor q_outer;   // [L, H, dk, dk]
  // taylor (optional, undefined unless computed): dL/dW_q and dL/dW_k summed over every block,
  // L = sum over all calibration sequences and positions of the next-token cross-entropy
  // (nats, not averaged). The importance |W (.) dL/dW| is formed from them at selection time
  // (prune/select.h), after the sum over all tokens, as the paper's code does.
  torch::Tensor taylor_grad_q;  // [L, H*dk, D]
  torch::Tensor taylor_grad_k;  // [L, H*dk, D]
  std::map<std::string, std::string> meta;  // model_sha, data_sha, seq_len, sequences, seed, ...

  static CalibrationStats zeros(const ModelConfig& cfg);
  bool has_taylor() const { return taylor_grad_q.defined(); }
  // Shard reduction. The taylor sums are added when both have them and dropped when only one
  // does (a sum over part of the tokens is not the statistic).
  void add(const CalibrationStats& other);

  // The packed form: gram, k_outer, q_outer as upper triangles (row-major, i <= j) of every
  // (layer, head), then x_sq, k_sum, q_sum, then (has_taylor() only) taylor_grad_q and
  // taylor_grad_k; tokens and meta are not part of it.
  // packed_length = L*H*(3*dk*(dk+1)/2 + 2*dk) + L*D doubles, + taylor_length with taylor.
  static std::size_t packed_length(const ModelConfig& cfg);
  static std::size_t taylor_length(const ModelConfig& cfg);  // 2 * L * H*dk * D
  std::vector<double> pack() const;
  // The inverse: full symmetric matrices (each triangle mirrored), `tokens` as given; the taylor
  // sums when `packed` has their length too.
  static CalibrationStats unpack(const ModelConfig& cfg, const std::vector<double>& packed, int64_t tokens);
  // safetensors, atomic. The taylor sums are the tensors taylor_grad_q / taylor_grad_k with
  // metadata taylor = "sum-ce-v1" (the loss they are the gradient of); files without them (every
  // file written before taylor existed) load with has_taylor() false.
  void save(const std::string& path) const;
  static CalibrationStats load(const std::string& path);
  // InputError unless these statistics were computed for a model of this shape (and, when
  // model_sha is non-empty, for exactly this model).
  void check_matches(const ModelConfig& cfg, const std::string& model_sha, const std::string& stats_path) const;
};

}  // namespace rankprune
