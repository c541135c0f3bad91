// Rank diagnostics: stable rank, utilisation and entropy effective rank against hand-computed
// values; the sampled state against full forwards over each prefix; rank-deficient keys; and
// `rankprune analyze` end to end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "tests/cli/cli_fixture.h"
#include "tests/testing/testing.h"
#include "worker/analyze.h"
#include "worker/calibration.h"

namespace rankprune {
namespace {

ModelConfig small_config(Arch arch) {
  ModelConfig c = ModelConfig::defaults(arch);
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_heads = 2, c.vocab_size = 64, c.intermediate_size = 64;
  c.initializer_range = 0.3;
  if (arch == Arch::DeltaNet) {
    c.expand_k = 0.5, c.expand_v = 0.5;  // dk = dv = 8
  } else {
    c.head_dim = 8, c.expand_v = 2.0, c.num_v_heads = 4;  // dk 8, dv 16, GVA: 4 value heads on 2 key heads
  }
  c.finalize();
  return c;
}

// Reference stable rank without SVD: ||S||_F^2 / lambda_max(S^T S).
double reference_stable_rank(const torch::Tensor& m) {
  auto d = m.to(torch::kFloat64);
  const double fro2 = (d * d).sum().item<double>();
  const double lmax = torch::linalg_eigvalsh(d.t().mm(d)).max().item<double>();
  return lmax > 0 ? fro2 / lmax : 0.0;
}

// ------------------------------------------------------------------------------ rank measures

TEST(StableRank, HandConstructedMatrices) {
  torch::manual_seed(1);
  auto u = torch::randn({6, 1}, torch::kFloat64), v = torch::randn({1, 4}, torch::kFloat64);
  EXPECT_NEAR(stable_rank(u.mm(v)), 1.0, 1e-12);                              // rank 1
  EXPECT_NEAR(stable_rank(torch::eye(5, torch::kFloat64)), 5.0, 1e-12);       // identity n x n -> n
  EXPECT_NEAR(stable_rank(torch::diag(torch::tensor({3.0, 2.0, 1.0}, torch::kFloat64))), 14.0 / 9.0, 1e-12);  // (9+4+1)/9
  // Non-square, scaled, float32: diag(2, 2, 1) padded to 3 x 5 -> (4 + 4 + 1) / 4.
  auto m = torch::zeros({3, 5}, torch::kFloat32);
  m[0][0] = 2, m[1][1] = 2, m[2][2] = 1;
  EXPECT_NEAR(stable_rank(m * 7.0), 9.0 / 4.0, 1e-6);
  EXPECT_EQ(stable_rank(torch::zeros({4, 4})), 0.0);
  // Invariant under rotations: Q diag(3, 2, 1) has stable rank 14/9 too.
  auto q = std::get<0>(torch::linalg_qr(torch::randn({3, 3}, torch::kFloat64)));
  EXPECT_NEAR(stable_rank(q.mm(torch::diag(torch::tensor({3.0, 2.0, 1.0}, torch::kFloat64)))), 14.0 / 9.0, 1e-12);
}

TEST(StableRank, BatchedAgreesWithEigenvalueReference) {
  torch::manual_seed(2);
  auto b = torch::randn({3, 2, 8, 16}, torch::kFloat64);
  auto sr = stable_ranks(b);
  ASSERT_EQ(sr.sizes(), (std::vector<int64_t>{3, 2}));
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 2; ++j) {
      const double r = reference_stable_rank(b[i][j]);
      EXPECT_NEAR(sr[i][j].item<double>(), r, 1e-10);
      EXPECT_GE(r, 1.0);
      EXPECT_LE(r, 8.0);
    }
}

TEST(StableRank, UtilisationIsStableRankOverMinDimension) {
  EXPECT_DOUBLE_EQ(rank_utilisation(3.0, 8, 16), 3.0 / 8.0);
  EXPECT_DOUBLE_EQ(rank_utilisation(3.0, 16, 8), 3.0 / 8.0);
  EXPECT_DOUBLE_EQ(rank_utilisation(stable_rank(torch::eye(4)), 4, 4), 1.0);
  EXPECT_THROW(rank_utilisation(1.0, 0, 4), InputError);
}

TEST(EntropyRank, HandComputedSpectra) {
  EXPECT_NEAR(entropy_effective_rank({2.0, 2.0, 2.0, 2.0, 2.0}), 5.0, 1e-12);  // flat -> n
  EXPECT_NEAR(entropy_effective_rank({0.0, 7.0, 0.0}), 1.0, 1e-12);            // one direction -> 1
  // p = (1/4, 1/4, 1/2): H = 1.5 ln 2 -> 2^1.5.
  EXPECT_NEAR(entropy_effective_rank({1.0, 1.0, 2.0}), std::pow(2.0, 1.5), 1e-12);
  EXPECT_EQ(entropy_effective_rank({0.0, 0.0}), 0.0);
  EXPECT_THROW(entropy_effective_rank({1.0, -0.5}), InputError);

  EXPECT_NEAR(top_half_mass({1.0, 2.0, 3.0, 4.0}), 7.0 / 10.0, 1e-15);       // order does not matter
  EXPECT_NEAR(top_half_mass({5.0, 4.0, 3.0, 2.0, 1.0}), 9.0 / 15.0, 1e-15);  // odd n: floor(n/2) = 2 kept
  EXPECT_NEAR(top_half_mass({3.0, 3.0, 0.0, 0.0}), 1.0, 1e-15);
  EXPECT_NEAR(top_half_mass({2.0}), 1.0, 1e-15);
  EXPECT_EQ(top_half_mass({0.0, 0.0}), 0.0);
}

TEST(EntropyRank, GramSpectrumIsDescendingEigenvalues) {
  auto g = torch::tensor({2.0, 1.0, 1.0, 2.0}, torch::kFloat64).view({2, 2});  // eigenvalues 3 and 1
  auto s = gram_spectrum(g);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_NEAR(s[0], 3.0, 1e-12);
  EXPECT_NEAR(s[1], 1.0, 1e-12);
  const auto r = spectrum_rank(g);
  EXPECT_NEAR(r.entropy_rank, std::exp(-(0.75 * std::log(0.75) + 0.25 * std::log(0.25))), 1e-12);
  EXPECT_NEAR(r.top_half_mass, 0.75, 1e-12);
  // A rotated known spectrum.
  torch::manual_seed(3);
  auto q = std::get<0>(torch::linalg_qr(torch::randn({6, 6}, torch::kFloat64)));
  std::vector<double> lam{0.5, 4.0, 0.0, 2.0, 1.0, 3.0};
  auto gq = q.mm(torch::diag(torch::tensor(lam, torch::kFloat64))).mm(q.t());
  auto sq = gram_spectrum(gq);
  std::vector<double> want{4.0, 3.0, 2.0, 1.0, 0.5, 0.0};
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(sq[i], want[i], 1e-12) << i;
  for (double x : sq) EXPECT_GE(x, 0.0);
  EXPECT_NEAR(top_half_mass(sq), 9.0 / 10.5, 1e-12);
}

// ------------------------------------------------------------------------------ state over time

void check_sampled_states(Arch arch) {
  const ModelConfig c = small_config(arch);
  LinearLM model(c, init_random_weights(c, 11, torch::kFloat32));
  torch::manual_seed(4);
  auto ids = torch::randint(0, c.vocab_size, {70}, torch::kLong);
  ForwardOptions fo;
  fo.dtype = torch::kFloat64;
  std::vector<int64_t> seen;
  std::vector<torch::Tensor> ref_sr;  // [L, Hv] per sample
  for_each_state(model, ids, 16, fo, [&](int64_t t, const LmState& st) {
    seen.push_back(t);
    ASSERT_EQ(st.tokens, t);
    LmState full;  // one forward over the first t tokens (chunked above 64 tokens, recurrent below)
    model.hidden(ids.narrow(0, 0, t).unsqueeze(0), &full, fo);
    ASSERT_EQ(st.layers.size(), full.layers.size());
    auto sr = torch::zeros({c.num_hidden_layers, c.n_v_heads}, torch::kFloat64);
    for (std::size_t l = 0; l < st.layers.size(); ++l) {
      const auto& s = st.layers[l].s;
      ASSERT_EQ(s.sizes(), (std::vector<int64_t>{1, c.n_v_heads, c.head_k_dim, c.head_v_dim}));
      EXPECT_TRUE(torch::allclose(s.to(torch::kFloat64), full.layers[l].s.to(torch::kFloat64), 1e-9, 1e-11))
          << "t=" << t << " layer " << l;
      for (int64_t h = 0; h < c.n_v_heads; ++h)
        sr[static_cast<int64_t>(l)][h] = reference_stable_rank(full.layers[l].s[0][h]);
    }
    ref_sr.push_back(sr);
  });
  EXPECT_EQ(seen, (std::vector<int64_t>{16, 32, 48, 64, 70}));

  auto series = state_rank_series(model, ids, 16, fo);
  EXPECT_EQ(series.tokens, seen);
  ASSERT_EQ(series.stable_rank.sizes(), (std::vector<int64_t>{c.num_hidden_layers, c.n_v_heads, 5}));
  ASSERT_EQ(series.utilisation.sizes(), series.stable_rank.sizes());
  const double cap = static_cast<double>(std::min(c.head_k_dim, c.head_v_dim));
  for (int64_t i = 0; i < 5; ++i) {
    auto got = series.stable_rank.select(2, i);
    EXPECT_TRUE(torch::allclose(got, ref_sr[static_cast<std::size_t>(i)], 1e-8, 1e-10)) << i;
    EXPECT_TRUE(torch::allclose(series.utilisation.select(2, i), ref_sr[static_cast<std::size_t>(i)] / cap, 1e-8,
                                1e-10));
  }
  EXPECT_TRUE((series.stable_rank >= 1.0 - 1e-9).all().item<bool>());
  EXPECT_TRUE((series.utilisation <= 1.0 + 1e-9).all().item<bool>());
}

TEST(StateSeries, SampledStateEqualsFullForwardDeltaNet) { check_sampled_states(Arch::DeltaNet); }
TEST(StateSeries, SampledStateEqualsFullForwardGatedDeltaNetGva) { check_sampled_states(Arch::GatedDeltaNet); }

TEST(StateSeries, RejectsBadArguments) {
  const ModelConfig c = small_config(Arch::DeltaNet);
  LinearLM model(c, init_random_weights(c, 1, torch::kFloat32));
  auto ids = torch::zeros({8}, torch::kLong);
  auto noop = [](int64_t, const LmState&) {};
  EXPECT_THROW(for_each_state(model, ids, 0, {}, noop), InputError);
  EXPECT_THROW(for_each_state(model, torch::zeros({2, 8}, torch::kLong), 4, {}, noop), InputError);
  std::vector<int64_t> t;
  for_each_state(model, ids, 100, {}, [&](int64_t n, const LmState&) { t.push_back(n); });
  EXPECT_EQ(t, (std::vector<int64_t>{8}));
}

// ------------------------------------------------------------------------------ Gram spectra

TEST(GramRank, RankDeficientKeysHaveLowerEntropyRankAndFullTopHalfMass) {
  const ModelConfig c = small_config(Arch::DeltaNet);
  const int64_t dk = c.head_k_dim;
  LinearLM base(c, init_random_weights(c, 5, torch::kFloat32));
  LmWeights w = init_random_weights(c, 5, torch::kFloat32);
  // Zero the second half of every head's query and key rows: q, k live in dk/2 channels.
  for (auto& L : w.layers) {
    L.q_proj = L.q_proj.clone(), L.k_proj = L.k_proj.clone();
    for (int64_t h = 0; h < c.num_heads; ++h) {
      L.q_proj.narrow(0, h * dk + dk / 2, dk / 2).zero_();
      L.k_proj.narrow(0, h * dk + dk / 2, dk / 2).zero_();
    }
  }
  LinearLM deficient(c, std::move(w));
  torch::manual_seed(6);
  auto ids = torch::randint(0, c.vocab_size, {3, 40}, torch::kLong);
  ForwardOptions fo;
  auto rep_base = analyze_model(base, ids[0], 8, collect_statistics(base, ids, 3, fo), fo);
  auto rep_def = analyze_model(deficient, ids[0], 8, collect_statistics(deficient, ids, 3, fo), fo);
  ASSERT_EQ(rep_base.layers.size(), 2u);
  ASSERT_EQ(rep_def.layers.size(), 2u);
  for (std::size_t l = 0; l < 2; ++l)
    for (std::size_t h = 0; h < 2; ++h) {
      const auto &b = rep_base.layers[l][h], &d = rep_def.layers[l][h];
      EXPECT_LT(b.gram.top_half_mass, 0.999);
      EXPECT_NEAR(d.gram.top_half_mass, 1.0, 1e-12);
      EXPECT_NEAR(d.keys.top_half_mass, 1.0, 1e-12);
      EXPECT_NEAR(d.queries.top_half_mass, 1.0, 1e-12);
      EXPECT_LT(d.gram.entropy_rank, b.gram.entropy_rank);
      EXPECT_LT(d.keys.entropy_rank, b.keys.entropy_rank);
      EXPECT_LE(d.gram.entropy_rank, dk / 2 + 1e-9);
      EXPECT_GT(b.gram.entropy_rank, dk / 2.0);
      // Keys in dk/2 channels: the state's rows outside them stay zero, so its rank is <= dk/2.
      for (double sr : d.stable_rank) EXPECT_LE(sr, dk / 2 + 1e-6);
    }
}

TEST(GramRank, ReportShapeAndStatsMismatch) {
  const ModelConfig c = small_config(Arch::GatedDeltaNet);
  LinearLM model(c, init_random_weights(c, 7, torch::kFloat32));
  torch::manual_seed(8);
  auto ids = torch::randint(0, c.vocab_size, {2, 20}, torch::kLong);
  ForwardOptions fo;
  auto stats = collect_statistics(model, ids, 2, fo);
  auto rep = analyze_model(model, ids[1], 6, stats, fo);
  EXPECT_EQ(rep.tokens, (std::vector<int64_t>{6, 12, 18, 20}));
  EXPECT_EQ(rep.seq_len, 20);
  EXPECT_EQ(rep.gram_tokens, 40);
  auto j = rep.to_json();
  ASSERT_EQ(j["layers"].size(), 2u);
  for (const auto& layer : j["layers"]) {
    ASSERT_EQ(layer["heads"].size(), 4u);  // value heads
    for (int64_t h = 0; h < 4; ++h) {
      const auto& hj = layer["heads"][static_cast<std::size_t>(h)];
      EXPECT_EQ(hj["head"].get<int64_t>(), h);
      EXPECT_EQ(hj["key_head"].get<int64_t>(), h / 2);
      EXPECT_EQ(hj["stable_rank"].size(), 4u);
      EXPECT_EQ(hj["utilisation"].size(), 4u);
      EXPECT_EQ(hj["tokens"].get<std::vector<int64_t>>(), rep.tokens);
      // Value heads sharing a key head report that key head's Gram.
      EXPECT_EQ(hj["gram_entropy_rank"].get<double>(),
                layer["heads"][static_cast<std::size_t>(h / 2 * 2)]["gram_entropy_rank"].get<double>());
    }
  }
  // Statistics of another shape are refused.
  ModelConfig other = c;
  other.head_dim = 4;
  other.finalize();
  LinearLM small(other, init_random_weights(other, 7, torch::kFloat32));
  EXPECT_THROW(analyze_model(small, ids[0], 6, stats, fo), InputError);
  EXPECT_NE(rep.table().find("sr_final"), std::string::npos);
}

// ------------------------------------------------------------------------------ CLI

class AnalyzeCli : public testing::CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    text_ = tmp_.file("text.txt");
    std::string t;
    for (int i = 0; i < 60; ++i) t += "the state of a linear attention layer is low rank " + std::to_string(i) + "\n";
    write_file_atomic(text_, t);
  }
  std::string text_;
};

TEST_F(AnalyzeCli, WritesJsonTimeSeriesAndTable) {
  const auto out = tmp_.file("a.json");
  auto r = testing::run_rankprune({"analyze", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len",
                                   "64", "--sequences", "4", "--every", "16", "--seed", "2", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("sr_final"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(read_file(out));
  EXPECT_EQ(j["model"].get<std::string>(), model_);
  EXPECT_EQ(j["seq_len"].get<int64_t>(), 64);
  EXPECT_EQ(j["every"].get<int64_t>(), 16);
  EXPECT_EQ(j["gram_tokens"].get<int64_t>(), 4 * 64);
  ASSERT_EQ(j["layers"].size(), 2u);
  for (std::size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(j["layers"][l]["layer"].get<std::size_t>(), l);
    ASSERT_EQ(j["layers"][l]["heads"].size(), 2u);
    for (const auto& h : j["layers"][l]["heads"]) {
      EXPECT_EQ(h["tokens"].get<std::vector<int64_t>>(), (std::vector<int64_t>{16, 32, 48, 64}));
      auto sr = h["stable_rank"].get<std::vector<double>>(), ut = h["utilisation"].get<std::vector<double>>();
      ASSERT_EQ(sr.size(), 4u);
      ASSERT_EQ(ut.size(), 4u);
      for (std::size_t i = 0; i < 4; ++i) {
        EXPECT_NEAR(ut[i], sr[i] / 8.0, 1e-12);  // dk = dv = 8
        EXPECT_GE(sr[i], 1.0 - 1e-9);
        EXPECT_LE(sr[i], 8.0 + 1e-9);
      }
      EXPECT_DOUBLE_EQ(h["stable_rank_final"].get<double>(), sr.back());
      const double er = h["gram_entropy_rank"].get<double>(), m = h["gram_top_half_mass"].get<double>();
      EXPECT_GE(er, 1.0);
      EXPECT_LE(er, 8.0 + 1e-9);
      EXPECT_GE(m, 0.5 - 1e-12);
      EXPECT_LE(m, 1.0 + 1e-12);
    }
  }
  // --stats: the same statistics (computed here as `calibrate` would) give the same Gram ranks.
  const auto stats = tmp_.file("s.safetensors");
  {
    auto tok = Tokenizer::load("bytes");
    LinearLM m = LinearLM::load(model_);
    auto data = load_calibration_data({text_}, tok.get(), "bytes", 64, 4, 2, m.config().vocab_size);
    CalibrationStats s = collect_statistics(m, data.ids, 1, {});
    s.meta["model_sha"] = model_sha(model_);
    s.save(stats);
  }
  const auto out2 = tmp_.file("b.json");
  r = testing::run_rankprune({"analyze", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                              "--every", "64", "--stats", stats, "--out", out2});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j2 = nlohmann::json::parse(read_file(out2));
  for (std::size_t l = 0; l < 2; ++l)
    for (std::size_t h = 0; h < 2; ++h) {
      const auto &a = j["layers"][l]["heads"][h], &b = j2["layers"][l]["heads"][h];
      EXPECT_NEAR(a["gram_entropy_rank"].get<double>(), b["gram_entropy_rank"].get<double>(), 1e-9);
      EXPECT_NEAR(a["key_gram_top_half_mass"].get<double>(), b["key_gram_top_half_mass"].get<double>(), 1e-9);
      EXPECT_EQ(b["tokens"].get<std::vector<int64_t>>(), (std::vector<int64_t>{64}));
    }
}

TEST_F(AnalyzeCli, BadInputIsAClearError) {
  const auto out = tmp_.file("a.json");
  auto r = testing::run_rankprune({"analyze", "--model", model_, "--data", tmp_.file("missing.txt"), "--tokenizer",
                                   "bytes", "--seq-len", "64", "--out", out});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("missing.txt"), std::string::npos) << r.out;
  r = testing::run_rankprune({"analyze", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--every", "0",
                              "--out", out});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("--every"), std::string::npos) << r.out;
  r = testing::run_rankprune({"analyze", "--model", model_, "--out", out});  // no --data
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("data"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(out));
}

// ------------------------------------------------------------------------------ Tucker spectra

TEST(TuckerSpectra, RankOneTensorHasEntropyRankOneInEveryMode) {
  auto a = torch::tensor({1.0, -2.0}), b = torch::tensor({3.0, 1.0, 4.0}), c = torch::tensor({1.0, 0.5, 2.0, 1.0});
  const auto p = tucker_projection("q", a.view({2, 1, 1}) * b.view({1, 3, 1}) * c.view({1, 1, 4}));
  EXPECT_EQ(p.shape, (std::array<int64_t, 3>{2, 3, 4}));
  for (int n = 0; n < 3; ++n) EXPECT_NEAR(p.entropy_rank[static_cast<std::size_t>(n)], 1.0, 1e-9) << n;
  // A tensor whose mode-1 slices are orthogonal and equal in norm: entropy rank 2 along the heads.
  auto x = torch::zeros({2, 2, 2}, torch::kFloat64);
  x[0][0][0] = 1.0;
  x[1][1][1] = 1.0;
  const auto q = tucker_projection("k", x);
  for (int n = 0; n < 3; ++n) EXPECT_NEAR(q.entropy_rank[static_cast<std::size_t>(n)], 2.0, 1e-9) << n;
}

TEST(TuckerSpectra, FixtureProjectionsAsHeadTensors) {
  for (const char* name : {"delta_net", "gated_deltanet"}) {
    SCOPED_TRACE(name);
    const LinearLM m = LinearLM::load(path_join(RANKPRUNE_SOURCE_DIR, std::string("fixtures/") + name));
    const auto& c = m.config();
    const TuckerAnalysis t = tucker_analysis(m);
    ASSERT_EQ(static_cast<int64_t>(t.layers.size()), c.num_hidden_layers);
    for (const auto& layer : t.layers) {
      ASSERT_EQ(layer.size(), 4u);
      const std::array<std::array<int64_t, 3>, 4> want = {{{c.num_heads, c.head_k_dim, c.hidden_size},
                                                           {c.num_heads, c.head_k_dim, c.hidden_size},
                                                           {c.n_v_heads, c.head_v_dim, c.hidden_size},
                                                           {c.n_v_heads, c.head_v_dim, c.hidden_size}}};
      for (std::size_t p = 0; p < 4; ++p) {
        EXPECT_EQ(layer[p].shape, want[p]) << layer[p].name;
        for (std::size_t n = 0; n < 3; ++n) {
          const int64_t cap = std::min(want[p][n], want[p][0] * want[p][1] * want[p][2] / want[p][n]);
          EXPECT_EQ(static_cast<int64_t>(layer[p].singular_values[n].size()), cap);
          EXPECT_GE(layer[p].entropy_rank[n], 1.0);
          EXPECT_LE(layer[p].entropy_rank[n], static_cast<double>(cap) + 1e-9);
        }
      }
    }
    const auto j = t.to_json();
    EXPECT_EQ(j["layers"][0]["projections"][3]["name"].get<std::string>(), "o");
    EXPECT_NE(t.table().find("erank(h)"), std::string::npos);
  }
}

TEST_F(AnalyzeCli, TuckerWeightsOnlyForLlama2cAndFla) {
  const auto out = tmp_.file("t.json");
  const std::string bin = path_join(testing::data_dir(), "models/stories260K/stories260K.bin");
  auto r = testing::run_rankprune({"analyze", "--model", bin, "--tucker", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(read_file(out));
  ASSERT_EQ(j["tucker"]["layers"].size(), 5u);
  const auto& k = j["tucker"]["layers"][2]["projections"][1];
  EXPECT_EQ(k["name"].get<std::string>(), "k");
  EXPECT_EQ(k["shape"].get<std::vector<int64_t>>(), (std::vector<int64_t>{4, 8, 64}));  // GQA: 4 KV groups
  EXPECT_EQ(k["singular_values"][0].size(), 4u);
  EXPECT_EQ(k["singular_values"][2].size(), 32u);  // min(64, 4 * 8)
  EXPECT_EQ(j["tucker"]["layers"][0]["projections"][3]["shape"].get<std::vector<int64_t>>(),
            (std::vector<int64_t>{8, 8, 64}));
  EXPECT_FALSE(j.contains("layers"));
  // An fla folder, weights only, and together with the state analysis.
  r = testing::run_rankprune({"analyze", "--model", model_, "--tucker", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(read_file(out))["tucker"]["layers"].size(), 2u);
  r = testing::run_rankprune({"analyze", "--model", model_, "--tucker", "--data", text_, "--tokenizer", "bytes",
                              "--seq-len", "64", "--sequences", "2", "--every", "32", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  j = nlohmann::json::parse(read_file(out));
  EXPECT_EQ(j["layers"].size(), 2u);
  EXPECT_EQ(j["tucker"]["layers"].size(), 2u);
  // A .bin with --data: the state analysis needs an fla folder.
  r = testing::run_rankprune({"analyze", "--model", bin, "--data", text_, "--tucker"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = testing::run_rankprune({"analyze", "--model", tmp_.file("nope.bin"), "--tucker"});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("nope.bin"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace rankprune
