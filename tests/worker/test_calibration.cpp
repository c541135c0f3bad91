// Calibration: data loading (text, jsonl, npy), seeded sampling, and statistics equal to sums
// formed directly from every q/k the model produces.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/fs.h"
#include "common/random.h"
#include "model/npy.h"
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

}  // namespace
}  // namespace rankprune
