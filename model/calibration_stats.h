// The statistics a calibration pass collects about a model (method.md §2), their file format and
// the packed form the ranks of a distributed run exchange. All are float64 sums over tokens, so
// shards add up; the symmetric matrices travel as their upper triangles.
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
  std::map<std::string, std::string> meta;  // model_sha, data_sha, seq_len, sequences, seed, ...

  static CalibrationStats zeros(const ModelConfig& cfg);
  void add(const CalibrationStats& other);   // shard reduction

  // The packed form: gram, k_outer, q_outer as upper triangles (row-major, i <= j) of every
  // (layer, head), then x_sq, k_sum, q_sum; tokens and meta are not part of it.
  // packed_length = L*H*(3*dk*(dk+1)/2 + 2*dk) + L*D doubles.
  static std::size_t packed_length(const ModelConfig& cfg);
  std::vector<double> pack() const;
  // The inverse: full symmetric matrices (each triangle mirrored), `tokens` as given.
  static CalibrationStats unpack(const ModelConfig& cfg, const std::vector<double>& packed, int64_t tokens);
  void save(const std::string& path) const;  // safetensors, atomic
  static CalibrationStats load(const std::string& path);
  // InputError unless these statistics were computed for a model of this shape (and, when
  // model_sha is non-empty, for exactly this model).
  void check_matches(const ModelConfig& cfg, const std::string& model_sha, const std::string& stats_path) const;
};

}  // namespace rankprune
