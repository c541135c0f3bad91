#include "prune/select.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/random.h"
#include "prune/gram_select.h"

namespace rankprune {

namespace {

// Top-k of `score` (descending; ties -> lower index), returned ascending.
std::vector<int64_t> top_k(const std::vector<double>& score, int64_t k) {
  std::vector<int64_t> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  idx.resize(static_cast<std::size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<std::vector<double>> per_head(const torch::Tensor& s, int64_t H, int64_t dk) {  // [H*dk] or [H, dk]
  const auto c = s.to(torch::kFloat64).contiguous();
  std::vector<std::vector<double>> out(static_cast<std::size_t>(H));
  const double* p = c.data_ptr<double>();
  for (int64_t h = 0; h < H; ++h) out[h].assign(p + h * dk, p + (h + 1) * dk);
  return out;
}

// Per-channel scores of one layer: [H][dk] from |W| (optionally weighted per input column).
std::vector<std::vector<double>> weight_scores(const LayerWeights& L, int64_t H, int64_t dk,
                                               const torch::Tensor& column_weight) {
  auto a = L.q_proj.to(torch::kFloat64).abs() + L.k_proj.to(torch::kFloat64).abs();  // [H*dk, D]
  if (column_weight.defined()) a = a * column_weight.unsqueeze(0);
  return per_head(a.sum(1), H, dk);
}

}  // namespace

const std::vector<std::string>& selection_methods() {
  static const std::vector<std::string> m = {"drrqr", "qrcp", "l1", "wanda", "random", "pca", "taylor"};
  return m;
}

bool method_needs_statistics(const std::string& m) {
  return m == "drrqr" || m == "qrcp" || m == "wanda" || m == "pca" || m == "taylor";
}

bool method_needs_taylor(const std::string& m) { return m == "taylor"; }

torch::Tensor taylor_importance(const LinearLM& model, const CalibrationStats& s, int64_t l) {
  RP_ASSERT(s.has_taylor(), "taylor importance without taylor statistics");
  const ModelConfig& c = model.config();
  const LayerWeights& w = model.weights().layers[static_cast<std::size_t>(l)];
  // The paper's code: (W * W.grad).abs() summed over the input dimension, q and k added. Here in
  // float64 (2 * H*dk * D multiplies per projection).
  auto score = (w.q_proj.to(torch::kFloat64) * s.taylor_grad_q[l]).abs().sum(1) +
               (w.k_proj.to(torch::kFloat64) * s.taylor_grad_k[l]).abs().sum(1);  // [H*dk]
  return score.view({c.num_heads, c.head_k_dim});
}

void check_method(const std::string& method) {
  const auto& methods = selection_methods();
  if (std::find(methods.begin(), methods.end(), method) != methods.end()) return;
  std::string list;
  for (const auto& m : methods) list += (list.empty() ? "" : ", ") + m;
  throw UsageError(cat("--method: unknown method '", method, "' (expected one of ", list, ")"));
}

int64_t kept_channels(int64_t dk, double ratio) {
  if (!(ratio >= 0.0 && ratio < 1.0))
    throw UsageError(cat("--ratio must be in [0, 1) (the fraction of query/key channels removed), got ", ratio));
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(static_cast<double>(dk) * (1.0 - ratio))));
}

// Top-k eigenvectors (descending eigenvalue) of the covariance of the normalised keys [H, k, dk].
torch::Tensor pca_rotation(const CalibrationStats& s, int64_t l, int64_t k, bool include_queries) {
  auto sum = s.k_sum[l], outer = s.k_outer[l];
  double n = static_cast<double>(s.tokens);
  if (include_queries) {
    // The paper's code pools keys and queries this way: averaged sums over 2n samples.
    sum = (s.k_sum[l] + s.q_sum[l]) / 2, outer = (s.k_outer[l] + s.q_outer[l]) / 2, n *= 2;
  }
  RP_CHECK_INPUT(n > 1, "pca needs statistics over at least 2 tokens");
  auto mu = sum / n;                                                                     // [H, dk]
  auto cov = (outer - n * mu.unsqueeze(-1) * mu.unsqueeze(-2)) / (n - 1);                // [H, dk, dk]
  auto eig = torch::linalg_eigh(cov);                                                    // ascending
  auto vecs = std::get<1>(eig).flip({-1});                                               // descending
  return vecs.narrow(-1, 0, k).transpose(-1, -2).contiguous();                           // [H, k, dk]
}

namespace {

void check_request(const LinearLM& model, const CalibrationStats* stats, const std::string& method) {
  check_method(method);
  if (method_needs_statistics(method))
    RP_CHECK_INPUT(stats != nullptr, "method '", method, "' needs calibration statistics (--stats or --data)");
  if (method_needs_taylor(method))
    RP_CHECK_INPUT(stats->has_taylor(), "method '", method,
                   "' needs the taylor gradient sums, and these calibration statistics have none (they cost "
                   "backward passes, so they are computed only on request: `rankprune calibrate --taylor`, or "
                   "prune --data)");
  (void)model;
}

}  // namespace

std::vector<HeadSelection> select_heads(const LinearLM& model, const CalibrationStats* stats, const std::string& method,
                                        double ratio, uint64_t seed, int64_t lo, int64_t hi) {
  check_request(model, stats, method);
  RP_ASSERT(method != "pca", "pca rotates; it has no per-head index sets");
  const ModelConfig& c = model.config();
  const int64_t H = c.num_heads, dk = c.head_k_dim;
  RP_ASSERT(0 <= lo && lo <= hi && hi <= c.num_hidden_layers * H, "problems [", lo, ", ", hi, ")");
  const int64_t k = kept_channels(dk, ratio);
  std::vector<HeadSelection> out;
  std::vector<std::vector<double>> layer_scores;  // l1 / wanda / taylor: one layer's scores, reused across its heads
  int64_t scored_layer = -1;
  for (int64_t p = lo; p < hi; ++p) {
    const int64_t l = p / H, h = p % H;
    HeadSelection r;
    if (method == "l1" || method == "wanda" || method == "taylor") {
      if (scored_layer != l) {
        if (method == "taylor") {
          layer_scores = per_head(taylor_importance(model, *stats, l), H, dk);
        } else {
          torch::Tensor colw;
          if (method == "wanda")
            colw = (stats->x_sq[l] / static_cast<double>(std::max<int64_t>(1, stats->tokens))).sqrt();
          layer_scores = weight_scores(model.weights().layers[l], H, dk, colw);
        }
        scored_layer = l;
      }
      r.kept = top_k(layer_scores[h], k);
    } else if (method == "random") {
      r.kept = choose_indices(dk, k, seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(l * H + h + 1)));
    } else {
      auto g = stats->gram[l][h].contiguous();  // [dk, dk] float64
      GramSelection gs = select_from_gram(g.data_ptr<double>(), dk, k, method == "drrqr");
      r.kept = std::move(gs.kept);
      r.swaps = gs.swaps;
      r.hit_swap_limit = gs.hit_swap_limit;
    }
    out.push_back(std::move(r));
  }
  return out;
}

torch::Tensor pca_layers(const CalibrationStats& stats, double ratio, bool include_queries, int64_t lo, int64_t hi) {
  const int64_t k = kept_channels(stats.head_k_dim, ratio);
  std::vector<torch::Tensor> rot;
  for (int64_t l = lo; l < hi; ++l) rot.push_back(pca_rotation(stats, l, k, include_queries));
  if (rot.empty()) return torch::empty({0, stats.heads, k, stats.head_k_dim}, torch::kFloat64);
  return torch::stack(rot);
}

Selection assemble_selection(const ModelConfig& c, const std::string& method, double ratio, uint64_t seed,
                             std::vector<HeadSelection> heads, const torch::Tensor& rotation, bool pca_include_queries) {
  const int64_t L = c.num_hidden_layers, H = c.num_heads;
  Selection sel;
  sel.method = method, sel.ratio = ratio, sel.seed = seed;
  sel.head_k_dim = kept_channels(c.head_k_dim, ratio);
  if (method == "pca") {
    RP_ASSERT(rotation.defined() && rotation.size(0) == L, "pca rotation for ", L, " layers");
    sel.rotation = rotation;
    sel.extra = {{"rotation", true}, {"include_queries", pca_include_queries},
                 {"conv_approximation", "new filter r = sum_d T[r,d]^2 * old filter d (not exact)"}};
    return sel;
  }
  RP_ASSERT(static_cast<int64_t>(heads.size()) == L * H, heads.size(), " head selections for ", L * H, " heads");
  sel.kept.resize(static_cast<std::size_t>(L));
  int64_t swaps = 0, heads_at_limit = 0;
  for (int64_t p = 0; p < L * H; ++p) {
    auto& r = heads[static_cast<std::size_t>(p)];
    swaps += r.swaps;
    heads_at_limit += r.hit_swap_limit ? 1 : 0;
    sel.kept[static_cast<std::size_t>(p / H)].push_back(std::move(r.kept));
  }
  if (method == "drrqr") sel.extra = {{"swaps", swaps}, {"heads_at_swap_limit", heads_at_limit}};
  return sel;
}

Selection select_channels(const LinearLM& model, const CalibrationStats* stats, const std::string& method,
                          double ratio, uint64_t seed, bool pca_include_queries) {
  check_request(model, stats, method);
  const ModelConfig& c = model.config();
  const int64_t L = c.num_hidden_layers, H = c.num_heads;
  if (method == "pca")
    return assemble_selection(c, method, ratio, seed, {}, pca_layers(*stats, ratio, pca_include_queries, 0, L),
                              pca_include_queries);
  return assemble_selection(c, method, ratio, seed, select_heads(model, stats, method, ratio, seed, 0, L * H), {},
                            pca_include_queries);
}

nlohmann::ordered_json Selection::to_json() const {
  nlohmann::ordered_json j;
  j["method"] = method;
  j["ratio"] = ratio;
  j["seed"] = seed;
  j["head_k_dim"] = head_k_dim;
  auto layers = nlohmann::ordered_json::array();
  for (std::size_t l = 0; l < kept.size(); ++l) layers.push_back({{"layer", l}, {"heads", kept[l]}});
  j["layers"] = layers;
  if (!extra.empty()) j["diagnostics"] = nlohmann::ordered_json::parse(extra.dump());
  return j;
}

std::string Selection::to_text() const {
  auto j = to_json();
  std::string out = "{\n";
  for (const char* key : {"method", "ratio", "seed", "head_k_dim"}) out += cat("  \"", key, "\": ", j[key].dump(), ",\n");
  if (j.contains("diagnostics")) out += cat("  \"diagnostics\": ", j["diagnostics"].dump(), ",\n");
  out += "  \"layers\": [\n";
  for (std::size_t l = 0; l < kept.size(); ++l) {
    out += cat("    {\"layer\": ", l, ", \"heads\": [\n");
    for (std::size_t h = 0; h < kept[l].size(); ++h)
      out += cat("      ", nlohmann::json(kept[l][h]).dump(), h + 1 < kept[l].size() ? ",\n" : "\n");
    out += cat("    ]}", l + 1 < kept.size() ? ",\n" : "\n");
  }
  return out + "  ]\n}\n";
}

Selection Selection::from_json(const nlohmann::json& j, const std::string& src) {
  Selection s;
  try {
    s.method = j.at("method").get<std::string>();
    s.ratio = j.at("ratio").get<double>();
    s.seed = j.value("seed", uint64_t{0});
    s.head_k_dim = j.at("head_k_dim").get<int64_t>();
    for (const auto& layer : j.at("layers")) s.kept.push_back(layer.at("heads").get<std::vector<std::vector<int64_t>>>());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(cat(src, ": not a selection (", e.what(), ")"));
  }
  return s;
}

LinearLM apply_selection(const LinearLM& model, const Selection& sel) {
  const ModelConfig& c = model.config();
  const int64_t L = c.num_hidden_layers, H = c.num_heads, dk = c.head_k_dim, k = sel.head_k_dim;
  if (sel.rotation.defined()) {
    RP_CHECK_INPUT(sel.rotation.sizes() == torch::IntArrayRef({L, H, k, dk}), "pca rotation has shape ",
                   sel.rotation.sizes(), "; expected [", L, ", ", H, ", ", k, ", ", dk, "]");
    LmWeights w = model.weights();
    for (int64_t l = 0; l < L; ++l) {
      auto T = sel.rotation[l];  // [H, k, dk]
      auto& lw = w.layers[l];
      auto project = [&](const torch::Tensor& W) {  // [H*dk, D] -> [H*k, D]
        return torch::matmul(T, W.to(torch::kFloat64).view({H, dk, -1})).reshape({H * k, -1}).to(W.scalar_type());
      };
      auto mix = [&](const torch::Tensor& conv) {  // [H*dk, 1, K] -> [H*k, 1, K]
        return torch::matmul(T.pow(2), conv.to(torch::kFloat64).view({H, dk, -1}))
            .reshape({H * k, 1, -1})
            .to(conv.scalar_type());
      };
      lw.q_proj = project(lw.q_proj), lw.k_proj = project(lw.k_proj);
      if (lw.q_conv.defined()) lw.q_conv = mix(lw.q_conv), lw.k_conv = mix(lw.k_conv);
    }
    return LinearLM(c.with_head_k_dim(k), std::move(w));
  }
  RP_CHECK_INPUT(static_cast<int64_t>(sel.kept.size()) == L, "selection has ", sel.kept.size(),
                 " layers; the model has ", L);
  LmWeights w = model.weights();  // shallow: tensors shared
  for (int64_t l = 0; l < L; ++l) {
    const auto& heads = sel.kept[l];
    RP_CHECK_INPUT(static_cast<int64_t>(heads.size()) == H, "selection layer ", l, " has ", heads.size(),
                   " heads; the model has ", H);
    std::vector<int64_t> rows;
    for (int64_t h = 0; h < H; ++h) {
      const auto& idx = heads[h];
      RP_CHECK_INPUT(static_cast<int64_t>(idx.size()) == k, "selection layer ", l, " head ", h, " keeps ", idx.size(),
                     " channels; head_k_dim is ", k);
      for (std::size_t i = 0; i < idx.size(); ++i) {
        RP_CHECK_INPUT(idx[i] >= 0 && idx[i] < dk && (i == 0 || idx[i] > idx[i - 1]), "selection layer ", l, " head ",
                       h, ": channel ids must be ascending and in [0, ", dk, ")");
        rows.push_back(h * dk + idx[i]);
      }
    }
    auto index = torch::tensor(rows, torch::kLong);
    auto& lw = w.layers[l];
    // Depthwise conv and projection rows are indexed by the same channel: slicing is exact.
    lw.q_proj = lw.q_proj.index_select(0, index);
    lw.k_proj = lw.k_proj.index_select(0, index);
    if (lw.q_conv.defined()) lw.q_conv = lw.q_conv.index_select(0, index);
    if (lw.k_conv.defined()) lw.k_conv = lw.k_conv.index_select(0, index);
  }
  return LinearLM(c.with_head_k_dim(k), std::move(w));
}

}  // namespace rankprune
