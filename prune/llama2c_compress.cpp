// Attention compression of llama2.c models: Tucker (HOSVD), per-matrix SVD, KV head merging.
#include "prune/llama2c_compress.h"

#include <algorithm>
#include <limits>

#include "common/error.h"

namespace rankprune {

namespace {

int64_t heads_of(const Llama2cLayer& l, int64_t n_heads, int p) { return p == 1 || p == 2 ? l.n_kv_heads : n_heads; }

const torch::Tensor& matrix_of(const Llama2cLayer& l, int p) {
  return p == 0 ? l.wq : p == 1 ? l.wk : p == 2 ? l.wv : l.wo;
}
torch::Tensor& matrix_of(Llama2cLayer& l, int p) { return p == 0 ? l.wq : p == 1 ? l.wk : p == 2 ? l.wv : l.wo; }

Llama2cModel copy_model(const Llama2cModel& m) { return Llama2cModel(m.config(), m.weights()); }

void check_layers(const Llama2cModel& m, std::size_t n, const char* what) {
  RP_CHECK_INPUT(n == m.weights().layers.size(), what, ": ", n, " layer entries for a model of ",
                 m.weights().layers.size(), " layers");
}

}  // namespace

torch::Tensor llama2c_attention_tensor(const Llama2cLayer& layer, int64_t n_heads, int p) {
  return attention_tensor(matrix_of(layer, p).to(torch::kFloat64), heads_of(layer, n_heads, p), p == 3);
}

Llama2cModel compress_tucker(const Llama2cModel& m, const std::vector<std::array<Ranks3, 4>>& ranks) {
  check_layers(m, ranks.size(), "Tucker ranks");
  Llama2cModel out = copy_model(m);
  const int64_t H = m.config().n_heads;
  for (std::size_t l = 0; l < ranks.size(); ++l) {
    auto& L = out.mutable_weights().layers[l];
    int64_t params = 0;
    for (int p = 0; p < 4; ++p) {
      const auto x = llama2c_attention_tensor(L, H, p);
      const Tucker t = hosvd(x, ranks[l][static_cast<std::size_t>(p)]);
      matrix_of(L, p) = attention_matrix(tucker_reconstruct(t), p == 3).to(torch::kFloat32);
      params += tucker_parameters(t.dims, t.ranks);
    }
    L.attn_params = params;
  }
  return out;
}

Llama2cModel compress_svd(const Llama2cModel& m, const std::vector<std::array<int64_t, 4>>& ranks) {
  check_layers(m, ranks.size(), "SVD ranks");
  Llama2cModel out = copy_model(m);
  for (std::size_t l = 0; l < ranks.size(); ++l) {
    auto& L = out.mutable_weights().layers[l];
    int64_t params = 0;
    for (int p = 0; p < 4; ++p) {
      const auto w = matrix_of(L, p).to(torch::kFloat64);
      const int64_t r = ranks[l][static_cast<std::size_t>(p)], cap = std::min(w.size(0), w.size(1));
      RP_CHECK_INPUT(r >= 1 && r <= cap, "SVD rank of ", kAttnProjections[static_cast<std::size_t>(p)],
                     " in layer ", l, " must be in [1, ", cap, "], got ", r);
      auto [u, s, vh] = torch::linalg_svd(w, false);
      matrix_of(L, p) =
          torch::matmul(u.narrow(1, 0, r) * s.narrow(0, 0, r).unsqueeze(0), vh.narrow(0, 0, r)).to(torch::kFloat32);
      params += r * (w.size(0) + w.size(1));
    }
    L.attn_params = params;
  }
  return out;
}

Llama2cModel merge_kv_heads(const Llama2cModel& m, int64_t groups) {
  Llama2cModel out = copy_model(m);
  const int64_t hs = m.config().head_size();
  for (auto& L : out.mutable_weights().layers) {
    const int64_t KV = L.n_kv_heads;
    RP_CHECK_INPUT(groups >= 1 && KV % groups == 0, "head merging: ", groups, " groups do not divide the ", KV,
                   " KV heads");
    for (auto* w : {&L.wk, &L.wv}) {
      const int64_t D = w->size(1);
      *w = w->view({groups, KV / groups, hs, D}).mean(1).reshape({groups * hs, D}).contiguous();
    }
    L.n_kv_heads = groups;
    L.attn_params = dense_attention_parameters(m.config(), groups);
  }
  return out;
}

AttnCompressionPlan plan_tucker(const Llama2cModel& m, double fraction) {
  RP_CHECK_INPUT(fraction > 0 && fraction <= 1, "budget fraction must be in (0, 1], got ", fraction);
  AttnCompressionPlan plan;
  plan.method = "tucker";
  const int64_t H = m.config().n_heads;
  for (const auto& L : m.weights().layers) {
    std::array<Ranks3, 4> rl{};
    for (int p = 0; p < 4; ++p) {
      const auto x = llama2c_attention_tensor(L, H, p);
      const auto budget = static_cast<int64_t>(fraction * static_cast<double>(x.numel()));
      const Tucker full = hosvd(x, max_mode_ranks(x));
      const auto err = tucker_error_table(full).contiguous();
      const auto R = full.ranks;
      const double* e = err.data_ptr<double>();
      double best = std::numeric_limits<double>::infinity();
      Ranks3 pick{1, 1, 1};
      for (int64_t a = 1; a <= R[0]; ++a)
        for (int64_t b = 1; b <= R[1]; ++b)
          for (int64_t c = 1; c <= R[2]; ++c) {
            if (tucker_parameters(full.dims, {a, b, c}) > budget) continue;
            const double v = e[((a - 1) * R[1] + (b - 1)) * R[2] + (c - 1)];
            if (v < best) best = v, pick = {a, b, c};
          }
      rl[static_cast<std::size_t>(p)] = pick;
    }
    plan.tucker_ranks.push_back(rl);
  }
  return plan;
}

AttnCompressionPlan plan_svd(const Llama2cModel& m, double fraction) {
  RP_CHECK_INPUT(fraction > 0 && fraction <= 1, "budget fraction must be in (0, 1], got ", fraction);
  AttnCompressionPlan plan;
  plan.method = "svd";
  for (const auto& L : m.weights().layers) {
    std::array<int64_t, 4> rl{};
    for (int p = 0; p < 4; ++p) {
      const auto& w = matrix_of(L, p);
      const auto budget = static_cast<int64_t>(fraction * static_cast<double>(w.numel()));
      const int64_t cap = std::min(w.size(0), w.size(1));
      rl[static_cast<std::size_t>(p)] = std::clamp<int64_t>(budget / (w.size(0) + w.size(1)), 1, cap);
    }
    plan.svd_ranks.push_back(rl);
  }
  return plan;
}

Llama2cModel apply_plan(const Llama2cModel& m, const AttnCompressionPlan& plan) {
  if (plan.method == "tucker") return compress_tucker(m, plan.tucker_ranks);
  if (plan.method == "svd") return compress_svd(m, plan.svd_ranks);
  if (plan.method == "merge") return merge_kv_heads(m, plan.groups);
  if (plan.method == "dense") return copy_model(m);
  throw InputError(cat("unknown attention compression '", plan.method, "' (tucker, svd, merge, dense)"));
}

std::string AttnCompressionPlan::describe() const {
  if (method == "merge") return cat("KV groups ", groups);
  if (method == "dense") return "full";
  auto layer = [&](std::size_t l) {
    std::string s;
    for (std::size_t p = 0; p < 4; ++p) {
      if (!s.empty()) s += " ";
      if (method == "tucker") {
        const auto& r = tucker_ranks[l][p];
        s += cat(kAttnProjections[p], " ", r[0], "x", r[1], "x", r[2]);
      } else {
        s += cat(kAttnProjections[p], " ", svd_ranks[l][p]);
      }
    }
    return s;
  };
  const std::size_t n = method == "tucker" ? tucker_ranks.size() : svd_ranks.size();
  if (n == 0) return "";
  std::string first = layer(0), all;
  bool same = true;
  for (std::size_t l = 0; l < n; ++l) {
    const auto s = layer(l);
    same = same && s == first;
    all += cat(l ? "; " : "", "L", l, ": ", s);
  }
  return same ? first : all;
}

}  // namespace rankprune
