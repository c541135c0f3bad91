// Selection and pruning: budgets, determinism, l1/wanda/random/taylor scoring by hand, and the pruned
// model against an independent construction (the removed channels zeroed before the L2 norm in
// the original model).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "model/safetensors.h"
#include "prune/select.h"
#include "tests/testing/testing.h"
#include "worker/calibration.h"

namespace rankprune {
namespace {

ModelConfig small_config(Arch arch, int64_t num_v_heads = 0) {
  ModelConfig c = ModelConfig::defaults(arch);
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_heads = 2, c.vocab_size = 64, c.intermediate_size = 64;
  c.initializer_range = 0.3;
  c.norm_eps = 1e-30;  // so the kernel scale dk^-1/2 cancels exactly in the output RMSNorm
  if (arch == Arch::DeltaNet) {
    c.expand_k = 0.5, c.expand_v = 0.5;  // dk = dv = 8
  } else {
    c.head_dim = 8, c.expand_v = 1.5, c.num_v_heads = num_v_heads;  // dv = 12
  }
  c.finalize();
  return c;
}

struct Fixture {
  LinearLM model;
  CalibrationStats stats;
};

Fixture make(Arch arch, uint64_t seed, int64_t num_v_heads = 0) {
  auto c = small_config(arch, num_v_heads);
  LinearLM m(c, init_random_weights(c, seed, torch::kFloat64));
  torch::manual_seed(seed);
  auto ids = torch::randint(c.vocab_size, {4, 32}, torch::kLong);
  auto s = collect_statistics(m, ids, 2, {torch::kFloat64}, /*taylor=*/true);
  return {std::move(m), std::move(s)};
}

TEST(Prune, KeptChannelsBudget) {
  EXPECT_EQ(kept_channels(128, 0.5), 64);
  EXPECT_EQ(kept_channels(128, 0.1), 115);  // floor(115.2)
  EXPECT_EQ(kept_channels(128, 0.0), 128);
  EXPECT_EQ(kept_channels(8, 0.99), 1);     // at least one
  EXPECT_THROW(kept_channels(8, 1.0), UsageError);
  EXPECT_THROW(kept_channels(8, -0.1), UsageError);
}

TEST(Prune, UnknownMethodAndMissingStatsAreErrors) {
  auto f = make(Arch::DeltaNet, 1);
  EXPECT_THROW(select_channels(f.model, &f.stats, "magnitude", 0.5, 0), UsageError);
  EXPECT_THROW(select_channels(f.model, nullptr, "drrqr", 0.5, 0), InputError);
  EXPECT_NO_THROW(select_channels(f.model, nullptr, "l1", 0.5, 0));
}

TEST(Prune, SelectionsAreDeterministicAndWellFormed) {
  auto f = make(Arch::GatedDeltaNet, 2);
  for (const auto& method : selection_methods()) {
    auto a = select_channels(f.model, &f.stats, method, 0.5, 5);
    auto b = select_channels(f.model, &f.stats, method, 0.5, 5);
    if (method == "pca") {  // a rotation, not an index set
      EXPECT_TRUE(torch::equal(a.rotation, b.rotation));
      continue;
    }
    EXPECT_EQ(a.kept, b.kept) << method;
    ASSERT_EQ(a.kept.size(), 2u);
    for (const auto& layer : a.kept)
      for (const auto& head : layer) {
        EXPECT_EQ(head.size(), 4u) << method;
        EXPECT_TRUE(std::is_sorted(head.begin(), head.end()));
        EXPECT_EQ(std::adjacent_find(head.begin(), head.end()), head.end());
      }
    auto back = Selection::from_json(nlohmann::json::parse(a.to_text()), "sel");
    EXPECT_EQ(back.kept, a.kept);
    EXPECT_EQ(back.head_k_dim, a.head_k_dim);
  }
  EXPECT_NE(select_channels(f.model, nullptr, "random", 0.5, 1).kept,
            select_channels(f.model, nullptr, "random", 0.5, 2).kept);
}

TEST(Prune, L1AndWandaScoresByHand) {
  auto f = make(Arch::DeltaNet, 3);
  const auto& W = f.model.weights().layers[1];
  auto sel = select_channels(f.model, &f.stats, "l1", 0.75, 0);  // keep 2 of 8
  auto wsel = select_channels(f.model, &f.stats, "wanda", 0.75, 0);
  auto colw = (f.stats.x_sq[1] / f.stats.tokens).sqrt();
  for (int64_t h = 0; h < 2; ++h) {
    std::vector<std::pair<double, int64_t>> l1, wa;
    for (int64_t i = 0; i < 8; ++i) {
      auto qr = W.q_proj[h * 8 + i].abs(), kr = W.k_proj[h * 8 + i].abs();
      l1.push_back({-(qr.sum() + kr.sum()).item<double>(), i});
      wa.push_back({-((qr + kr) * colw).sum().item<double>(), i});
    }
    std::sort(l1.begin(), l1.end());
    std::sort(wa.begin(), wa.end());
    std::vector<int64_t> e1 = {l1[0].second, l1[1].second}, e2 = {wa[0].second, wa[1].second};
    std::sort(e1.begin(), e1.end());
    std::sort(e2.begin(), e2.end());
    EXPECT_EQ(sel.kept[1][h], e1);
    EXPECT_EQ(wsel.kept[1][h], e2);
  }
}

TEST(Prune, TaylorKeepsTheLargestImportanceByHand) {
  auto f = make(Arch::GatedDeltaNet, 5);
  auto sel = select_channels(f.model, &f.stats, "taylor", 0.75, 0);  // keep 2 of 8
  for (int64_t l = 0; l < 2; ++l) {
    const auto& W = f.model.weights().layers[l];
    auto imp = taylor_importance(f.model, f.stats, l);  // [H, dk]
    for (int64_t h = 0; h < 2; ++h) {
      std::vector<std::pair<double, int64_t>> sc;
      for (int64_t i = 0; i < 8; ++i) {
        // The paper's code: |W (.) dL/dW| summed over the row, q_proj's and k_proj's added.
        const double v = (W.q_proj[h * 8 + i] * f.stats.taylor_grad_q[l][h * 8 + i]).abs().sum().item<double>() +
                         (W.k_proj[h * 8 + i] * f.stats.taylor_grad_k[l][h * 8 + i]).abs().sum().item<double>();
        EXPECT_NEAR(imp[h][i].item<double>(), v, 1e-12 * v);
        sc.push_back({-v, i});
      }
      std::sort(sc.begin(), sc.end());
      std::vector<int64_t> want = {sc[0].second, sc[1].second};
      std::sort(want.begin(), want.end());
      EXPECT_EQ(sel.kept[l][h], want) << "layer " << l << " head " << h;
    }
  }
}

TEST(Prune, TaylorSelectionFollowsTheScoresAndBreaksTiesByIndex) {
  auto f = make(Arch::DeltaNet, 6);
  // Gradient sums chosen so that channel i of head h scores (sum_j |W_ij| for q and k) * c_i:
  // G = sign(W) * c_i makes |W (.) G| = |W| c_i.
  const int64_t H = 2, dk = 8;
  auto c = torch::tensor({1.0, 5.0, 3.0, 5.0, 0.5, 4.0, 2.0, 7.0}, torch::kFloat64);
  CalibrationStats s = f.stats;
  std::vector<torch::Tensor> gq, gk;
  for (int64_t l = 0; l < 2; ++l) {
    const auto& W = f.model.weights().layers[l];
    // Rows of one head get a common |W| row sum (so only c_i ranks them): W rows replaced by one row.
    auto row_q = W.q_proj[0].clone(), row_k = W.k_proj[0].clone();
    gq.push_back(torch::sign(row_q).unsqueeze(0).repeat({H * dk, 1}) * c.repeat({H}).unsqueeze(1));
    gk.push_back(torch::sign(row_k).unsqueeze(0).repeat({H * dk, 1}) * c.repeat({H}).unsqueeze(1));
  }
  s.taylor_grad_q = torch::stack(gq), s.taylor_grad_k = torch::stack(gk);
  LmWeights w = f.model.weights();
  for (auto& lw : w.layers) {
    lw.q_proj = lw.q_proj[0].unsqueeze(0).repeat({H * dk, 1});
    lw.k_proj = lw.k_proj[0].unsqueeze(0).repeat({H * dk, 1});
  }
  LinearLM same_rows(f.model.config(), std::move(w));
  // Largest first: 7 (c = 7), then 1 and 3 (tied at 5; keeping 2, the lower index wins), 5 (4), ...
  EXPECT_EQ(select_channels(same_rows, &s, "taylor", 0.75, 0).kept[0][0], (std::vector<int64_t>{1, 7}));
  EXPECT_EQ(select_channels(same_rows, &s, "taylor", 0.5, 0).kept[1][1], (std::vector<int64_t>{1, 3, 5, 7}));
  EXPECT_EQ(select_channels(same_rows, &s, "taylor", 0.625, 0).kept[0][1], (std::vector<int64_t>{1, 3, 7}));
}

TEST(Prune, TaylorWithoutItsStatisticsIsAClearError) {
  auto f = make(Arch::DeltaNet, 7);
  CalibrationStats plain = f.stats;
  plain.taylor_grad_q = plain.taylor_grad_k = torch::Tensor();
  EXPECT_THROW(select_channels(f.model, nullptr, "taylor", 0.5, 0), InputError);
  try {
    select_channels(f.model, &plain, "taylor", 0.5, 0);
    ADD_FAILURE() << "taylor without gradient sums was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("calibrate --taylor"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(method_needs_statistics("taylor"));
  EXPECT_TRUE(method_needs_taylor("taylor"));
  EXPECT_FALSE(method_needs_taylor("wanda"));
}

// The original model with the removed q/k channels zeroed at the projections: the conv outputs
// and SiLU of those channels are exactly zero, so they drop out of the L2 norms and of every
// q.k and k.k product — the paper's definition of removing them.
LinearLM zero_removed(const LinearLM& m, const Selection& sel) {
  LmWeights w = m.weights();
  const int64_t H = m.config().num_heads, dk = m.config().head_k_dim;
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    auto mask = torch::zeros({H * dk}, torch::kFloat64);
    for (int64_t h = 0; h < H; ++h)
      for (auto i : sel.kept[l][h]) mask[h * dk + i] = 1.0;
    w.layers[l].q_proj = w.layers[l].q_proj * mask.unsqueeze(1);
    w.layers[l].k_proj = w.layers[l].k_proj * mask.unsqueeze(1);
  }
  return LinearLM(m.config(), std::move(w));
}

TEST(Prune, PrunedLogitsEqualOriginalWithChannelsDroppedBeforeNorm) {
  for (auto arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    for (int64_t nv : {0, 4}) {
      if (arch == Arch::DeltaNet && nv) continue;
      auto f = make(arch, 4, nv);
      for (const char* method : {"drrqr", "l1", "random"}) {
        auto sel = select_channels(f.model, &f.stats, method, 0.5, 9);
        auto pruned = apply_selection(f.model, sel);
        EXPECT_EQ(pruned.config().head_k_dim, 4);
        EXPECT_EQ(pruned.config().head_v_dim, f.model.config().head_v_dim);
        auto ids = torch::randint(64, {2, 80}, torch::kLong);
        ForwardOptions o{torch::kFloat64};
        auto got = pruned.forward(ids, nullptr, o);
        auto ref = zero_removed(f.model, sel).forward(ids, nullptr, o);
        double err = (got - ref).abs().max().item<double>() / ref.abs().max().item<double>();
        // The kernel scale (dk^-1/2 vs k^-1/2) cancels in the output RMSNorm (eps ~ 0 here).
        EXPECT_LT(err, 1e-10) << arch_name(arch) << " nv=" << nv << " " << method;
        // And pruning did change the model, by far more than that tolerance.
        double moved = (f.model.forward(ids, nullptr, o) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
        EXPECT_GT(moved, 1e-3) << arch_name(arch) << " " << method;
      }
    }
  }
}

TEST(Prune, RatioZeroKeepsEveryTensorBitForBit) {
  auto f = make(Arch::GatedDeltaNet, 5);
  auto pruned = apply_selection(f.model, select_channels(f.model, &f.stats, "drrqr", 0.0, 0));
  auto a = f.model.named_tensors(), b = pruned.named_tensors();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  EXPECT_EQ(pruned.config().to_json().dump(), f.model.config().to_json().dump());
}

TEST(Prune, SavedPrunedCheckpointReloadsAsFlaWould) {
  // fla derives sizes from config.json: the written fields must reproduce the pruned shapes.
  for (auto arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    auto f = make(arch, 6);
    auto sel = select_channels(f.model, &f.stats, "qrcp", 0.625, 0);  // keep 3 of 8
    auto pruned = apply_selection(f.model, sel);
    testing::TempDir tmp;
    pruned.save(tmp.path());
    auto cfg = ModelConfig::load(tmp.path());
    if (arch == Arch::DeltaNet) {
      EXPECT_EQ(static_cast<int64_t>(cfg.hidden_size * cfg.expand_k), 2 * 3);  // fla: int(D * expand_k)
    } else {
      EXPECT_EQ(cfg.head_dim, 3);
      EXPECT_EQ(static_cast<int64_t>(cfg.head_dim * cfg.expand_v), 12);  // fla: int(head_dim * expand_v)
    }
    auto back = LinearLM::load(tmp.path());
    auto ids = torch::randint(64, {1, 20}, torch::kLong);
    EXPECT_TRUE(torch::equal(back.forward(ids), pruned.forward(ids))) << arch_name(arch);
  }
}

}  // namespace
}  // namespace rankprune

namespace rankprune {
namespace {

TEST(PrunePca, RotationIsTopEigenvectorsOfKeyCovariance) {
  auto f = make(Arch::DeltaNet, 8);
  auto sel = select_channels(f.model, &f.stats, "pca", 0.5, 0);
  ASSERT_TRUE(sel.rotation.defined());
  EXPECT_EQ(sel.rotation.sizes(), (std::vector<int64_t>{2, 2, 4, 8}));
  // Independent: stack every normalised key and diagonalise its sample covariance.
  torch::manual_seed(8);
  auto ids = torch::randint(64, {4, 32}, torch::kLong);  // the same ids make() calibrated on
  std::vector<torch::Tensor> keys;
  f.model.hidden(ids, nullptr, {torch::kFloat64},
                 [&](int64_t l, const torch::Tensor&, const torch::Tensor& k, const torch::Tensor&) {
                   if (l == 1) keys.push_back(k.reshape({-1, 2, 8}));
                 });
  auto K = torch::cat(keys);
  for (int64_t h = 0; h < 2; ++h) {
    auto kh = K.select(1, h);
    kh = kh / (kh.pow(2).sum(-1, true) + 1e-6).sqrt();
    auto centered = kh - kh.mean(0, true);
    auto cov = centered.t().mm(centered) / (kh.size(0) - 1);
    auto top = std::get<1>(torch::linalg_eigh(cov)).flip({-1}).narrow(1, 0, 4);  // [dk, 4]
    auto T = sel.rotation[1][h];                                                  // [4, dk]
    EXPECT_TRUE(torch::allclose(T.mm(T.t()), torch::eye(4, torch::kFloat64), 1e-9, 1e-9));
    // Same subspace: the projections agree (eigenvector signs may differ).
    EXPECT_TRUE(torch::allclose(T.t().mm(T), top.mm(top.t()), 1e-5, 1e-5)) << "head " << h;
  }
}

TEST(PrunePca, IdentityRowsRotationEqualsSlicing) {
  // With T made of rows of the identity, T W slices rows and T^2 = T leaves the conv exact.
  auto f = make(Arch::GatedDeltaNet, 9);
  auto sel = select_channels(f.model, &f.stats, "l1", 0.5, 0);
  Selection rot = sel;
  rot.kept.clear();
  rot.rotation = torch::zeros({2, 2, 4, 8}, torch::kFloat64);
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t r = 0; r < 4; ++r) rot.rotation[l][h][r][sel.kept[l][h][r]] = 1.0;
  auto a = apply_selection(f.model, sel).named_tensors(), b = apply_selection(f.model, rot).named_tensors();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
}

}  // namespace
}  // namespace rankprune
