#include "model/linear_lm.h"

#include <cmath>
#include <iostream>
#include <set>

#include "common/error.h"
#include "common/fs.h"
#include "kernels/short_conv.h"
#include "kernels/varlen.h"
#include "model/safetensors.h"

namespace rankprune {

namespace {

using torch::indexing::Slice;

std::string layer_prefix(int64_t i) { return cat("model.layers.", i, "."); }

// Norms and activations are evaluated in at least float32, as fla's kernels do.
torch::ScalarType wide(torch::ScalarType t) {
  return (t == torch::kBFloat16 || t == torch::kHalf) ? torch::kFloat32 : t;
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto xf = x.to(wide(x.scalar_type()));
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps) * w.to(xf.scalar_type());
  return y.to(x.scalar_type());
}

torch::Tensor l2_normalize(const torch::Tensor& x) {
  // fla/modules/l2norm.py: x / sqrt(sum x^2 + 1e-6), eps inside the square root.
  auto xf = x.to(wide(x.scalar_type()));
  return (xf * torch::rsqrt(xf.pow(2).sum(-1, /*keepdim=*/true) + 1e-6)).to(x.scalar_type());
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, torch::ScalarType dt) {
  return torch::matmul(x, w.to(dt).t());
}

}  // namespace

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  const int64_t D = c.hidden_size, K = c.conv_size;
  std::vector<TensorSpec> t;
  t.push_back({"model.embeddings.weight", {c.vocab_size, D}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix(i);
    t.push_back({p + "attn_norm.weight", {D}});
    t.push_back({p + "attn.q_proj.weight", {c.key_dim, D}});
    t.push_back({p + "attn.k_proj.weight", {c.key_dim, D}});
    t.push_back({p + "attn.v_proj.weight", {c.value_dim, D}});
    if (c.arch == Arch::GatedDeltaNet) {
      t.push_back({p + "attn.a_proj.weight", {c.n_v_heads, D}});
      t.push_back({p + "attn.b_proj.weight", {c.n_v_heads, D}});
      t.push_back({p + "attn.A_log", {c.n_v_heads}});
      t.push_back({p + "attn.dt_bias", {c.n_v_heads}});
    } else if (c.use_beta) {
      t.push_back({p + "attn.b_proj.weight", {c.num_heads, D}});
    }
    if (c.use_short_conv) {
      t.push_back({p + "attn.q_conv1d.weight", {c.key_dim, 1, K}});
      t.push_back({p + "attn.k_conv1d.weight", {c.key_dim, 1, K}});
      t.push_back({p + "attn.v_conv1d.weight", {c.value_dim, 1, K}});
    }
    if (c.use_gate) t.push_back({p + "attn.g_proj.weight", {c.value_dim, D}});
    t.push_back({p + "attn.o_norm.weight", {c.head_v_dim}});
    t.push_back({p + "attn.o_proj.weight", {D, c.value_dim}});
    t.push_back({p + "mlp_norm.weight", {D}});
    t.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, D}});
    t.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, D}});
    t.push_back({p + "mlp.down_proj.weight", {D, c.intermediate_size}});
  }
  t.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, D}});
  return t;
}

// ---------------------------------------------------------------------------------------------
// State

void LinearLM::to(const torch::Device& device) {
  auto mv = [&device](torch::Tensor& t) {
    if (t.defined() && t.device() != device) t = t.to(device);
  };
  mv(w_.embeddings), mv(w_.norm), mv(w_.lm_head);
  for (auto& l : w_.layers) {
    for (torch::Tensor* t : {&l.attn_norm, &l.mlp_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.q_conv, &l.k_conv,
                             &l.v_conv, &l.b_proj, &l.a_proj, &l.A_log, &l.dt_bias, &l.g_proj, &l.o_norm, &l.o_proj,
                             &l.gate_proj, &l.up_proj, &l.down_proj})
      mv(*t);
  }
}

LmState LmState::clone() const {
  LmState s;
  s.tokens = tokens;
  for (const auto& l : layers) {
    auto c = [](const torch::Tensor& t) { return t.defined() ? t.clone() : t; };
    s.layers.push_back({c(l.conv_q), c(l.conv_k), c(l.conv_v), c(l.s)});
  }
  return s;
}

LmState LmState::expand(int64_t n) const {
  LmState s;
  s.tokens = tokens;
  for (const auto& l : layers) {
    auto e = [n](const torch::Tensor& t) {
      if (!t.defined()) return t;
      auto row = t.narrow(0, 0, 1);
      std::vector<int64_t> reps(static_cast<std::size_t>(t.dim()), 1);
      reps[0] = n;
      return row.repeat(reps);
    };
    s.layers.push_back({e(l.conv_q), e(l.conv_k), e(l.conv_v), e(l.s)});
  }
  return s;
}

LmState LmState::select(const torch::Tensor& rows) const {
  LmState s;
  s.tokens = tokens;
  for (const auto& l : layers) {
    auto e = [&rows](const torch::Tensor& t) { return t.defined() ? t.index_select(0, rows.to(t.device())) : t; };
    s.layers.push_back({e(l.conv_q), e(l.conv_k), e(l.conv_v), e(l.s)});
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Model

LinearLM::LinearLM(ModelConfig cfg, LmWeights w) : cfg_(std::move(cfg)), w_(std::move(w)) {
  RP_ASSERT(static_cast<int64_t>(w_.layers.size()) == cfg_.num_hidden_layers);
}

LinearLM LinearLM::load(const std::string& dir) {
  ModelConfig cfg = ModelConfig::load(dir);
  Checkpoint ck = Checkpoint::open(dir);
  const std::string where = ck.path();
  // Before the config sizes anything (the tensor list below has a row per layer).
  cfg.check_backed_by(is_directory(dir) ? path_join(dir, "config.json") : dir, where, ck.names().size(),
                      ck.total_bytes());
  std::set<std::string> used;
  auto get = [&](const std::string& name, const std::vector<int64_t>& shape) {
    RP_CHECK_INPUT(ck.has(name), where, ": tensor '", name, "' is missing (config.json implies shape [",
                   torch::IntArrayRef(shape), "])");
    const TensorInfo& info = ck.info(name);
    RP_CHECK_INPUT(info.shape == shape, where, ": tensor '", name, "' has shape [", torch::IntArrayRef(info.shape),
                   "] but config.json implies [", torch::IntArrayRef(shape), "]");
    RP_CHECK_INPUT(info.dtype == StDtype::F32 || info.dtype == StDtype::BF16 || info.dtype == StDtype::F16 ||
                       info.dtype == StDtype::F64,
                   where, ": tensor '", name, "' has dtype ", dtype_name(info.dtype),
                   "; expected a floating type (F32, BF16, F16)");
    used.insert(name);
    return ck.tensor(name);
  };
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& s : expected_tensors(cfg)) shapes[s.name] = s.shape;
  auto opt = [&](const std::string& name) { return shapes.count(name) ? get(name, shapes[name]) : torch::Tensor(); };

  LmWeights w;
  w.embeddings = opt("model.embeddings.weight");
  w.norm = opt("model.norm.weight");
  w.lm_head = cfg.tie_word_embeddings ? w.embeddings : opt("lm_head.weight");
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = layer_prefix(i);
    LayerWeights l;
    l.attn_norm = opt(p + "attn_norm.weight");
    l.mlp_norm = opt(p + "mlp_norm.weight");
    l.q_proj = opt(p + "attn.q_proj.weight");
    l.k_proj = opt(p + "attn.k_proj.weight");
    l.v_proj = opt(p + "attn.v_proj.weight");
    l.q_conv = opt(p + "attn.q_conv1d.weight");
    l.k_conv = opt(p + "attn.k_conv1d.weight");
    l.v_conv = opt(p + "attn.v_conv1d.weight");
    l.b_proj = opt(p + "attn.b_proj.weight");
    l.a_proj = opt(p + "attn.a_proj.weight");
    l.A_log = opt(p + "attn.A_log");
    l.dt_bias = opt(p + "attn.dt_bias");
    l.g_proj = opt(p + "attn.g_proj.weight");
    l.o_norm = opt(p + "attn.o_norm.weight");
    l.o_proj = opt(p + "attn.o_proj.weight");
    l.gate_proj = opt(p + "mlp.gate_proj.weight");
    l.up_proj = opt(p + "mlp.up_proj.weight");
    l.down_proj = opt(p + "mlp.down_proj.weight");
    w.layers.push_back(std::move(l));
  }
  for (const auto& name : ck.names()) {
    if (used.count(name)) continue;
    // A tied checkpoint may still carry lm_head.weight (HF drops it; some tools keep it).
    std::cerr << "rankprune: warning: " << where << ": tensor '" << name
              << "' is not used by a " << arch_name(cfg.arch) << " model; it is kept unchanged\n";
    w.extra.emplace_back(name, ck.tensor(name));
  }
  return LinearLM(std::move(cfg), std::move(w));
}

torch::Tensor LinearLM::layer_forward(int64_t li, const torch::Tensor& h, const StateIo& io,
                                      const ForwardOptions& opts, const QkObserver& observer) const {
  LayerState* st = io.st;
  const ModelConfig& c = cfg_;
  const LayerWeights& L = w_.layers[static_cast<std::size_t>(li)];
  const auto dt = opts.dtype;
  const int64_t B = h.size(0), T = h.size(1);
  const int64_t H = c.num_heads, Hv = c.n_v_heads, dk = c.head_k_dim, dv = c.head_v_dim;
  const bool gdn = c.arch == Arch::GatedDeltaNet;

  auto x = rms_norm(h, L.attn_norm, c.norm_eps);  // [B, T, D]
  auto q = linear(x, L.q_proj, dt), k = linear(x, L.k_proj, dt), v = linear(x, L.v_proj, dt);
  // fla: the q/k short convs carry SiLU only when qk_activation is silu (always for GDN); v always.
  const bool qk_silu = gdn || c.qk_activation == "silu";
  if (c.use_short_conv) {
    // Conv caches are small ([B, C, K-1]): rows of `from` are gathered.
    auto cache = [&io, st](torch::Tensor LayerState::*m) {
      if (io.from) return (io.from->*m).defined() ? (io.from->*m).index_select(0, io.rows) : torch::Tensor();
      return st ? st->*m : torch::Tensor();
    };
    auto conv = [&](const torch::Tensor& x_in, const torch::Tensor& w, torch::Tensor LayerState::*m) {
      torch::Tensor* next = st ? &(st->*m) : nullptr;
      const auto c0 = cache(m);
      if (io.lens) return causal_conv1d_varlen(x_in[0], *io.lens, w, {}, c0, next, io.parents).unsqueeze(0);
      return causal_conv1d(x_in, w, {}, c0, next);
    };
    q = conv(q, L.q_conv, &LayerState::conv_q);
    k = conv(k, L.k_conv, &LayerState::conv_k);
    v = conv(v, L.v_conv, &LayerState::conv_v);
  }
  if (qk_silu) q = torch::silu(q), k = torch::silu(k);
  v = torch::silu(v);
  q = q.view({B, T, H, dk});
  k = k.view({B, T, H, dk});
  v = v.view({B, T, Hv, dv});
  if (!gdn && !qk_silu) {
    if (c.qk_activation == "relu") {
      q = torch::relu(q), k = torch::relu(k);
    } else if (c.qk_activation == "elu") {
      q = torch::elu(q) + 1.0, k = torch::elu(k) + 1.0;
    }
  }
  if (observer) observer(li, q, k, x);

  if (!gdn && c.qk_norm == "sum") {
    q = q / q.sum(-1, true), k = k / k.sum(-1, true);
  } else {
    q = l2_normalize(q), k = l2_normalize(k);
  }

  torch::Tensor beta, g;
  if (gdn || c.use_beta) {
    beta = torch::sigmoid(linear(x, L.b_proj, dt).to(wide(dt)));  // [B, T, Hv]
  } else {
    beta = torch::ones({B, T, Hv}, x.options().dtype(wide(dt)));
  }
  if (c.allow_neg_eigval) beta = beta * 2.0;
  if (gdn) {
    auto a = linear(x, L.a_proj, dt).to(wide(dt)) + L.dt_bias.to(wide(dt));
    g = -torch::exp(L.A_log.to(wide(dt))) * torch::softplus(a);  // [B, T, Hv]
  }
  // GVA: value head j reads q/k head j / (Hv / H) (fla: i_h = i_hv // (HV // H)).
  if (Hv != H) {
    q = q.repeat_interleave(Hv / H, /*dim=*/2);
    k = k.repeat_interleave(Hv / H, /*dim=*/2);
  }
  auto to_bhtd = [](const torch::Tensor& t) { return t.permute({0, 2, 1, 3}); };
  auto to_bht = [](const torch::Tensor& t) { return t.permute({0, 2, 1}); };
  const torch::Tensor s0 = io.from ? io.from->s : st ? st->s : torch::Tensor();
  const torch::Tensor s0_rows = io.from ? io.rows : torch::Tensor();
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  const auto gt = g.defined() ? to_bht(g) : g;
  auto r = io.lens ? delta_rule_varlen(to_bhtd(q), to_bhtd(k), to_bhtd(v), to_bht(beta), gt, s0, scale, *io.lens,
                                       opts.impl, opts.chunk_size, s0_rows, /*want_state=*/st != nullptr,
                                       io.parents)
                   : delta_rule(to_bhtd(q), to_bhtd(k), to_bhtd(v), to_bht(beta), gt, s0, scale, opts.impl,
                                opts.chunk_size, s0_rows, /*want_state=*/st != nullptr);
  if (st) st->s = r.s;
  auto o = r.o.permute({0, 2, 1, 3});  // [B, T, Hv, dv]
  o = rms_norm(o, L.o_norm, c.norm_eps);
  if (c.use_gate) {
    auto gate = linear(x, L.g_proj, dt).view({B, T, Hv, dv});
    o = (o.to(wide(dt)) * torch::silu(gate.to(wide(dt)))).to(dt);
  }
  auto attn_out = linear(o.reshape({B, T, Hv * dv}), L.o_proj, dt);
  auto hh = h + attn_out;
  auto y = rms_norm(hh, L.mlp_norm, c.norm_eps);
  auto mlp = linear(torch::silu(linear(y, L.gate_proj, dt)) * linear(y, L.up_proj, dt), L.down_proj, dt);
  return hh + mlp;
}

torch::Tensor LinearLM::hidden(const torch::Tensor& ids, LmState* state, const ForwardOptions& opts,
                               const QkObserver& observer) const {
  RP_CHECK_INPUT(ids.dim() == 2, "token ids must have shape [batch, tokens], got ", ids.sizes());
  return run_layers(ids, state, opts, observer, nullptr, torch::Tensor(), nullptr);
}

torch::Tensor LinearLM::hidden_packed(const torch::Tensor& ids, const std::vector<int64_t>& lens, LmState* out,
                                      const ForwardOptions& opts, const LmState* from, const torch::Tensor& rows,
                                      const std::vector<int64_t>* parents) const {
  RP_CHECK_INPUT(ids.dim() == 1, "packed token ids must have shape [tokens], got ", ids.sizes());
  int64_t total = 0;
  for (const int64_t len : lens) {
    RP_ASSERT(len >= 1, "packed sequences must not be empty");
    total += len;
  }
  RP_ASSERT(total == ids.size(0), "sequence lengths sum to ", total, ", ids has ", ids.size(0), " tokens");
  RP_ASSERT(!out || out->layers.empty(), "hidden_packed: `out` must be an empty state");
  if (from) {
    RP_ASSERT(static_cast<int64_t>(from->layers.size()) == cfg_.num_hidden_layers, "hidden_packed: empty `from`");
    RP_ASSERT(rows.dim() == 1 && rows.size(0) == static_cast<int64_t>(lens.size()) &&
                  rows.scalar_type() == torch::kLong,
              "rows ", rows.sizes(), " for ", lens.size(), " sequences");
  }
  if (parents) check_parents(*parents, lens.size());
  return run_layers(ids.unsqueeze(0), out, opts, nullptr, from, rows, &lens, parents)[0];
}

torch::Tensor LinearLM::run_layers(const torch::Tensor& ids, LmState* state, const ForwardOptions& opts,
                                   const QkObserver& observer, const LmState* from, const torch::Tensor& rows,
                                   const std::vector<int64_t>* lens, const std::vector<int64_t>* parents) const {
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    RP_CHECK_INPUT(lo >= 0 && hi < cfg_.vocab_size, "token id out of range [0, ", cfg_.vocab_size, "): got ",
                   lo < 0 ? lo : hi);
  }
  if (state && state->layers.empty()) state->layers.resize(static_cast<std::size_t>(cfg_.num_hidden_layers));
  RP_ASSERT(!state || static_cast<int64_t>(state->layers.size()) == cfg_.num_hidden_layers);
  const torch::Tensor rows_here = from ? rows.to(ids.device()) : torch::Tensor();
  auto h = torch::embedding(w_.embeddings, ids.to(torch::kLong)).to(opts.dtype);
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    const auto li = static_cast<std::size_t>(i);
    StateIo io;
    if (state) io.st = &state->layers[li];
    if (from) io.from = &from->layers[li], io.rows = rows_here;
    io.lens = lens;
    io.parents = parents;
    h = layer_forward(i, h, io, opts, observer);
  }
  if (state) state->tokens += lens ? 0 : ids.size(1);
  return rms_norm(h, w_.norm, cfg_.norm_eps);
}

torch::Tensor LinearLM::logits_from_hidden(const torch::Tensor& h) const {
  return linear(h, w_.lm_head, h.scalar_type());
}

torch::Tensor LinearLM::forward(const torch::Tensor& ids, LmState* state, const ForwardOptions& opts,
                                const QkObserver& observer) const {
  return logits_from_hidden(hidden(ids, state, opts, observer));
}

std::vector<std::pair<std::string, torch::Tensor>> LinearLM::named_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto add = [&](const std::string& n, const torch::Tensor& t) {
    if (t.defined()) out.emplace_back(n, t);
  };
  add("model.embeddings.weight", w_.embeddings);
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    const auto& l = w_.layers[static_cast<std::size_t>(i)];
    const std::string p = layer_prefix(i);
    add(p + "attn_norm.weight", l.attn_norm);
    add(p + "attn.q_proj.weight", l.q_proj);
    add(p + "attn.k_proj.weight", l.k_proj);
    add(p + "attn.v_proj.weight", l.v_proj);
    add(p + "attn.a_proj.weight", l.a_proj);
    add(p + "attn.b_proj.weight", l.b_proj);
    add(p + "attn.A_log", l.A_log);
    add(p + "attn.dt_bias", l.dt_bias);
    add(p + "attn.q_conv1d.weight", l.q_conv);
    add(p + "attn.k_conv1d.weight", l.k_conv);
    add(p + "attn.v_conv1d.weight", l.v_conv);
    add(p + "attn.g_proj.weight", l.g_proj);
    add(p + "attn.o_norm.weight", l.o_norm);
    add(p + "attn.o_proj.weight", l.o_proj);
    add(p + "mlp_norm.weight", l.mlp_norm);
    add(p + "mlp.gate_proj.weight", l.gate_proj);
    add(p + "mlp.up_proj.weight", l.up_proj);
    add(p + "mlp.down_proj.weight", l.down_proj);
  }
  add("model.norm.weight", w_.norm);
  if (!cfg_.tie_word_embeddings) add("lm_head.weight", w_.lm_head);
  for (const auto& e : w_.extra) out.push_back(e);
  return out;
}

void LinearLM::save(const std::string& dir) const {
  std::vector<std::pair<std::string, torch::Tensor>> ts;
  for (auto& [n, t] : named_tensors()) ts.emplace_back(n, t.detach().cpu());
  save_checkpoint(dir, ts, {{"format", "pt"}});
  cfg_.save(dir);
}

// ---------------------------------------------------------------------------------------------
// Random initialisation (fla's _init_weights)

LmWeights init_random_weights(const ModelConfig& c, uint64_t seed, torch::ScalarType dtype) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const double std = c.initializer_range;
  auto normal = [&](std::vector<int64_t> shape) {
    return at::normal(0.0, std, shape, gen, torch::TensorOptions().dtype(torch::kFloat32)).to(dtype);
  };
  auto ones = [&](int64_t n) { return torch::ones({n}, torch::dtype(dtype)); };
  const int64_t D = c.hidden_size, K = c.conv_size;
  LmWeights w;
  w.embeddings = normal({c.vocab_size, D});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights l;
    l.attn_norm = ones(D);
    l.q_proj = normal({c.key_dim, D});
    l.k_proj = normal({c.key_dim, D});
    l.v_proj = normal({c.value_dim, D});
    if (c.arch == Arch::GatedDeltaNet) {
      l.a_proj = normal({c.n_v_heads, D});
      l.b_proj = normal({c.n_v_heads, D});
      auto A = at::empty({c.n_v_heads}, torch::kFloat32).uniform_(0.0, 16.0, gen);
      l.A_log = A.log().to(dtype);
      const double dt_min = 1e-3, dt_max = 0.1;
      auto u = at::empty({c.n_v_heads}, torch::kFloat32).uniform_(0.0, 1.0, gen);
      auto dtv = (u * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min)).exp().clamp_min(1e-4);
      l.dt_bias = (dtv + torch::log(-torch::expm1(-dtv))).to(dtype);  // softplus^-1(dt)
    } else if (c.use_beta) {
      l.b_proj = normal({c.num_heads, D});
    }
    if (c.use_short_conv) {
      l.q_conv = normal({c.key_dim, 1, K});
      l.k_conv = normal({c.key_dim, 1, K});
      l.v_conv = normal({c.value_dim, 1, K});
    }
    if (c.use_gate) l.g_proj = normal({c.value_dim, D});
    l.o_norm = ones(c.head_v_dim);
    l.o_proj = normal({D, c.value_dim});
    l.mlp_norm = ones(D);
    l.gate_proj = normal({c.intermediate_size, D});
    l.up_proj = normal({c.intermediate_size, D});
    l.down_proj = normal({D, c.intermediate_size});
    w.layers.push_back(std::move(l));
  }
  w.norm = ones(D);
  w.lm_head = c.tie_word_embeddings ? w.embeddings : normal({c.vocab_size, D});
  return w;
}

}  // namespace rankprune
