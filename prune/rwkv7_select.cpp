#include "prune/rwkv7_select.h"

#include <algorithm>

#include "common/error.h"

namespace rankprune {

namespace {

// The LinearLM fields select_heads reads: config (L, H, dk) and each layer's q_proj / k_proj.
// Gated DeltaNet's config takes head_dim = dk directly; nothing else of the proxy is used.
LinearLM proxy_model(const Rwkv7Model& m) {
  const Rwkv7Config& c = m.config();
  ModelConfig cfg = ModelConfig::defaults(Arch::GatedDeltaNet);
  cfg.hidden_size = c.n_embed, cfg.num_hidden_layers = c.n_layer, cfg.num_heads = c.n_heads;
  cfg.vocab_size = c.n_vocab, cfg.head_dim = c.head_k, cfg.num_v_heads = 0;
  cfg.expand_v = static_cast<double>(c.head_v) / static_cast<double>(c.head_k);
  cfg.finalize("rwkv7 proxy config");
  LmWeights w;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    LayerWeights lw;
    lw.q_proj = m.file().get(cat("blocks.", l, ".att.receptance.weight"));
    lw.k_proj = m.file().get(cat("blocks.", l, ".att.key.weight"));
    w.layers.push_back(std::move(lw));
  }
  return LinearLM(cfg, std::move(w));
}

}  // namespace

const std::vector<std::string>& rwkv7_selection_methods() {
  static const std::vector<std::string> m = {"drrqr", "qrcp", "l1", "random"};
  return m;
}

CalibrationStats rwkv7_empty_stats(const Rwkv7Config& c) {
  CalibrationStats s;
  s.layers = c.n_layer, s.heads = c.n_heads, s.head_k_dim = c.head_k, s.hidden = c.n_embed;
  auto f64 = torch::kFloat64;
  s.gram = torch::zeros({c.n_layer, c.n_heads, c.head_k, c.head_k}, f64);
  s.x_sq = torch::zeros({c.n_layer, c.n_embed}, f64);
  s.k_sum = torch::zeros({c.n_layer, c.n_heads, c.head_k}, f64);
  s.q_sum = torch::zeros({c.n_layer, c.n_heads, c.head_k}, f64);
  s.k_outer = torch::zeros({c.n_layer, c.n_heads, c.head_k, c.head_k}, f64);
  s.q_outer = torch::zeros({c.n_layer, c.n_heads, c.head_k, c.head_k}, f64);
  s.meta["model_type"] = "rwkv7";
  return s;
}

void check_rwkv7_method(const std::string& method) {
  const auto& ms = rwkv7_selection_methods();
  if (std::find(ms.begin(), ms.end(), method) == ms.end())
    throw UsageError(cat("--method: '", method, "' is not available for RWKV-7 (expected drrqr, qrcp, l1 or random)"));
}

Selection select_rwkv7(const Rwkv7Model& m, const CalibrationStats* stats, const std::string& method, double ratio,
                       uint64_t seed) {
  check_rwkv7_method(method);
  const Rwkv7Config& c = m.config();
  if (stats) {
    RP_CHECK_INPUT(stats->gram.defined() && stats->gram.sizes() == torch::IntArrayRef({c.n_layer, c.n_heads, c.head_k, c.head_k}),
                   "rwkv7 selection: the statistics' Gram has shape ",
                   stats->gram.defined() ? stats->gram.sizes() : torch::IntArrayRef{}, "; the model needs [", c.n_layer,
                   ", ", c.n_heads, ", ", c.head_k, ", ", c.head_k, "]");
  }
  return select_channels(proxy_model(m), stats, method, ratio, seed);
}

Rwkv7Model apply_rwkv7_selection(const Rwkv7Model& m, const Selection& sel) {
  RP_CHECK_INPUT(!sel.rotation.defined(), "rwkv7: a rotating selection (pca) cannot be applied to an RWKV-7 model");
  return m.slice_keys(sel.kept);
}

}  // namespace rankprune
