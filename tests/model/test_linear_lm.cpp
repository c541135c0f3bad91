// DeltaNet / Gated DeltaNet LMs: a token-by-token reference written from method.md §1 with
// plain tensor ops (no rankprune kernels), chunked vs recurrent parity, state continuation and
// reuse, batch independence, and checkpoint round trips.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/fs.h"
#include "model/linear_lm.h"
#include "model/safetensors.h"
#include "tests/testing/testing.h"

namespace rankprune {
namespace {

using torch::indexing::Slice;
constexpr double kTolF64 = 1e-10;

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = (a.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>();
  return d / std::max(1e-30, ref.to(torch::kFloat64).abs().max().item<double>());
}

struct Variant {
  Arch arch;
  bool use_gate = false, neg_eig = false, tie = false;
  int64_t num_v_heads = 0;
  std::string qk_activation = "silu", qk_norm = "l2";
  bool use_beta = true;
  std::string name() const {
    return cat(arch_name(arch), use_gate ? "+gate" : "", neg_eig ? "+negeig" : "", tie ? "+tie" : "",
               num_v_heads ? "+gva" : "", "+", qk_activation, "+", qk_norm, use_beta ? "" : "+nobeta");
  }
};

ModelConfig make_config(const Variant& v) {
  ModelConfig c = ModelConfig::defaults(v.arch);
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_heads = 2;
  c.vocab_size = 50;
  c.use_gate = v.use_gate;
  c.allow_neg_eigval = v.neg_eig;
  c.tie_word_embeddings = v.tie;
  c.intermediate_size = 48;
  c.initializer_range = 0.3;  // large enough that every term matters
  if (v.arch == Arch::DeltaNet) {
    c.expand_k = 0.5;  // dk = 8
    c.expand_v = 0.75;  // dv = 12
    c.qk_activation = v.qk_activation;
    c.qk_norm = v.qk_norm;
    c.use_beta = v.use_beta;
  } else {
    c.head_dim = 8;
    c.expand_v = 1.5;
    c.num_v_heads = v.num_v_heads;
  }
  c.finalize();
  return c;
}

LinearLM make_model(const Variant& v, uint64_t seed, torch::ScalarType dt = torch::kFloat64) {
  auto c = make_config(v);
  auto w = init_random_weights(c, seed, dt);
  // Non-trivial norm weights and A_log so a mix-up of any two would show.
  torch::manual_seed(seed + 1);
  for (auto& l : w.layers) {
    l.attn_norm = l.attn_norm + 0.1 * torch::randn_like(l.attn_norm);
    l.o_norm = l.o_norm + 0.1 * torch::randn_like(l.o_norm);
    if (l.A_log.defined()) l.A_log = torch::rand_like(l.A_log) - 1.5;
  }
  return LinearLM(c, std::move(w));
}

std::vector<Variant> all_variants() {
  return {
      {Arch::DeltaNet},
      {Arch::DeltaNet, true, true, true},
      {Arch::DeltaNet, false, false, false, 0, "relu", "l2"},
      {Arch::DeltaNet, false, false, false, 0, "elu", "sum"},
      {Arch::DeltaNet, false, false, false, 0, "identity", "l2", false},
      {Arch::GatedDeltaNet, true},
      {Arch::GatedDeltaNet, false, true},
      {Arch::GatedDeltaNet, true, false, false, 4},
  };
}

// ---- The reference: one token at a time, every operation spelled out from method.md §1.
torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x / (x.pow(2).mean(-1, true) + eps).sqrt() * w;
}

torch::Tensor reference_logits(const LinearLM& m, const std::vector<int64_t>& ids) {
  const auto& c = m.config();
  const auto& W = m.weights();
  const int64_t T = static_cast<int64_t>(ids.size()), H = c.num_heads, Hv = c.n_v_heads, dk = c.head_k_dim,
                dv = c.head_v_dim, K = c.conv_size;
  const bool gdn = c.arch == Arch::GatedDeltaNet;
  auto f = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  std::vector<torch::Tensor> h;
  for (auto id : ids) h.push_back(f(W.embeddings[id]));
  for (const auto& L : W.layers) {
    std::vector<torch::Tensor> xs, qs, ks, vs;
    for (int64_t t = 0; t < T; ++t) {
      auto x = rms(h[t], f(L.attn_norm), c.norm_eps);
      xs.push_back(x);
      qs.push_back(torch::mv(f(L.q_proj), x));
      ks.push_back(torch::mv(f(L.k_proj), x));
      vs.push_back(torch::mv(f(L.v_proj), x));
    }
    std::vector<torch::Tensor> S(static_cast<std::size_t>(Hv));
    for (auto& s : S) s = torch::zeros({dk, dv}, torch::kFloat64);
    for (int64_t t = 0; t < T; ++t) {
      // Short conv: y_t = sum_j w[:, j] * x_{t-(K-1)+j}.
      auto conv = [&](const std::vector<torch::Tensor>& seq, const torch::Tensor& w) {
        auto y = torch::zeros_like(seq[t]);
        for (int64_t j = 0; j < K; ++j) {
          int64_t s = t - (K - 1) + j;
          if (s >= 0) y = y + f(w).index({Slice(), 0, j}) * seq[s];
        }
        return y;
      };
      auto q = c.use_short_conv ? conv(qs, L.q_conv) : qs[t];
      auto k = c.use_short_conv ? conv(ks, L.k_conv) : ks[t];
      auto v = c.use_short_conv ? conv(vs, L.v_conv) : vs[t];
      v = v * torch::sigmoid(v);
      if (gdn || c.qk_activation == "silu") {
        q = q * torch::sigmoid(q), k = k * torch::sigmoid(k);
      } else if (c.qk_activation == "relu") {
        q = q.clamp_min(0), k = k.clamp_min(0);
      } else if (c.qk_activation == "elu") {
        q = torch::where(q > 0, q + 1, q.exp()), k = torch::where(k > 0, k + 1, k.exp());
      }
      const auto& x = xs[t];
      torch::Tensor beta = (gdn || c.use_beta) ? torch::sigmoid(torch::mv(f(L.b_proj), x))
                                               : torch::ones({Hv}, torch::kFloat64);
      if (c.allow_neg_eigval) beta = beta * 2;
      std::vector<torch::Tensor> outs;
      for (int64_t hv = 0; hv < Hv; ++hv) {
        const int64_t hq = hv / (Hv / H);
        auto qh = q.narrow(0, hq * dk, dk), kh = k.narrow(0, hq * dk, dk), vh = v.narrow(0, hv * dv, dv);
        if (!gdn && c.qk_norm == "sum") {
          qh = qh / qh.sum(), kh = kh / kh.sum();
        } else {
          qh = qh / (qh.dot(qh) + 1e-6).sqrt(), kh = kh / (kh.dot(kh) + 1e-6).sqrt();
        }
        auto& s = S[static_cast<std::size_t>(hv)];
        if (gdn) {
          double a = torch::dot(f(L.a_proj)[hv], x).item<double>() + f(L.dt_bias)[hv].item<double>();
          double g = -std::exp(f(L.A_log)[hv].item<double>()) * std::log1p(std::exp(a));
          s = s * std::exp(g);
        }
        auto u = beta[hv] * (vh - torch::mv(s.t(), kh));
        s = s + torch::outer(kh, u);
        auto o = torch::mv(s.t(), qh / std::sqrt(static_cast<double>(dk)));
        o = rms(o, f(L.o_norm), c.norm_eps);
        if (c.use_gate) {
          auto gt = torch::mv(f(L.g_proj), x).narrow(0, hv * dv, dv);
          o = o * gt * torch::sigmoid(gt);
        }
        outs.push_back(o);
      }
      auto hh = h[t] + torch::mv(f(L.o_proj), torch::cat(outs));
      auto y = rms(hh, f(L.mlp_norm), c.norm_eps);
      auto gate = torch::mv(f(L.gate_proj), y);
      h[t] = hh + torch::mv(f(L.down_proj), gate * torch::sigmoid(gate) * torch::mv(f(L.up_proj), y));
    }
  }
  std::vector<torch::Tensor> logits;
  for (int64_t t = 0; t < T; ++t) logits.push_back(torch::mv(f(W.lm_head), rms(h[t], f(W.norm), c.norm_eps)));
  return torch::stack(logits);
}

std::vector<int64_t> random_ids(int64_t T, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  auto t = torch::randint(vocab, {T}, torch::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + T);
}

torch::Tensor as_batch(const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kLong).unsqueeze(0); }

TEST(LinearLM, MatchesTokenByTokenReference) {
  for (const auto& v : all_variants()) {
    SCOPED_TRACE(v.name());
    auto m = make_model(v, 11);
    auto ids = random_ids(20, m.config().vocab_size, 3);
    auto ref = reference_logits(m, ids);
    ForwardOptions o;
    o.dtype = torch::kFloat64;
    auto got = m.forward(as_batch(ids), nullptr, o).squeeze(0);
    EXPECT_LT(rel_err(got, ref), kTolF64);
  }
}

TEST(LinearLM, ChunkedEqualsRecurrentAtManyLengths) {
  for (const auto& v : all_variants()) {
    auto m = make_model(v, 21);
    for (int64_t T : {1, 5, 63, 64, 65, 150}) {
      SCOPED_TRACE(cat(v.name(), " T=", T));
      auto ids = as_batch(random_ids(T, m.config().vocab_size, static_cast<uint64_t>(T)));
      ForwardOptions rec{torch::kFloat64, DeltaRuleImpl::Recurrent, 64};
      ForwardOptions ch{torch::kFloat64, DeltaRuleImpl::Chunked, 16};
      EXPECT_LT(rel_err(m.forward(ids, nullptr, ch), m.forward(ids, nullptr, rec)), kTolF64);
    }
  }
}

TEST(LinearLM, StateContinuationEqualsFullSequence) {
  for (const auto& v : all_variants()) {
    SCOPED_TRACE(v.name());
    auto m = make_model(v, 31);
    auto ids = random_ids(90, m.config().vocab_size, 4);
    ForwardOptions o{torch::kFloat64, DeltaRuleImpl::Auto, 16};
    auto full = m.forward(as_batch(ids), nullptr, o);
    LmState st;
    auto a = m.forward(as_batch({ids.begin(), ids.begin() + 70}), &st, o);
    std::vector<torch::Tensor> parts = {a};
    for (std::size_t t = 70; t < ids.size(); ++t) parts.push_back(m.forward(as_batch({ids[t]}), &st, o));
    EXPECT_EQ(st.tokens, 90);
    EXPECT_LT(rel_err(torch::cat(parts, 1), full), kTolF64);
  }
}

TEST(LinearLM, ExpandedStateScoresEachContinuationLikeAFullRun) {
  auto m = make_model({Arch::GatedDeltaNet, true}, 41);
  ForwardOptions o{torch::kFloat64, DeltaRuleImpl::Auto, 64};
  auto ctx = random_ids(30, m.config().vocab_size, 5);
  LmState st;
  m.forward(as_batch(ctx), &st, o);
  auto conts = torch::randint(m.config().vocab_size, {3, 6}, torch::kLong);
  LmState many = st.expand(3);
  auto got = m.forward(conts, &many, o);
  for (int64_t i = 0; i < 3; ++i) {
    auto full = ctx;
    for (int64_t j = 0; j < 6; ++j) full.push_back(conts[i][j].item<int64_t>());
    auto ref = m.forward(as_batch(full), nullptr, o).index({0, Slice(30, 36)});
    EXPECT_LT(rel_err(got[i], ref), kTolF64) << "choice " << i;
  }
  // clone() is deep: advancing the clone leaves the original alone.
  LmState c = st.clone();
  m.forward(as_batch({1, 2, 3}), &c, o);
  EXPECT_EQ(st.tokens, 30);
  EXPECT_FALSE(torch::equal(c.layers[0].s, st.layers[0].s));
}

TEST(LinearLM, BatchRowsAreIndependent) {
  auto m = make_model({Arch::DeltaNet}, 51);
  ForwardOptions o{torch::kFloat64, DeltaRuleImpl::Chunked, 16};
  auto a = random_ids(40, m.config().vocab_size, 6), b = random_ids(40, m.config().vocab_size, 7);
  auto both = m.forward(torch::stack({torch::tensor(a), torch::tensor(b)}), nullptr, o);
  EXPECT_LT(rel_err(both[0], m.forward(as_batch(a), nullptr, o)[0]), kTolF64);
  EXPECT_LT(rel_err(both[1], m.forward(as_batch(b), nullptr, o)[0]), kTolF64);
}

// Packing is invisible: every packed sequence's hidden states and final state equal its own run
// alone, for every architecture variant and both scans (incl. sequences shorter than the conv).
TEST(LinearLM, PackedSequencesEqualEachAlone) {
  for (const auto& v : all_variants()) {
    auto m = make_model(v, 81);
    for (auto impl : {DeltaRuleImpl::Recurrent, DeltaRuleImpl::Chunked, DeltaRuleImpl::Auto}) {
      SCOPED_TRACE(cat(v.name(), " impl ", static_cast<int>(impl)));
      ForwardOptions o{torch::kFloat64, impl, 16};
      const std::vector<int64_t> lens = {37, 5, 1, 20, 2};
      std::vector<std::vector<int64_t>> seqs;
      std::vector<int64_t> flat;
      for (std::size_t b = 0; b < lens.size(); ++b) {
        seqs.push_back(random_ids(lens[b], m.config().vocab_size, 100 + b));
        flat.insert(flat.end(), seqs.back().begin(), seqs.back().end());
      }
      LmState st;
      auto h = m.hidden_packed(torch::tensor(flat), lens, &st, o);
      ASSERT_EQ(h.size(0), static_cast<int64_t>(flat.size()));
      int64_t at = 0;
      for (std::size_t b = 0; b < lens.size(); ++b) {
        LmState alone;
        auto ref = m.hidden(as_batch(seqs[b]), &alone, o)[0];
        EXPECT_LT(rel_err(h.narrow(0, at, lens[b]), ref), kTolF64) << "sequence " << b;
        // Continuing from the packed run's state equals continuing from the sequence's own state.
        auto next = as_batch({7, 8, 9});
        LmState mine = st.select(torch::tensor({static_cast<int64_t>(b)}));
        EXPECT_LT(rel_err(m.hidden(next, &mine, o), m.hidden(next, &alone, o)), kTolF64) << "sequence " << b;
        at += lens[b];
      }
    }
  }
}

// Packed continuations from rows of a shared state (read in place, repeats allowed) equal full
// runs of context + continuation, and leave the shared state untouched.
TEST(LinearLM, PackedContinuationsFromASharedStateEqualFullRuns) {
  for (const auto& v : all_variants()) {
    auto m = make_model(v, 43);
    for (auto impl : {DeltaRuleImpl::Recurrent, DeltaRuleImpl::Chunked}) {
      SCOPED_TRACE(cat(v.name(), impl == DeltaRuleImpl::Chunked ? " chunked" : " recurrent"));
      ForwardOptions o{torch::kFloat64, impl, 4};
      const int64_t Tc = 9;
      std::vector<std::vector<int64_t>> ctx;
      for (int64_t g = 0; g < 3; ++g) ctx.push_back(random_ids(Tc, m.config().vocab_size, 200 + g));
      LmState st;
      m.hidden(torch::stack({torch::tensor(ctx[0]), torch::tensor(ctx[1]), torch::tensor(ctx[2])}), &st, o);
      const LmState before = st.clone();
      const std::vector<int64_t> rows = {2, 0, 1, 0, 2};
      const std::vector<int64_t> lens = {6, 1, 3, 7, 2};
      std::vector<int64_t> flat;
      for (std::size_t i = 0; i < lens.size(); ++i) {
        auto c = random_ids(lens[i], m.config().vocab_size, 300 + i);
        flat.insert(flat.end(), c.begin(), c.end());
      }
      auto got = m.hidden_packed(torch::tensor(flat), lens, nullptr, o, &st, torch::tensor(rows));
      int64_t at = 0;
      for (std::size_t i = 0; i < lens.size(); ++i) {
        auto full = ctx[static_cast<std::size_t>(rows[i])];
        full.insert(full.end(), flat.begin() + at, flat.begin() + at + lens[i]);
        auto ref = m.hidden(as_batch(full), nullptr, o).index({0, Slice(Tc, Tc + lens[i])});
        EXPECT_LT(rel_err(got.narrow(0, at, lens[i]), ref), kTolF64) << "row " << i;
        at += lens[i];
      }
      for (std::size_t l = 0; l < st.layers.size(); ++l) {
        EXPECT_TRUE(torch::equal(st.layers[l].s, before.layers[l].s)) << "layer " << l;
        if (st.layers[l].conv_k.defined()) {
          EXPECT_TRUE(torch::equal(st.layers[l].conv_k, before.layers[l].conv_k));
        }
      }
    }
  }
}

// Contexts and their continuations in one packed forward (parents): each continuation's hidden
// states equal the context + continuation run as one sequence; contexts are unaffected; the final
// states equal those of the full runs. Every architecture variant, recurrent and chunked.
TEST(LinearLM, PackedChildrenContinueTheirParents) {
  for (const auto& v : all_variants()) {
    auto m = make_model(v, 44);
    for (auto impl : {DeltaRuleImpl::Recurrent, DeltaRuleImpl::Chunked}) {
      SCOPED_TRACE(cat(v.name(), impl == DeltaRuleImpl::Chunked ? " chunked" : " recurrent"));
      ForwardOptions o{torch::kFloat64, impl, 4};
      const std::vector<int64_t> lens = {9, 2, 6, 1, 3, 7};
      const std::vector<int64_t> parents = {-1, -1, 0, 1, 0, 1};
      std::vector<std::vector<int64_t>> seqs;
      std::vector<int64_t> flat, starts;
      for (std::size_t i = 0; i < lens.size(); ++i) {
        seqs.push_back(random_ids(lens[i], m.config().vocab_size, 400 + i));
        starts.push_back(static_cast<int64_t>(flat.size()));
        flat.insert(flat.end(), seqs.back().begin(), seqs.back().end());
      }
      LmState st;
      auto got = m.hidden_packed(torch::tensor(flat), lens, &st, o, nullptr, {}, &parents);
      for (std::size_t i = 0; i < lens.size(); ++i) {
        const int64_t p = parents[i];
        std::vector<int64_t> full = p < 0 ? std::vector<int64_t>{} : seqs[static_cast<std::size_t>(p)];
        const auto skip = static_cast<int64_t>(full.size());
        full.insert(full.end(), seqs[i].begin(), seqs[i].end());
        LmState ref_st;
        auto ref = m.hidden(as_batch(full), &ref_st, o).index({0, Slice(skip, skip + lens[i])});
        EXPECT_LT(rel_err(got.narrow(0, starts[i], lens[i]), ref), kTolF64) << "sequence " << i;
        for (std::size_t l = 0; l < st.layers.size(); ++l)
          EXPECT_LT(rel_err(st.layers[l].s.narrow(0, static_cast<int64_t>(i), 1), ref_st.layers[l].s), kTolF64)
              << "sequence " << i << " layer " << l;
      }
    }
  }
}

TEST(LinearLM, ObserverSeesQkBeforeNorm) {
  auto m = make_model({Arch::DeltaNet}, 61);
  int calls = 0;
  m.forward(as_batch(random_ids(9, 50, 8)), nullptr, {torch::kFloat64},
            [&](int64_t layer, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& x) {
              EXPECT_EQ(layer, calls);
              EXPECT_EQ(q.sizes(), (std::vector<int64_t>{1, 9, 2, 8}));
              EXPECT_EQ(k.sizes(), q.sizes());
              EXPECT_EQ(x.sizes(), (std::vector<int64_t>{1, 9, 32}));
              // After SiLU, before the L2 norm: not unit length.
              EXPECT_GT((q.pow(2).sum(-1) - 1).abs().max().item<double>(), 1e-3);
              ++calls;
            });
  EXPECT_EQ(calls, 2);
}

TEST(LinearLM, SaveLoadRoundTripKeepsDtypeAndLogits) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    testing::TempDir tmp;
    auto c = make_config({Arch::GatedDeltaNet, true});
    LinearLM m(c, init_random_weights(c, 5, dt));
    m.save(tmp.path());
    auto back = LinearLM::load(tmp.path());
    EXPECT_EQ(back.weights().layers[1].q_proj.scalar_type(), dt);
    auto ids = as_batch(random_ids(12, 50, 9));
    EXPECT_TRUE(torch::equal(back.forward(ids), m.forward(ids)));
    auto a = m.named_tensors(), b = back.named_tensors();
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    }
  }
}

TEST(LinearLM, InitIsDeterministicInSeed) {
  auto c = make_config({Arch::DeltaNet});
  auto a = init_random_weights(c, 1, torch::kFloat32), b = init_random_weights(c, 1, torch::kFloat32),
       d = init_random_weights(c, 2, torch::kFloat32);
  EXPECT_TRUE(torch::equal(a.layers[1].k_proj, b.layers[1].k_proj));
  EXPECT_FALSE(torch::equal(a.layers[1].k_proj, d.layers[1].k_proj));
}

TEST(LinearLM, LoadRejectsShapeThatContradictsConfig) {
  testing::TempDir tmp;
  auto c = make_config({Arch::DeltaNet});
  LinearLM(c, init_random_weights(c, 5, torch::kFloat32)).save(tmp.path());
  auto j = c.to_json();
  j["expand_v"] = 0.5;  // dv 12 -> 8 per head: v_proj no longer matches
  write_file_atomic(path_join(tmp.path(), "config.json"), j.dump());
  try {
    LinearLM::load(tmp.path());
    FAIL() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("v_proj"), std::string::npos) << e.what();
  }
}

TEST(LinearLM, RejectsOutOfRangeIds) {
  auto m = make_model({Arch::DeltaNet}, 1);
  EXPECT_THROW(m.forward(as_batch({1, 50})), InputError);
  EXPECT_THROW(m.forward(as_batch({-1})), InputError);
}

}  // namespace
}  // namespace rankprune
