// Calibration: turn text (or pre-tokenised .npy) into token sequences, stream them through the
// model, and accumulate per-(layer, head) statistics without storing activations
// (method.md §2). All statistics are sums over tokens in float64, so shards computed on
// different ranks add up exactly (up to float rounding) and one pass serves every method.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/linear_lm.h"
#include "model/tokenizer.h"

namespace rankprune {

struct CalibrationData {
  torch::Tensor ids;       // [N, L] int64, CPU
  std::string data_sha;    // identity of (files, tokenizer, seq_len, N, seed, bos)
  int64_t available = 0;   // sequences the data could have provided
};

// .txt: the whole file is one document. .jsonl: one document per line, field "text". .npy:
// int32/int64 [N, L], one sequence per row (L must equal seq_len; no tokenizer needed).
// Text documents are tokenized (BOS first when the tokenizer has one and add_bos), concatenated
// and cut into non-overlapping seq_len windows (tail dropped); `sequences` windows (or .npy rows)
// are drawn without replacement with `seed` and kept in their original order.
// InputError naming the file for unreadable/malformed data, unknown extensions, ids outside
// [0, vocab_size), or too little data for the request.
// The documents of a text file: .txt/.tokens/.raw are one document; .jsonl one per line (field
// "text"). InputError naming the file (and line) otherwise. `what` names the data in messages.
std::vector<std::string> read_documents(const std::string& path, const std::string& what = "calibration data");

CalibrationData load_calibration_data(const std::vector<std::string>& files, const Tokenizer* tok,
                                      const std::string& tokenizer_path, int64_t seq_len, int64_t sequences,
                                      uint64_t seed, int64_t vocab_size, bool add_bos = true);

// Seeded choice of `k` distinct indices from [0, n), ascending. Platform-independent (own
// Fisher-Yates over a splitmix64 stream), so selections are reproducible everywhere.
std::vector<int64_t> choose_indices(int64_t n, int64_t k, uint64_t seed);

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
  void save(const std::string& path) const;  // safetensors, atomic
  static CalibrationStats load(const std::string& path);
  // InputError unless these statistics were computed for a model of this shape (and, when
  // model_sha is non-empty, for exactly this model).
  void check_matches(const ModelConfig& cfg, const std::string& model_sha, const std::string& stats_path) const;
};

// Runs `ids` through the model in batches and returns the summed statistics.
CalibrationStats collect_statistics(const LinearLM& model, const torch::Tensor& ids, int64_t batch_size,
                                    const ForwardOptions& opts);

// The model's identity: sha256 over config.json and every checkpoint file.
std::string model_sha(const std::string& model_dir);

}  // namespace rankprune
