// llama2.c legacy .bin: the published greedy output of stories260K, a malformed-file corpus, bounded
// memory on hostile headers, and the batched/cached forward against a per-position scalar reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/fs.h"
#include "model/llama2c.h"
#include "model/tokenizer.h"
#include "tests/testing/bounded.h"
#include "tests/testing/testing.h"
#include "worker/llama2c_eval.h"

namespace rankprune {
namespace {

using testing::expect_input_error;
using testing::TempDir;

constexpr double kF64Tol = 1e-10;  // batched float64 forward vs the scalar loop reference

std::string stories_dir() { return path_join(testing::data_dir(), "models/stories260K"); }

// A file with the given header and `floats` float32 values (seeded normal * 0.3, or `bytes_extra`
// trailing bytes).
void write_bin(const std::string& path, const std::vector<int32_t>& header, int64_t floats, int bytes_extra = 0,
               uint64_t seed = 1) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size() * 4));
  if (floats > 0) {
    torch::manual_seed(seed);
    auto w = (torch::randn({floats}, torch::kFloat32) * 0.3).contiguous();
    f.write(reinterpret_cast<const char*>(w.data_ptr<float>()), floats * 4);
  }
  for (int i = 0; i < bytes_extra; ++i) f.put('\0');
}

Llama2cConfig cfg_of(const std::vector<int32_t>& h) {
  Llama2cConfig c;
  c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3], c.n_kv_heads = h[4];
  c.vocab_size = std::abs(h[5]), c.seq_len = h[6], c.shared_classifier = h[5] > 0;
  return c;
}

const std::vector<int32_t> kSmall = {16, 24, 2, 4, 2, 11, 9};  // hs 4, GQA 2 query heads per KV head

TEST(Llama2c, GreedyStories260KMatchesPublishedOutput) {
  const std::string dir = stories_dir();
  const auto m = Llama2cModel::load(path_join(dir, "stories260K.bin"));
  const auto& c = m.config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.file_floats(), 264128);
  const auto tok = Tokenizer::load(path_join(dir, "tok512.model"));
  ASSERT_EQ(tok->vocab_size(), 512);
  std::vector<std::string> pieces;
  for (int i = 0; i < tok->vocab_size(); ++i) pieces.push_back(tok->decode_piece(i));
  const auto ids = llama2c_greedy(m, 200);
  EXPECT_EQ(ids.size(), 200u);
  const std::string got = llama2c_decode(ids, pieces);
  const std::string want = read_file(path_join(dir, "expected_greedy_200steps.txt"));
  EXPECT_EQ(got, want);
  // float64 follows the same path (the narrowest top-1/top-2 margin is 0.004).
  EXPECT_EQ(llama2c_greedy(m, 200, torch::kFloat64), ids);
}

// Scalar per-position forward in float64, written after the format's description, one query head
// at a time: the oracle for RoPE pairs, GQA head mapping, masking and the FFN.
torch::Tensor reference_logits(const Llama2cModel& m, const std::vector<int64_t>& ids) {
  const auto& c = m.config();
  const auto& w = m.weights();
  const int64_t H = c.n_heads, hs = c.head_size(), T = static_cast<int64_t>(ids.size());
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  auto rms = [&](torch::Tensor x, const torch::Tensor& g) {
    return f64(g) * x / std::sqrt((x * x).mean().item<double>() + 1e-5);
  };
  std::vector<std::vector<torch::Tensor>> keys(static_cast<std::size_t>(c.n_layers)), vals(keys.size());
  auto out = torch::zeros({T, c.vocab_size}, torch::kFloat64);
  for (int64_t t = 0; t < T; ++t) {
    auto x = f64(w.embedding[ids[static_cast<std::size_t>(t)]]);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& L = w.layers[static_cast<std::size_t>(l)];
      auto n = rms(x, L.rms_att);
      auto q = torch::mv(f64(L.wq), n), k = torch::mv(f64(L.wk), n), v = torch::mv(f64(L.wv), n);
      for (auto* r : {&q, &k}) {
        auto a = r->clone();
        for (int64_t i = 0; i < r->size(0); i += 2) {
          const int64_t j = (i % hs) / 2;
          const double ang = static_cast<double>(t) * std::pow(10000.0, -2.0 * j / static_cast<double>(hs));
          const double x0 = a[i].item<double>(), x1 = a[i + 1].item<double>();
          (*r)[i] = x0 * std::cos(ang) - x1 * std::sin(ang);
          (*r)[i + 1] = x0 * std::sin(ang) + x1 * std::cos(ang);
        }
      }
      keys[static_cast<std::size_t>(l)].push_back(k);
      vals[static_cast<std::size_t>(l)].push_back(v);
      auto o = torch::zeros({H * hs}, torch::kFloat64);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / (H / L.n_kv_heads);
        auto qh = q.narrow(0, h * hs, hs);
        std::vector<double> sc;
        for (int64_t s = 0; s <= t; ++s)
          sc.push_back(torch::dot(qh, keys[static_cast<std::size_t>(l)][static_cast<std::size_t>(s)].narrow(0, g * hs, hs))
                           .item<double>() / std::sqrt(static_cast<double>(hs)));
        const double mx = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (double& e : sc) z += (e = std::exp(e - mx));
        for (int64_t s = 0; s <= t; ++s)
          o.narrow(0, h * hs, hs) +=
              (sc[static_cast<std::size_t>(s)] / z) *
              vals[static_cast<std::size_t>(l)][static_cast<std::size_t>(s)].narrow(0, g * hs, hs);
      }
      x = x + torch::mv(f64(L.wo), o);
      auto y = rms(x, L.rms_ffn);
      auto a = torch::mv(f64(L.w1), y), b = torch::mv(f64(L.w3), y);
      x = x + torch::mv(f64(L.w2), a / (1 + torch::exp(-a)) * b);
    }
    out[t] = torch::mv(f64(w.wcls), rms(x, w.rms_final));
  }
  return out;
}

TEST(Llama2c, ForwardMatchesScalarReference) {
  TempDir tmp;
  for (int32_t vocab : {11, -11}) {  // shared and unshared classifier
    auto h = kSmall;
    h[5] = vocab;
    const std::string p = tmp.file(cat("small", vocab, ".bin"));
    write_bin(p, h, cfg_of(h).file_floats());
    const auto m = Llama2cModel::load(p);
    EXPECT_EQ(m.config().shared_classifier, vocab > 0);
    const std::vector<std::vector<int64_t>> rows = {{1, 5, 3, 10, 0, 7, 2}, {1, 2, 9, 9, 4, 6, 8}};
    auto ids = torch::tensor({rows[0][0], rows[0][1], rows[0][2], rows[0][3], rows[0][4], rows[0][5], rows[0][6],
                              rows[1][0], rows[1][1], rows[1][2], rows[1][3], rows[1][4], rows[1][5], rows[1][6]},
                             torch::kLong)
                   .view({2, 7});
    const auto batched = m.logits(ids, torch::kFloat64);  // [2, 7, V]
    for (int r = 0; r < 2; ++r) {
      const auto ref = reference_logits(m, rows[static_cast<std::size_t>(r)]);
      const double err = (batched[r] - ref).abs().max().item<double>();
      EXPECT_LT(err, kF64Tol) << "row " << r << " vocab " << vocab << " shape [2, 7, 11]";
    }
    // Incremental decoding with the cache (3 + 1 + 3 tokens) equals the whole-sequence forward.
    Llama2cCache cache;
    auto a = m.logits(ids.narrow(1, 0, 3), torch::kFloat64, &cache);
    auto b = m.logits(ids.narrow(1, 3, 1), torch::kFloat64, &cache);
    auto cc = m.logits(ids.narrow(1, 4, 3), torch::kFloat64, &cache);
    EXPECT_LT((torch::cat({a, b, cc}, 1) - batched).abs().max().item<double>(), kF64Tol);
    // float32 agrees with float64 to float32 rounding.
    EXPECT_LT((m.logits(ids).to(torch::kFloat64) - batched).abs().max().item<double>(), 1e-4);
    // Parameter count: everything stored but the RoPE tables.
    const auto& c = m.config();
    EXPECT_EQ(m.num_parameters(), c.file_floats() - c.seq_len * c.head_size());
  }
}

TEST(Llama2c, SampleIsSeededAndStopsAtBos) {
  const auto m = Llama2cModel::load(path_join(stories_dir(), "stories260K.bin"));
  const auto a = llama2c_sample(m, 3, 40, 1.0, 7), b = llama2c_sample(m, 3, 40, 1.0, 7);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, llama2c_sample(m, 3, 40, 1.0, 8));
  for (const auto& s : a) {
    EXPECT_LE(s.size(), 40u);
    for (int id : s) EXPECT_NE(id, 1);
  }
}

struct Malformed {
  const char* what;
  std::vector<int32_t> header;
  int64_t floats;  // -1: the floats the header implies
  int extra_bytes;
  const char* field;
};

TEST(Llama2c, MalformedFilesNameTheField) {
  TempDir tmp;
  const int64_t good = cfg_of(kSmall).file_floats();
  auto with = [&](int i, int32_t v) {
    auto h = kSmall;
    h[static_cast<std::size_t>(i)] = v;
    return h;
  };
  const std::vector<Malformed> cases = {
      {"short header", {16, 24, 2}, 0, 0, "'header'"},
      {"truncated weights", kSmall, good - 5, 0, "'file size'"},
      {"one float too many", kSmall, good + 1, 0, "'file size'"},
      {"ragged size", kSmall, good, 2, "'file size'"},
      {"header only", kSmall, 0, 0, "'dim'"},  // 0 floats: every field is larger than the file holds
      {"zero dim", with(0, 0), good, 0, "'dim'"},
      {"negative hidden_dim", with(1, -24), good, 0, "'hidden_dim'"},
      {"zero n_layers", with(2, 0), good, 0, "'n_layers'"},
      {"negative n_heads", with(3, -4), good, 0, "'n_heads'"},
      {"zero n_kv_heads", with(4, 0), good, 0, "'n_kv_heads'"},
      {"zero vocab_size", with(5, 0), good, 0, "'vocab_size'"},
      {"zero seq_len", with(6, 0), good, 0, "'seq_len'"},
      {"n_heads not dividing dim", with(3, 3), good, 0, "'n_heads'"},
      {"odd head size", with(3, 16), good, 0, "'n_heads'"},
      {"n_kv_heads not dividing n_heads", with(4, 3), good, 0, "'n_kv_heads'"},
      {"n_kv_heads above n_heads", with(4, 8), good, 0, "'n_kv_heads'"},
      {"huge dim", with(0, 1 << 30), good, 0, "'dim'"},
      {"huge n_layers", with(2, 1000000000), good, 0, "'n_layers'"},
      {"huge hidden_dim", with(1, 2147483647), good, 0, "'hidden_dim'"},
      {"huge vocab", with(5, -2147483647), good, 0, "'vocab_size'"},
      {"huge seq_len", with(6, 2147483647), good, 0, "'seq_len'"},
      {"plausible fields, wrong total", with(1, 40), good, 0, "'file size'"},
      {"unshared classifier missing", with(5, -11), good, 0, "'file size'"},
  };
  for (const auto& mc : cases) {
    SCOPED_TRACE(mc.what);
    const std::string p = tmp.file("bad.bin");
    write_bin(p, mc.header, mc.floats < 0 ? good : mc.floats, mc.extra_bytes);
    expect_input_error([&] { Llama2cModel::load(p); }, {p, mc.field});
  }
  expect_input_error([&] { Llama2cModel::load(tmp.file("missing.bin")); }, {"missing.bin", "cannot stat"});
  // Non-finite weights are named too.
  const std::string p = tmp.file("nan.bin");
  write_bin(p, kSmall, good);
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(28 + 4 * (16 * 11 + 2 * 16 + 3));  // inside wq of layer 0
    const float nan = std::nanf("");
    f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  expect_input_error([&] { Llama2cModel::load(p); }, {p, "'wq'"});
}

TEST(Llama2c, HostileHeaderFailsFastWithBoundedMemory) {
  TempDir tmp;
  // Plausible-looking header whose sizes would ask for ~10^9 layers and 2^30-wide rows (terabytes),
  // on a file of a few KB: rejected from the header and the file size alone.
  const std::string p = tmp.file("hostile.bin");
  write_bin(p, {1 << 30, 1 << 30, 1000000000, 8, 4, 512, 512}, 1000);
  // In a forked child whose peak RSS growth is measured (tests/testing/bounded.h).
  testing::expect_fails_bounded([&] { Llama2cModel::load(p); }, {p, "'dim'"}, 16);
}

// Rolling-window perplexity (worker/llama2c_eval.h) against direct computations: a document within
// one window is scored by one forward of [BOS] + doc; with windows of 1 token each token is
// predicted from the previous one alone (at position 0), the first from BOS.
TEST(Llama2c, PerplexityRollingWindows) {
  TempDir tmp;
  const std::string p = tmp.file("small.bin");
  write_bin(p, kSmall, cfg_of(kSmall).file_floats());
  const auto m = Llama2cModel::load(p);
  const std::vector<int> doc = {5, 3, 10, 0, 7, 2, 4, 4};
  auto logp_at = [&](const std::vector<int64_t>& input) {
    auto ids = torch::tensor(input, torch::kLong).view({1, static_cast<int64_t>(input.size())});
    return torch::log_softmax(m.logits(ids, torch::kFloat64)[0], -1);
  };
  std::vector<int64_t> full = {1};
  full.insert(full.end(), doc.begin(), doc.end() - 1);
  const auto lp = logp_at(full);
  double direct = 0;
  for (std::size_t i = 0; i < doc.size(); ++i) direct += lp[static_cast<int64_t>(i)][doc[i]].item<double>();
  const auto r = llama2c_perplexity(m, {doc}, 8, torch::kFloat64);
  EXPECT_EQ(r.tokens, 8);
  EXPECT_EQ(r.windows, 1);
  EXPECT_NEAR(r.nll, -direct, 1e-9);
  EXPECT_NEAR(r.perplexity, std::exp(-direct / 8), 1e-9);
  double bigram = 0;
  for (std::size_t i = 0; i < doc.size(); ++i)
    bigram += logp_at({i == 0 ? 1 : doc[i - 1]})[0][doc[i]].item<double>();
  const auto r1 = llama2c_perplexity(m, {doc, {}}, 1, torch::kFloat64);  // the empty document is skipped
  EXPECT_EQ(r1.windows, 8);
  EXPECT_NEAR(r1.nll, -bigram, 1e-9);
  expect_input_error([&] { llama2c_perplexity(m, {doc}, 0); }, {"window"});
  expect_input_error([&] { llama2c_perplexity(m, {doc}, 10); }, {"seq_len = 9"});
}

}  // namespace
}  // namespace rankprune
