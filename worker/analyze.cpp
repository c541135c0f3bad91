// Rank diagnostics: stable rank of the delta-rule state over time and entropy effective rank of the
// Gram spectra (method.md §6).
#include "worker/analyze.h"

#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "common/error.h"
#include "prune/tucker.h"

namespace rankprune {

// ------------------------------------------------------------------------------ rank measures

torch::Tensor stable_ranks(const torch::Tensor& m) {
  RP_CHECK_INPUT(m.dim() >= 2, "stable rank needs a matrix or a batch of matrices, got shape ", m.sizes());
  const auto d = m.to(torch::kCPU).to(torch::kFloat64);
  if (d.size(-1) == 0 || d.size(-2) == 0) return torch::zeros(d.sizes().slice(0, d.dim() - 2), d.options());
  const auto fro2 = (d * d).sum({-2, -1});
  const auto smax = torch::linalg_svdvals(d).select(-1, 0);  // singular values come descending
  const auto smax2 = smax * smax;
  return torch::where(smax2 > 0, fro2 / torch::where(smax2 > 0, smax2, torch::ones_like(smax2)),
                      torch::zeros_like(fro2));
}

double stable_rank(const torch::Tensor& m) {
  RP_CHECK_INPUT(m.dim() == 2, "stable_rank needs a matrix, got shape ", m.sizes());
  return stable_ranks(m).item<double>();
}

double rank_utilisation(double sr, int64_t rows, int64_t cols) {
  const int64_t cap = std::min(rows, cols);
  RP_CHECK_INPUT(cap > 0, "rank utilisation of an empty ", rows, "x", cols, " matrix");
  return sr / static_cast<double>(cap);
}

std::vector<double> gram_spectrum(const torch::Tensor& gram) {
  RP_CHECK_INPUT(gram.dim() == 2 && gram.size(0) == gram.size(1), "Gram matrix must be square, got shape ",
                 gram.sizes());
  const int64_t n = gram.size(0);
  if (n == 0) return {};
  auto g = gram.to(torch::kCPU).to(torch::kFloat64);
  g = ((g + g.t()) * 0.5).contiguous();  // exact symmetry for dsyevd
  RP_CHECK_INPUT(torch::isfinite(g).all().item<bool>(), "Gram matrix has non-finite entries");
  std::vector<double> a(g.data_ptr<double>(), g.data_ptr<double>() + n * n), w(static_cast<std::size_t>(n));
  const lapack_int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'L', static_cast<lapack_int>(n), a.data(),
                                         static_cast<lapack_int>(n), w.data());
  RP_ASSERT(info == 0, "dsyevd failed with info ", info);
  std::reverse(w.begin(), w.end());  // ascending -> descending
  for (double& x : w) x = std::max(x, 0.0);
  return w;
}

double entropy_effective_rank(const std::vector<double>& s) {
  double total = 0.0;
  for (double x : s) {
    RP_CHECK_INPUT(std::isfinite(x) && x >= 0.0, "spectrum values must be finite and >= 0, got ", x);
    total += x;
  }
  if (total <= 0.0) return 0.0;
  double h = 0.0;
  for (double x : s) {
    if (x <= 0.0) continue;
    const double p = x / total;
    h -= p * std::log(p);
  }
  return std::exp(h);
}

double top_half_mass(const std::vector<double>& s) {
  if (s.empty()) return 0.0;
  std::vector<double> v(s);
  std::sort(v.begin(), v.end(), std::greater<double>());
  const double total = std::accumulate(v.begin(), v.end(), 0.0);
  if (total <= 0.0) return 0.0;
  const auto k = std::max<std::size_t>(1, v.size() / 2);
  const double top = std::accumulate(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), 0.0);
  return top / total;
}

SpectrumRank spectrum_rank(const torch::Tensor& gram) {
  const auto s = gram_spectrum(gram);
  return {entropy_effective_rank(s), top_half_mass(s)};
}

// ------------------------------------------------------------------------------ state over time

void for_each_state(const LinearLM& model, const torch::Tensor& ids, int64_t every, const ForwardOptions& opts,
                    const StateVisitor& on_state) {
  RP_CHECK_INPUT(every >= 1, "the state sampling interval must be >= 1 token, got ", every);
  RP_CHECK_INPUT(ids.dim() == 1 || (ids.dim() == 2 && ids.size(0) == 1),
                 "state analysis takes one sequence ([T] or [1, T]), got shape ", ids.sizes());
  const auto seq = ids.reshape({1, -1}).to(torch::kLong);
  const int64_t T = seq.size(1);
  RP_CHECK_INPUT(T >= 1, "state analysis needs a non-empty sequence");
  torch::NoGradGuard no_grad;
  LmState state;
  for (int64_t t0 = 0; t0 < T; t0 += every) {
    const int64_t n = std::min(every, T - t0);
    model.hidden(seq.narrow(1, t0, n), &state, opts);
    on_state(t0 + n, state);
  }
}

StateRankSeries state_rank_series(const LinearLM& model, const torch::Tensor& ids, int64_t every,
                                  const ForwardOptions& opts) {
  const auto& c = model.config();
  StateRankSeries r;
  std::vector<torch::Tensor> sr;  // each [L, Hv]
  for_each_state(model, ids, every, opts, [&](int64_t t, const LmState& st) {
    r.tokens.push_back(t);
    std::vector<torch::Tensor> per_layer;
    for (const auto& layer : st.layers) per_layer.push_back(stable_ranks(layer.s.select(0, 0)));  // [Hv]
    sr.push_back(torch::stack(per_layer));
  });
  r.stable_rank = torch::stack(sr, -1);  // [L, Hv, n]
  r.utilisation = r.stable_rank / static_cast<double>(std::min(c.head_k_dim, c.head_v_dim));
  return r;
}

// ------------------------------------------------------------------------------ full analysis

AnalysisReport analyze_model(const LinearLM& model, const torch::Tensor& sequence, int64_t every,
                             const CalibrationStats& stats, const ForwardOptions& opts) {
  const auto& c = model.config();
  stats.check_matches(c, "", "the Gram statistics");
  AnalysisReport rep;
  rep.every = every;
  rep.seq_len = sequence.numel();
  rep.head_k_dim = c.head_k_dim;
  rep.head_v_dim = c.head_v_dim;
  rep.gram_tokens = stats.tokens;
  const auto series = state_rank_series(model, sequence, every, opts);
  rep.tokens = series.tokens;
  const int64_t L = c.num_hidden_layers, Hv = c.n_v_heads, H = c.num_heads, n = series.stable_rank.size(2);
  const auto sr = series.stable_rank.contiguous(), ut = series.utilisation.contiguous();
  for (int64_t l = 0; l < L; ++l) {
    std::vector<SpectrumRank> g(H), k(H), q(H);
    for (int64_t h = 0; h < H; ++h) {
      g[h] = spectrum_rank(stats.gram[l][h]);
      if (stats.k_outer.defined()) k[h] = spectrum_rank(stats.k_outer[l][h]);
      if (stats.q_outer.defined()) q[h] = spectrum_rank(stats.q_outer[l][h]);
    }
    std::vector<HeadDiagnostics> heads;
    for (int64_t j = 0; j < Hv; ++j) {
      HeadDiagnostics d;
      d.head = j;
      d.key_head = j / (Hv / H);
      const double* ps = sr[l][j].data_ptr<double>();
      const double* pu = ut[l][j].data_ptr<double>();
      d.stable_rank.assign(ps, ps + n);
      d.utilisation.assign(pu, pu + n);
      d.stable_rank_mean = std::accumulate(d.stable_rank.begin(), d.stable_rank.end(), 0.0) / static_cast<double>(n);
      d.utilisation_mean = std::accumulate(d.utilisation.begin(), d.utilisation.end(), 0.0) / static_cast<double>(n);
      d.stable_rank_final = d.stable_rank.back();
      d.utilisation_final = d.utilisation.back();
      d.gram = g[d.key_head], d.keys = k[d.key_head], d.queries = q[d.key_head];
      heads.push_back(std::move(d));
    }
    rep.layers.push_back(std::move(heads));
  }
  return rep;
}

nlohmann::json AnalysisReport::to_json() const {
  nlohmann::json layers_j = nlohmann::json::array();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    nlohmann::json heads_j = nlohmann::json::array();
    for (const auto& d : layers[l]) {
      heads_j.push_back({{"head", d.head},
                         {"key_head", d.key_head},
                         {"tokens", tokens},
                         {"stable_rank", d.stable_rank},
                         {"utilisation", d.utilisation},
                         {"stable_rank_mean", d.stable_rank_mean},
                         {"stable_rank_final", d.stable_rank_final},
                         {"utilisation_mean", d.utilisation_mean},
                         {"utilisation_final", d.utilisation_final},
                         {"gram_entropy_rank", d.gram.entropy_rank},
                         {"gram_top_half_mass", d.gram.top_half_mass},
                         {"key_gram_entropy_rank", d.keys.entropy_rank},
                         {"key_gram_top_half_mass", d.keys.top_half_mass},
                         {"query_gram_entropy_rank", d.queries.entropy_rank},
                         {"query_gram_top_half_mass", d.queries.top_half_mass}});
    }
    layers_j.push_back({{"layer", static_cast<int64_t>(l)}, {"heads", std::move(heads_j)}});
  }
  return {{"model", model},
          {"seq_len", seq_len},
          {"every", every},
          {"head_k_dim", head_k_dim},
          {"head_v_dim", head_v_dim},
          {"rank_cap", std::min(head_k_dim, head_v_dim)},
          {"gram_tokens", gram_tokens},
          {"layers", std::move(layers_j)}};
}

std::string AnalysisReport::table() const {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%5s %4s  %9s %8s %9s  %9s %9s  %9s\n", "layer", "head", "sr_final", "util_fin",
                "sr_mean", "erank(G)", "mass50(G)", "erank(K)");
  out += buf;
  for (std::size_t l = 0; l < layers.size(); ++l)
    for (const auto& d : layers[l]) {
      std::snprintf(buf, sizeof buf, "%5zu %4lld  %9.3f %8.3f %9.3f  %9.3f %9.3f  %9.3f\n", l,
                    static_cast<long long>(d.head), d.stable_rank_final, d.utilisation_final, d.stable_rank_mean,
                    d.gram.entropy_rank, d.gram.top_half_mass, d.keys.entropy_rank);
      out += buf;
    }
  return out;
}

// ------------------------------------------------------------------------------ Tucker spectra

TuckerProjection tucker_projection(const std::string& name, const torch::Tensor& x) {
  TuckerProjection p;
  p.name = name;
  for (int n = 0; n < 3; ++n) {
    p.shape[static_cast<std::size_t>(n)] = x.size(n);
    auto s = mode_singular_values(x, n);
    std::vector<double> s2(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) s2[i] = s[i] * s[i];
    p.entropy_rank[static_cast<std::size_t>(n)] = entropy_effective_rank(s2);
    p.singular_values[static_cast<std::size_t>(n)] = std::move(s);
  }
  return p;
}

TuckerAnalysis tucker_analysis(const LinearLM& model) {
  const auto& c = model.config();
  TuckerAnalysis a;
  for (const auto& L : model.weights().layers) {
    RP_CHECK_INPUT(L.q_proj.defined() && L.k_proj.defined() && L.v_proj.defined() && L.o_proj.defined(),
                   "Tucker analysis needs q_proj, k_proj, v_proj and o_proj in every layer");
    a.layers.push_back({tucker_projection("q", attention_tensor(L.q_proj, c.num_heads, false)),
                        tucker_projection("k", attention_tensor(L.k_proj, c.num_heads, false)),
                        tucker_projection("v", attention_tensor(L.v_proj, c.n_v_heads, false)),
                        tucker_projection("o", attention_tensor(L.o_proj, c.n_v_heads, true))});
  }
  return a;
}

TuckerAnalysis tucker_analysis(const Llama2cModel& model) {
  const int64_t H = model.config().n_heads;
  TuckerAnalysis a;
  for (const auto& L : model.weights().layers)
    a.layers.push_back({tucker_projection("q", attention_tensor(L.wq, H, false)),
                        tucker_projection("k", attention_tensor(L.wk, L.n_kv_heads, false)),
                        tucker_projection("v", attention_tensor(L.wv, L.n_kv_heads, false)),
                        tucker_projection("o", attention_tensor(L.wo, H, true))});
  return a;
}

nlohmann::json TuckerAnalysis::to_json() const {
  nlohmann::json layers_j = nlohmann::json::array();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    nlohmann::json ps = nlohmann::json::array();
    for (const auto& p : layers[l])
      ps.push_back({{"name", p.name},
                    {"shape", p.shape},
                    {"singular_values", {p.singular_values[0], p.singular_values[1], p.singular_values[2]}},
                    {"entropy_rank", p.entropy_rank}});
    layers_j.push_back({{"layer", static_cast<int64_t>(l)}, {"projections", std::move(ps)}});
  }
  return {{"layout", layout}, {"layers", std::move(layers_j)}};
}

std::string TuckerAnalysis::table() const {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%5s %4s  %-12s  %9s %9s %9s  %s\n", "layer", "proj", "shape", "erank(h)",
                "erank(d)", "erank(D)", "sigma_1 per mode");
  out += buf;
  for (std::size_t l = 0; l < layers.size(); ++l)
    for (const auto& p : layers[l]) {
      const std::string shape = cat(p.shape[0], "x", p.shape[1], "x", p.shape[2]);
      std::snprintf(buf, sizeof buf, "%5zu %4s  %-12s  %9.3f %9.3f %9.3f  %.3f %.3f %.3f\n", l, p.name.c_str(),
                    shape.c_str(), p.entropy_rank[0], p.entropy_rank[1], p.entropy_rank[2],
                    p.singular_values[0].empty() ? 0.0 : p.singular_values[0][0],
                    p.singular_values[1].empty() ? 0.0 : p.singular_values[1][0],
                    p.singular_values[2].empty() ? 0.0 : p.singular_values[2][0]);
      out += buf;
    }
  return out;
}

}  // namespace rankprune
