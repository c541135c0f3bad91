// `rankprune llama2c info|generate|ppl|compare` end to end: the published greedy output through
// the CLI, compression options, and exit codes (usage 2, bad files 1).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "tests/testing/testing.h"

namespace rankprune::testing {
namespace {

std::string stories() { return path_join(data_dir(), "models/stories260K/stories260K.bin"); }

bool has(const CommandResult& r, const std::string& s) { return r.out.find(s) != std::string::npos; }

TEST(Llama2cCli, GenerateGreedyPrintsThePublishedOutput) {
  auto r = run_rankprune({"llama2c", "generate", "--model", stories(), "--steps", "200"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string want = read_file(path_join(data_dir(), "models/stories260K/expected_greedy_200steps.txt"));
  EXPECT_EQ(r.out, want + "\n");
}

TEST(Llama2cCli, InfoAndCompressionCounts) {
  auto r = run_rankprune({"llama2c", "info", "--model", stories(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["n_kv_heads"].get<int>(), 4);
  EXPECT_EQ(j["attention_parameters"].get<int64_t>(), 5 * (2 * 64 * 64 + 2 * 64 * 32));
  EXPECT_EQ(j["parameters"].get<int64_t>(), 260032);
  r = run_rankprune({"llama2c", "info", "--model", stories(), "--json", "--compress", "merge", "--groups", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["attention_parameters"].get<int64_t>(), 5 * (2 * 64 * 64 + 2 * 64 * 16));
  r = run_rankprune({"llama2c", "info", "--model", stories(), "--json", "--compress", "tucker", "--fraction", "0.5"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_LE(nlohmann::json::parse(r.out)["attention_parameters"].get<int64_t>(), 5 * 12288 / 2);
  r = run_rankprune({"llama2c", "ppl", "--model", stories(), "--stories", "2", "--story-tokens", "32", "--window",
                     "16"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(has(r, "stories: perplexity")) << r.out;
}

TEST(Llama2cCli, UsageAndInputErrors) {
  const auto m = stories();
  struct Case {
    std::vector<std::string> args;
    int code;
    const char* needle;
  };
  TempDir tmp;
  const std::string bad = tmp.file("bad.bin");
  {
    std::ofstream f(bad, std::ios::binary);
    const int32_t h[7] = {64, 172, 5, 7, 4, 512, 512};  // 7 heads do not divide dim 64
    f.write(reinterpret_cast<const char*>(h), sizeof h);
    f << std::string(4000, '\0');  // 1000 floats: every field fits, the divisibility check fires
  }
  const std::vector<Case> cases = {
      {{"llama2c"}, 2, "give an action"},
      {{"llama2c", "bogus", "--model", m}, 2, "unknown action 'bogus'"},
      {{"llama2c", "info"}, 2, "--model"},
      {{"llama2c", "info", "--model", m, "--compress", "cp"}, 2, "--compress"},
      {{"llama2c", "info", "--model", m, "--compress", "merge", "--groups", "3"}, 2, "--groups"},
      {{"llama2c", "info", "--model", m, "--compress", "svd", "--fraction", "0"}, 2, "--fraction"},
      {{"llama2c", "info", "--model", m, "--dtype", "bf16"}, 2, "--dtype"},
      {{"llama2c", "generate", "--model", m, "--steps", "0"}, 2, "--steps"},
      {{"llama2c", "ppl", "--model", m, "--eval", "lambada"}, 2, "--eval"},
      {{"llama2c", "ppl", "--model", m, "--window", "9999"}, 2, "--window"},
      {{"llama2c", "info", "--model", m, "--no-such-option"}, 2, "no-such-option"},
      {{"llama2c", "info", "--model", tmp.file("missing.bin")}, 1, "missing.bin"},
      {{"llama2c", "info", "--model", bad}, 1, "'n_heads'"},
      {{"llama2c", "generate", "--model", m, "--tokenizer", tmp.file("no.model")}, 1, "no.model"},
  };
  for (const auto& c : cases) {
    auto r = run_rankprune(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args.back() << ": " << r.out;
    EXPECT_TRUE(has(r, c.needle)) << "'" << c.needle << "' not in: " << r.out;
  }
}

}  // namespace
}  // namespace rankprune::testing
