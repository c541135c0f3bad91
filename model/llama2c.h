// Llama-style softmax-attention LMs in llama2.c's legacy `.bin` format (Karpathy's llama2.c
// `export.py --version 0`; stories260K under shared/data/models), read and run in LibTorch.
//
// File: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means an unshared classifier at the end), then float32 weights as
// [out, in] rows, each kind for all layers together: token_embedding [V, D], rms_att [L, D],
// wq [L, H*hs, D], wk [L, KV*hs, D], wv [L, KV*hs, D], wo [L, D, H*hs], rms_ffn [L, D],
// w1 [L, F, D], w2 [L, D, F], w3 [L, F, D], rms_final [D], two RoPE tables [seq_len, hs/2]
// (skipped: recomputed), wcls [V, D] if unshared. The size must be exactly 28 + 4 * params.
//
// Block (pre-norm, residual; no biases):
//   x = h + Wo Attn(RoPE(Wq n), RoPE(Wk n), Wv n),  n = RMSNorm(h)   (eps 1e-5)
//   h' = x + W2 (SiLU(W1 y) * W3 y),                y = RMSNorm(x)
//   RoPE rotates the adjacent pairs (2j, 2j+1) of each head by pos * 10000^(-2j/hs); query head h
//   reads KV head h / (H / KV); scores / sqrt(hs), causal softmax.
//
// Compressed attention (prune/llama2c_compress.h) is materialised back to dense wq/wk/wv/wo; the
// parameter count of its factorised form is kept in Llama2cLayer::attn_params.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace rankprune {

struct Llama2cConfig {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;  // header vocab_size > 0
  int64_t head_size() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_size(); }
  // Weights stored in the file (RoPE tables included), i.e. (file size - 28) / 4.
  int64_t file_floats() const;
};

// Validates the 7 header fields (range, divisibility, against the file size) of `path` and returns
// them without reading any weight. InputError naming the file and the field otherwise.
Llama2cConfig read_llama2c_header(const std::string& path);

struct Llama2cLayer {
  torch::Tensor rms_att, rms_ffn;  // [D]
  torch::Tensor wq;                // [H*hs, D]
  torch::Tensor wk, wv;            // [KV*hs, D]  (KV = the layer's n_kv_heads)
  torch::Tensor wo;                // [D, H*hs]
  torch::Tensor w1, w3;            // [F, D]
  torch::Tensor w2;                // [D, F]
  int64_t n_kv_heads = 0;          // KV heads of this layer (head merging lowers it)
  int64_t attn_params = 0;         // parameters of the attention as stored (factorised form)
};

struct Llama2cWeights {
  torch::Tensor embedding;  // [V, D]
  torch::Tensor rms_final;  // [D]
  torch::Tensor wcls;       // [V, D] (the embedding when shared)
  std::vector<Llama2cLayer> layers;
};

// Key/value cache of incremental decoding: per layer k, v [B, KV, t, hs] in the compute dtype.
struct Llama2cCache {
  std::vector<torch::Tensor> k, v;
  int64_t pos = 0;  // tokens already consumed
};

class Llama2cModel {
 public:
  Llama2cModel(Llama2cConfig cfg, Llama2cWeights w);
  // Reads and validates a legacy .bin (InputError naming the file and field).
  static Llama2cModel load(const std::string& path);

  const Llama2cConfig& config() const { return cfg_; }
  const Llama2cWeights& weights() const { return w_; }
  Llama2cWeights& mutable_weights() { return w_; }

  // ids [B, T] int64 (positions cache->pos .. +T, or 0.. without a cache) -> logits [B, T, V] in
  // `dtype` (float32 or float64). With a cache, appends this call's keys and values to it.
  torch::Tensor logits(const torch::Tensor& ids, torch::ScalarType dtype = torch::kFloat32,
                       Llama2cCache* cache = nullptr) const;

  // Parameters: attention (the stored/factorised count summed over layers) and in total (the
  // embedding, classifier if unshared, norms, attention and FFN; RoPE tables are not parameters).
  int64_t attention_parameters() const;
  int64_t num_parameters() const;

 private:
  Llama2cConfig cfg_;
  Llama2cWeights w_;
  torch::Tensor rope_cos_, rope_sin_;  // [seq_len, hs/2] float64
};

// Dense attention parameters of one layer: wq + wk + wv + wo.
int64_t dense_attention_parameters(const Llama2cConfig& c, int64_t n_kv_heads);

// Greedy decoding from BOS (id 1) at position 0: `steps` argmax tokens (positions 0..steps-1).
std::vector<int> llama2c_greedy(const Llama2cModel& m, int steps, torch::ScalarType dtype = torch::kFloat32);

// `n` sequences sampled at temperature `temperature` from BOS, `max_tokens` tokens each, with a
// seeded splitmix64 stream (the same draws on every machine). A sequence ends early at the
// next BOS (llama2.c's story delimiter), which is not included. Returns the tokens after BOS.
std::vector<std::vector<int>> llama2c_sample(const Llama2cModel& m, int n, int max_tokens, double temperature,
                                             uint64_t seed, torch::ScalarType dtype = torch::kFloat32);

// llama2.c's printing of a generated sequence: pieces concatenated, one leading space dropped from
// the piece right after BOS (prev == 1), <0xHH> pieces as raw bytes. `pieces[i]` is decode_piece(i).
std::string llama2c_decode(const std::vector<int>& ids, const std::vector<std::string>& pieces, int prev = 1);

}  // namespace rankprune
