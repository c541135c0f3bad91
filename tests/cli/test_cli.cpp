// The rankprune command line end to end: help, usage errors, and init -> info -> logits ->
// generate, with logits checked against the library's own forward pass.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "common/fs.h"
#include "kernels/gpu.h"
#include "model/linear_lm.h"
#include "model/npy.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

TEST(Cli, HelpOnEverySubcommandShowsDefaults) {
  auto top = run_rankprune({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  for (const char* cmd : {"init", "info", "logits", "generate"}) {
    EXPECT_TRUE(contains(top.out, cmd)) << cmd;
    auto r = run_rankprune({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << r.out;
    EXPECT_TRUE(contains(r.out, "usage: rankprune " + std::string(cmd))) << r.out;
  }
  EXPECT_TRUE(contains(run_rankprune({"init", "--help"}).out, "--hidden-size arg (=256)"));
  EXPECT_TRUE(contains(run_rankprune({"logits", "--help"}).out, "--chunk-size arg (=64)"));
}

TEST(Cli, UsageErrorsExitTwoAndNameTheProblem) {
  EXPECT_EQ(run_rankprune({}).exit_code, 2);
  auto r = run_rankprune({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.out, "unknown command 'frobnicate'")) << r.out;
  r = run_rankprune({"info"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.out, "--model")) << r.out;
  r = run_rankprune({"init", "--arch", "mamba", "--out", "/tmp/never-created-rankprune"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.out, "--arch")) << r.out;
  EXPECT_FALSE(file_exists("/tmp/never-created-rankprune"));
}

TEST_F(CliTest, InfoReportsSizesAndState) {
  auto r = run_rankprune({"info", "--model", model_, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["architecture"], "delta_net");
  EXPECT_EQ(j["head_k_dim"], 8);
  EXPECT_EQ(j["state_bytes_per_layer_bf16"], 2 * 8 * 8 * 2);
  EXPECT_EQ(j["parameters"], ModelConfig::load(model_).num_parameters());
  auto text = run_rankprune({"info", "--model", model_});
  EXPECT_TRUE(contains(text.out, "state / layer  [2, 8, 8] = 256 bytes at bf16")) << text.out;
}

TEST_F(CliTest, LogitsEqualLibraryForwardForEveryImpl) {
  auto m = LinearLM::load(model_);
  std::vector<int64_t> ids;
  for (int i = 0; i < 70; ++i) ids.push_back((i * 37 + 11) % 300);
  std::string arg;
  for (auto id : ids) arg += (arg.empty() ? "" : ",") + std::to_string(id);
  auto expected = m.forward(torch::tensor(ids).unsqueeze(0)).squeeze(0);
  for (const char* impl : {"auto", "recurrent", "chunked"}) {
    auto out = tmp_.file(std::string("l_") + impl + ".npy");
    auto r = run_rankprune({"logits", "--model", model_, "--ids", arg, "--out", out, "--impl", impl, "--threads", "1"});
    ASSERT_EQ(r.exit_code, 0) << r.out;
    auto got = read_npy(out);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{70, 300}));
    EXPECT_EQ(got.scalar_type(), torch::kFloat32);
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4 * expected.abs().max().item<double>()) << impl;
  }
}

TEST_F(CliTest, LogitsRejectsBadIds) {
  auto out = tmp_.file("x.npy");
  auto r = run_rankprune({"logits", "--model", model_, "--ids", "1,a,3", "--out", out});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.out, "--ids")) << r.out;
  r = run_rankprune({"logits", "--model", model_, "--ids", "1,300", "--out", out});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.out, "300")) << r.out;
  EXPECT_FALSE(file_exists(out));
}

// --device: a CPU-only LibTorch build refuses cuda for every model command with "built without
// CUDA" before reading anything (exit 2, no output); an unknown device is a usage error too.
TEST_F(CliTest, DeviceCudaIsRefusedByACpuOnlyBuild) {
  if (torch_has_cuda()) GTEST_SKIP() << "a CUDA LibTorch build: " << gpu_summary();
  const auto out = tmp_.file("x.npy");
  auto r = run_rankprune({"logits", "--model", model_, "--ids", "1,2", "--out", out, "--device", "cuda"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_TRUE(contains(r.out, "--device cuda")) << r.out;
  EXPECT_TRUE(contains(r.out, "built without CUDA")) << r.out;
  EXPECT_TRUE(contains(r.out, "docs/gpu.md")) << r.out;
  EXPECT_FALSE(file_exists(out));
  // Refused before the model is read: a model folder that does not exist is not mentioned.
  r = run_rankprune({"calibrate", "--model", "/nonexistent-model", "--data", "/nonexistent.npy", "--out", out,
                     "--device", "cuda"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_TRUE(contains(r.out, "built without CUDA")) << r.out;
  EXPECT_FALSE(contains(r.out, "nonexistent-model")) << r.out;
  r = run_rankprune({"logits", "--model", model_, "--ids", "1,2", "--out", out, "--device", "tpu"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_TRUE(contains(r.out, "--device: expected cpu or cuda, got 'tpu'")) << r.out;
  // --device cpu is the default and changes nothing.
  r = run_rankprune({"logits", "--model", model_, "--ids", "1,2", "--out", out, "--device", "cpu"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(file_exists(out));
}

TEST_F(CliTest, GenerateIsGreedyAndDeterministic) {
  auto a = run_rankprune({"generate", "--model", model_, "--tokenizer", "bytes", "--prompt", "ab", "--max-new", "5"});
  auto b = run_rankprune({"generate", "--model", model_, "--tokenizer", "bytes", "--prompt", "ab", "--max-new", "5"});
  ASSERT_EQ(a.exit_code, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  // The same continuation by hand: argmax of the library's logits, one token at a time.
  auto m = LinearLM::load(model_);
  std::vector<int64_t> ids = {'a', 'b'};
  for (int i = 0; i < 5; ++i)
    ids.push_back(m.forward(torch::tensor(ids).unsqueeze(0))[0][-1].narrow(0, 0, 256).argmax().item<int64_t>());
  std::string expect(ids.begin(), ids.end());
  EXPECT_EQ(a.out, expect + "\n");
}

TEST_F(CliTest, InitRefusesNonEmptyOutputAndLeavesItAlone) {
  auto before = read_file(path_join(model_, "config.json"));
  auto r = run_rankprune({"init", "--arch", "delta_net", "--out", model_});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.out, "not empty")) << r.out;
  EXPECT_EQ(read_file(path_join(model_, "config.json")), before);
  // No temporary directories left beside it.
  int entries = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp_.path())) (void)e, ++entries;
  EXPECT_EQ(entries, 1);
}

TEST_F(CliTest, InitWritesGatedDeltaNetWithGva) {
  auto dir = tmp_.file("gdn");
  auto r = run_rankprune({"init", "--arch", "gated_deltanet", "--out", dir, "--hidden-size", "32", "--num-heads", "2",
                          "--num-v-heads", "4", "--head-k-dim", "8", "--head-v-dim", "12", "--vocab-size", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto c = ModelConfig::load(dir);
  EXPECT_EQ(c.n_v_heads, 4);
  EXPECT_EQ(c.head_v_dim, 12);
  EXPECT_EQ(c.head_k_dim, 8);
  EXPECT_EQ(run_rankprune({"info", "--model", dir}).exit_code, 0);
}

}  // namespace
}  // namespace rankprune::testing
