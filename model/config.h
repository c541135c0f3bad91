// config.json of fla's DeltaNet ("delta_net") and Gated DeltaNet ("gated_deltanet") causal LMs.
//
// Every field fla's configuration classes define is read with fla's default when absent; derived
// sizes are computed exactly as fla's layers do (Python int() truncation of float products
// included). Unknown fields are kept verbatim and written back by to_json(). Inconsistent or
// unsupported configurations throw InputError naming the field.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace rankprune {

enum class Arch { DeltaNet, GatedDeltaNet };

const char* arch_name(Arch a);  // "delta_net" / "gated_deltanet"

// The smallest double r >= target / base with Python's int(base * r) == target, so a ratio
// written to config.json reproduces `target` exactly when fla multiplies it back.
double fla_ratio(int64_t base, int64_t target);

struct ModelConfig {
  Arch arch = Arch::DeltaNet;

  // Fields shared by both architectures (fla names).
  int64_t hidden_size = 2048;
  int64_t num_hidden_layers = 24;
  int64_t num_heads = 16;
  int64_t vocab_size = 32000;
  int64_t conv_size = 4;
  bool use_short_conv = true;
  bool use_gate = false;
  bool allow_neg_eigval = false;
  bool tie_word_embeddings = false;
  double norm_eps = 1e-6;
  double initializer_range = 0.02;
  int64_t hidden_ratio = 4;         // null in JSON -> 4, as fla's GatedMLP
  int64_t intermediate_size = 0;    // derived when null
  std::string hidden_act = "swish";
  int64_t bos_token_id = 1, eos_token_id = 2;

  // DeltaNet only.
  double expand_k = 1.0;
  double expand_v = 1.0;
  bool use_beta = true;
  std::string qk_norm = "l2";          // l2 | sum
  std::string qk_activation = "silu";  // silu | relu | elu | identity

  // Gated DeltaNet only.
  int64_t head_dim = 256;
  int64_t num_v_heads = 0;  // null -> num_heads

  // Derived, as fla's layers compute them.
  int64_t key_dim = 0, value_dim = 0;       // q/k projection width, v projection width
  int64_t head_k_dim = 0, head_v_dim = 0;   // per head
  int64_t n_v_heads = 0;                    // value heads (GVA: a multiple of num_heads)

  nlohmann::json raw;  // the file as read (unknown fields survive a round trip)

  // Parses and validates. `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  static ModelConfig load(const std::string& model_dir);  // <dir>/config.json
  // The config for a fresh model with fla's defaults for `arch` (used by `rankprune init`).
  static ModelConfig defaults(Arch arch);

  // raw with every known field overwritten by the current values (derived fields are not
  // stored; fla recomputes them).
  nlohmann::json to_json() const;
  void save(const std::string& model_dir) const;  // atomic write of <dir>/config.json

  // Recomputes derived sizes from the fields and validates them (called by from_json).
  void finalize(const std::string& source = "config");

  // Parameter count of the model this config describes (saturates at INT64_MAX).
  int64_t num_parameters() const;
  // Tensors of the checkpoint this config describes: per layer, and in all (saturating).
  int64_t tensors_per_layer() const;
  int64_t num_tensors() const;
  // Believes the config only as far as the checkpoint can back it, before anything is sized from
  // it: the layer count against the checkpoint's tensor count and the parameter count (at >= 2
  // bytes each) against its tensor bytes, both within 2x (a near miss is left to the
  // tensor-by-tensor check, which names the tensor), and the config-sized working memory
  // (recurrent state, Grams) against the layer's weights. InputError naming `config_path`, the
  // field and the checkpoint.
  void check_backed_by(const std::string& config_path, const std::string& checkpoint, uint64_t n_tensors,
                       uint64_t tensor_bytes) const;
  // The config of this model with `k` query/key channels per head (values untouched), written so
  // that fla reloads it: DeltaNet expand_k = H*k / D; Gated DeltaNet head_dim = k and expand_v =
  // old head_v_dim / k (fla derives head_v_dim = int(head_dim * expand_v)).
  ModelConfig with_head_k_dim(int64_t k) const;

  // Recurrent state elements per layer: n_v_heads * head_k_dim * head_v_dim (saturating).
  int64_t state_elements_per_layer() const;
};

// The size options of `rankprune init` / `train`.
struct ModelShape {
  Arch arch = Arch::DeltaNet;
  int64_t hidden_size = 256, num_layers = 2, num_heads = 4, num_v_heads = 0;
  int64_t head_k_dim = 64, head_v_dim = 64, vocab_size = 32000, intermediate_size = 0, conv_size = 4;
  int use_gate = -1;  // -1: fla's default for the arch (false for delta_net, true for gated_deltanet)
  bool allow_neg_eigval = false, tie_embeddings = false;
  double init_std = 0.02;
};
// The fla config for `shape` (ratios chosen so fla re-derives exactly these head dims). UsageError
// naming the option on bad values.
ModelConfig build_model_config(const ModelShape& shape);

}  // namespace rankprune
