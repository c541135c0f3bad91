// Calibration: data loading (text, jsonl, npy), seeded sampling, and statistics equal to sums
// formed directly from every q/k the model produces.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/fs.h"
#include "common/random.h"
#include "model/npy.h"
#include "model/safetensors.h"
#include "tests/testing/testing.h"
#include "worker/calibration.h"

namespace rankprune {
namespace {

ModelConfig small_config(Arch arch) {
  ModelConfig c = ModelConfig::defaults(arch);
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_heads = 2, c.vocab_size = 256, c.intermediate_size = 64;
  c.initializer_range = 0.3;
  if (arch == Arch::DeltaNet) {
    c.expand_k = 0.5, c.expand_v = 0.5;
  } else {
    c.head_dim = 8, c.expand_v = 2.0;
  }
  c.finalize();
  return c;
}

TEST(Calibration, ChooseIndicesIsSeededDistinctAndSorted) {
  auto a = choose_indices(100, 10, 7), b = choose_indices(100, 10, 7), c = choose_indices(100, 10, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::adjacent_find(a.begin(), a.end()), a.end());
  EXPECT_EQ(choose_indices(5, 5, 1), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(Calibration, TextIsPackedIntoWindowsWithBos) {
  testing::TempDir tmp;
  write_file_atomic(tmp.file("a.txt"), std::string(100, 'x'));
  auto tok = Tokenizer::load("bytes");
  // bytes has no BOS: 100 tokens -> 10 windows of 10.
  auto d = load_calibration_data({tmp.file("a.txt")}, tok.get(), "bytes", 10, 10, 0, 256);
  EXPECT_EQ(d.available, 10);
  EXPECT_EQ(d.ids.sizes(), (std::vector<int64_t>{10, 10}));
  EXPECT_TRUE((d.ids == 'x').all().item<bool>());
  // jsonl: one document per line.
  write_file_atomic(tmp.file("b.jsonl"), "{\"text\": \"abcd\"}\n\n{\"text\": \"efgh\"}\n");
  auto e = load_calibration_data({tmp.file("b.jsonl")}, tok.get(), "bytes", 4, 2, 0, 256);
  std::string got;
  for (int64_t i = 0; i < 8; ++i) got += static_cast<char>(e.ids.view(-1)[i].item<int64_t>());
  EXPECT_EQ(got, "abcdefgh");
  // Same request, same data -> same identity; another seed -> another identity.
  EXPECT_EQ(load_calibration_data({tmp.file("a.txt")}, tok.get(), "bytes", 10, 3, 1, 256).data_sha,
            load_calibration_data({tmp.file("a.txt")}, tok.get(), "bytes", 10, 3, 1, 256).data_sha);
  EXPECT_NE(load_calibration_data({tmp.file("a.txt")}, tok.get(), "bytes", 10, 3, 1, 256).data_sha,
            load_calibration_data({tmp.file("a.txt")}, tok.get(), "bytes", 10, 3, 2, 256).data_sha);
}

TEST(Calibration, NpyRowsAreSequences) {
  testing::TempDir tmp;
  auto a = torch::arange(60, torch::kInt32).reshape({6, 10});
  write_npy(tmp.file("x.npy"), a);
  auto d = load_calibration_data({tmp.file("x.npy")}, nullptr, "", 10, 6, 3, 256);
  EXPECT_TRUE(torch::equal(d.ids, a.to(torch::kLong)));
  EXPECT_THROW(load_calibration_data({tmp.file("x.npy")}, nullptr, "", 12, 2, 3, 256), InputError);  // L mismatch
  EXPECT_THROW(load_calibration_data({tmp.file("x.npy")}, nullptr, "", 10, 2, 3, 50), InputError);   // vocab
}

TEST(Calibration, BadDataIsAClearError) {
  testing::TempDir tmp;
  auto tok = Tokenizer::load("bytes");
  write_file_atomic(tmp.file("empty.txt"), "");
  write_file_atomic(tmp.file("short.txt"), "abc");
  write_file_atomic(tmp.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"txt\": 3}\n");
  write_file_atomic(tmp.file("data.csv"), "a,b");
  auto msg = [&](const std::vector<std::string>& f, int64_t L, int64_t N) {
    try {
      load_calibration_data(f, tok.get(), "bytes", L, N, 0, 256);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(msg({tmp.file("empty.txt")}, 4, 1).find("too short"), std::string::npos);
  EXPECT_NE(msg({tmp.file("short.txt")}, 4, 1).find("too short"), std::string::npos);
  EXPECT_NE(msg({tmp.file("bad.jsonl")}, 2, 1).find("bad.jsonl:2"), std::string::npos);
  EXPECT_NE(msg({tmp.file("data.csv")}, 2, 1).find("extension"), std::string::npos);
  EXPECT_NE(msg({tmp.file("nope.txt")}, 2, 1).find("does not exist"), std::string::npos);
}

TEST(Calibration, StatisticsEqualDirectSumsOverEveryToken) {
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    auto c = small_config(arch);
    LinearLM m(c, init_random_weights(c, 3, torch::kFloat32));
    auto ids = torch::randint(256, {5, 24}, torch::kLong);
    ForwardOptions o{torch::kFloat64};
    auto s = collect_statistics(m, ids, 2, o);
    EXPECT_EQ(s.tokens, 5 * 24);
    // Reference: keep every q, k, x and form the sums by stacking.
    std::vector<std::vector<torch::Tensor>> qs(2), ks(2), xs(2);
    m.hidden(ids, nullptr, o, [&](int64_t l, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& x) {
      qs[l].push_back(q.clone()), ks[l].push_back(k.clone()), xs[l].push_back(x.clone());
    });
    for (int64_t l = 0; l < 2; ++l) {
      auto q = torch::cat(qs[l]).reshape({-1, c.num_heads, c.head_k_dim});
      auto k = torch::cat(ks[l]).reshape({-1, c.num_heads, c.head_k_dim});
      for (int64_t h = 0; h < c.num_heads; ++h) {
        auto M = torch::cat({q.select(1, h), k.select(1, h)});  // stacked [2N, dk]
        EXPECT_TRUE(torch::allclose(s.gram[l][h], M.t().mm(M), 1e-10, 1e-10)) << arch_name(arch) << " l" << l;
        auto kn = k.select(1, h) / (k.select(1, h).pow(2).sum(-1, true) + 1e-6).sqrt();
        EXPECT_TRUE(torch::allclose(s.k_outer[l][h], kn.t().mm(kn), 1e-5, 1e-5));  // float32 products
      }
      EXPECT_TRUE(torch::allclose(s.x_sq[l], torch::cat(xs[l]).reshape({-1, c.hidden_size}).pow(2).sum(0), 1e-10));
    }
  }
}

TEST(Calibration, ShardsAddUpAndStatsRoundTrip) {
  auto c = small_config(Arch::DeltaNet);
  LinearLM m(c, init_random_weights(c, 4, torch::kFloat32));
  auto ids = torch::randint(256, {6, 16}, torch::kLong);
  ForwardOptions o{torch::kFloat64};
  auto whole = collect_statistics(m, ids, 6, o);
  auto a = collect_statistics(m, ids.narrow(0, 0, 2), 1, o);
  a.add(collect_statistics(m, ids.narrow(0, 2, 4), 3, o));
  EXPECT_TRUE(torch::allclose(a.gram, whole.gram, 1e-12, 1e-12));
  EXPECT_EQ(a.tokens, whole.tokens);
  testing::TempDir tmp;
  whole.meta["model_sha"] = "abc";
  whole.save(tmp.file("s.safetensors"));
  auto back = CalibrationStats::load(tmp.file("s.safetensors"));
  EXPECT_TRUE(torch::equal(back.gram, whole.gram));
  EXPECT_TRUE(torch::equal(back.x_sq, whole.x_sq));
  EXPECT_EQ(back.tokens, whole.tokens);
  EXPECT_NO_THROW(back.check_matches(c, "abc", "s"));
  EXPECT_THROW(back.check_matches(c, "other", "s"), InputError);
  auto other = c;
  other.num_heads = 4;  // same widths, other head split
  other.finalize();
  EXPECT_THROW(back.check_matches(other, "", "s"), InputError);
}

// ---------------------------------------------------------------------------------------- taylor

// Tolerances of the finite-difference check: float64 model, central differences D(h) with steps
// h and h/2 combined by Richardson extrapolation, (4 D(h/2) - D(h)) / 3, truncation ~ h^4.
// Measured (max entry error / row-sum error): plain D(h) 2.4e-4 / 2.4e-6 / 2.7e-8 for h = 1e-3 /
// 1e-4 / 1e-5 (the h^2 law, then rounding); extrapolated 4e-4, 3.6e-6, 4.5e-8, 2.9e-9, 1.7e-9
// for h = 1e-2, 3e-3, 1e-3, 5e-4, 2.5e-4 (h^4, then rounding of the ~1200-nat loss).
constexpr double kFdStep = 2.5e-4;
constexpr double kFdEntryTol = 2e-8;  // max_j |W g_fd - W g|_j / max_j |W g|_j along a row
constexpr double kFdRowTol = 1e-8;    // relative error of the row's sum_j |W g|

// The summed next-token cross-entropy of every sequence (the loss taylor differentiates),
// without gradients (the fused forward-only kernels), in float64.
double summed_ce(const LinearLM& m, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  const int64_t T = ids.size(1);
  auto logits = m.forward(ids.narrow(1, 0, T - 1), nullptr, {torch::kFloat64});
  return torch::nn::functional::cross_entropy(logits.reshape({-1, m.config().vocab_size}),
                                              ids.narrow(1, 1, T - 1).reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
      .item<double>();
}

TEST(Taylor, GradientSumsMatchFiniteDifferencesOfTheLoss) {
  for (Arch arch : {Arch::DeltaNet, Arch::GatedDeltaNet}) {
    auto c = small_config(arch);
    LinearLM m(c, init_random_weights(c, 11, torch::kFloat64));
    torch::manual_seed(12);
    // 72 tokens: the gradient goes through the chunked delta rule (T > 64) and torch's conv1d,
    // the finite differences through the fused forward-only kernels. 3 sequences in blocks of 2.
    auto ids = torch::randint(c.vocab_size, {3, 72}, torch::kLong);
    auto s = collect_statistics(m, ids, 2, {torch::kFloat64}, /*taylor=*/true);
    ASSERT_TRUE(s.has_taylor());
    const int64_t KD = c.num_heads * c.head_k_dim;
    ASSERT_EQ(s.taylor_grad_q.sizes(), (std::vector<int64_t>{c.num_hidden_layers, KD, c.hidden_size}));
    double worst_entry = 0, worst_row = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      for (int which = 0; which < 2; ++which) {  // q_proj, k_proj
        const auto& G = which == 0 ? s.taylor_grad_q : s.taylor_grad_k;
        for (int64_t row : {int64_t{1}, KD - 3}) {
          const torch::Tensor W = which == 0 ? m.weights().layers[l].q_proj : m.weights().layers[l].k_proj;
          auto an = (W[row] * G[l][row]).contiguous();  // W (.) dL/dW along the row
          std::vector<double> fd(static_cast<std::size_t>(c.hidden_size));
          for (int64_t j = 0; j < c.hidden_size; ++j) {
            auto loss_at = [&](double delta) {
              LmWeights w = m.weights();
              auto& target = which == 0 ? w.layers[l].q_proj : w.layers[l].k_proj;
              target = target.clone();
              target[row][j] += delta;
              return summed_ce(LinearLM(c, std::move(w)), ids);
            };
            auto central = [&](double h) { return (loss_at(h) - loss_at(-h)) / (2 * h); };
            fd[j] = W[row][j].item<double>() * (4 * central(kFdStep / 2) - central(kFdStep)) / 3;
          }
          auto fdt = torch::tensor(fd, torch::kFloat64);
          const double scale = an.abs().max().item<double>();
          ASSERT_GT(scale, 0.0);
          const double e = (fdt - an).abs().max().item<double>() / scale;
          const double rs = an.abs().sum().item<double>();
          const double r = std::abs(fdt.abs().sum().item<double>() - rs) / rs;
          worst_entry = std::max(worst_entry, e), worst_row = std::max(worst_row, r);
          EXPECT_LT(e, kFdEntryTol) << arch_name(arch) << " layer " << l << (which ? " k_proj" : " q_proj") << " row "
                                    << row;
          EXPECT_LT(r, kFdRowTol) << arch_name(arch) << " layer " << l << " row " << row;
        }
      }
    }
    std::cout << arch_name(arch) << ": finite differences vs taylor gradients: max entry error " << worst_entry
              << " (of the row's max |W g|), max row-sum relative error " << worst_row << "\n";
    // The block gradient's loss is the summed cross-entropy of its sequences.
    auto blk = taylor_block(m, ids, {torch::kFloat64});
    EXPECT_NEAR(blk.loss, summed_ce(m, ids), 1e-9 * blk.loss);
    // Summed over blocks: one block of all 3 sequences gives the same sums (to rounding).
    EXPECT_TRUE(torch::allclose(blk.grad_q, s.taylor_grad_q, 1e-10, 1e-12));
    EXPECT_TRUE(torch::allclose(blk.grad_k, s.taylor_grad_k, 1e-10, 1e-12));
  }
}

TEST(Taylor, OtherStatisticsAreTheSameBitsWithOrWithoutTaylor) {
  auto c = small_config(Arch::GatedDeltaNet);
  LinearLM m(c, init_random_weights(c, 5, torch::kFloat32));
  auto ids = torch::randint(c.vocab_size, {3, 80}, torch::kLong);
  auto a = collect_statistics(m, ids, 2, {}), b = collect_statistics(m, ids, 2, {}, /*taylor=*/true);
  EXPECT_FALSE(a.has_taylor());
  EXPECT_TRUE(b.has_taylor());
  EXPECT_TRUE(torch::equal(a.gram, b.gram));
  EXPECT_TRUE(torch::equal(a.x_sq, b.x_sq));
  EXPECT_TRUE(torch::equal(a.k_outer, b.k_outer));
}

TEST(Taylor, StatisticsFileRoundTripAndOldFiles) {
  auto c = small_config(Arch::DeltaNet);
  LinearLM m(c, init_random_weights(c, 6, torch::kFloat32));
  auto ids = torch::randint(c.vocab_size, {4, 16}, torch::kLong);
  auto s = collect_statistics(m, ids, 2, {}, /*taylor=*/true);
  testing::TempDir tmp;
  s.meta["model_sha"] = "abc";
  s.save(tmp.file("t.safetensors"));
  auto back = CalibrationStats::load(tmp.file("t.safetensors"));
  ASSERT_TRUE(back.has_taylor());
  EXPECT_TRUE(torch::equal(back.taylor_grad_q, s.taylor_grad_q));
  EXPECT_TRUE(torch::equal(back.taylor_grad_k, s.taylor_grad_k));
  EXPECT_TRUE(torch::equal(back.gram, s.gram));
  // The packed form carries them too (what a cached file's broadcast sends to other ranks).
  auto unpacked = CalibrationStats::unpack(c, back.pack(), back.tokens);
  ASSERT_TRUE(unpacked.has_taylor());
  EXPECT_TRUE(torch::equal(unpacked.taylor_grad_k, s.taylor_grad_k));
  // A file without them (as every file written before taylor) loads without them.
  auto plain = collect_statistics(m, ids, 2, {});
  plain.save(tmp.file("p.safetensors"));
  EXPECT_FALSE(CalibrationStats::load(tmp.file("p.safetensors")).has_taylor());
  EXPECT_FALSE(CalibrationStats::unpack(c, plain.pack(), plain.tokens).has_taylor());
  // Added shards keep them only when both have them.
  auto sum = s;
  sum.taylor_grad_q = s.taylor_grad_q.clone(), sum.taylor_grad_k = s.taylor_grad_k.clone();
  sum.gram = s.gram.clone(), sum.x_sq = s.x_sq.clone(), sum.k_sum = s.k_sum.clone();
  sum.k_outer = s.k_outer.clone(), sum.q_sum = s.q_sum.clone(), sum.q_outer = s.q_outer.clone();
  sum.add(s);
  ASSERT_TRUE(sum.has_taylor());
  EXPECT_TRUE(torch::equal(sum.taylor_grad_q, 2 * s.taylor_grad_q));
  sum.add(plain);
  EXPECT_FALSE(sum.has_taylor());
  // Taylor sums of an unknown kind are refused, naming the file.
  auto meta = s.meta;
  save_safetensors(tmp.file("u.safetensors"),
                   {{"gram", s.gram}, {"x_sq", s.x_sq}, {"k_sum", s.k_sum}, {"k_outer", s.k_outer}, {"q_sum", s.q_sum},
                    {"q_outer", s.q_outer}, {"taylor_grad_q", s.taylor_grad_q}, {"taylor_grad_k", s.taylor_grad_k}},
                   {{"format", "rankprune-calibration-stats-v1"}, {"tokens", "64"}, {"layers", "2"}, {"heads", "2"},
                    {"head_k_dim", std::to_string(c.head_k_dim)}, {"hidden_size", "32"}, {"taylor", "mean-ce"}});
  try {
    CalibrationStats::load(tmp.file("u.safetensors"));
    ADD_FAILURE() << "accepted taylor sums of an unknown kind";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("u.safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rankprune
