// `rankprune eval` end to end: the results JSON (lm-eval's shape) on a tiny model, and bad input
// (unknown task, --limit 0, missing data, a malformed task row) that must leave no output file.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

#include "common/fs.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

class EvalCli : public CliTest {
 protected:
  std::vector<std::string> eval_args(const std::string& tasks, const std::string& out,
                                     std::vector<std::string> extra = {}) const {
    std::vector<std::string> a = {"eval", "--model", model_, "--tokenizer", "bytes", "--tasks", tasks, "--out", out, "--threads", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  void expect_error(const std::vector<std::string>& args, const std::string& out, int code,
                    std::initializer_list<std::string> needles) {
    const auto r = run_rankprune(args);
    EXPECT_EQ(r.exit_code, code) << r.out;
    for (const auto& n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << "want '" << n << "' in: " << r.out;
    EXPECT_FALSE(file_exists(out)) << r.out;
  }
};

TEST_F(EvalCli, WritesLmEvalShapedResults) {
  const auto out = tmp_.file("results.json");
  auto r = run_rankprune(eval_args("piqa,arc_easy,winogrande,lambada_openai", out,
                                   {"--limit", "3", "--add-bos-token", "false", "--batch-size", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(read_file(out));
  for (const std::string t : {"piqa", "arc_easy", "winogrande", "lambada_openai"}) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(j["results"].contains(t)) << j.dump(2);
    const auto& res = j["results"][t];
    EXPECT_EQ(res["alias"], t);
    ASSERT_TRUE(res["acc,none"].is_number());
    const double acc = res["acc,none"].get<double>();
    // Three items: the accuracy is a multiple of 1/3, its sample stderr a number.
    EXPECT_NEAR(acc * 3, std::round(acc * 3), 1e-9);
    EXPECT_TRUE(res["acc_stderr,none"].is_number());
    EXPECT_EQ(j["n-samples"][t]["effective"], 3);
    EXPECT_GT(j["n-samples"][t]["original"].get<int>(), 3);
    EXPECT_NE(r.out.find(t), std::string::npos);  // the printed table
  }
  EXPECT_EQ(j["n-samples"]["piqa"]["original"], 1838);
  EXPECT_TRUE(j["results"]["piqa"]["acc_norm,none"].is_number());
  EXPECT_TRUE(j["results"]["lambada_openai"]["perplexity,none"].is_number());
  EXPECT_EQ(j["config"]["add_bos_token"], false);
  EXPECT_EQ(j["config"]["limit"], 3);
  EXPECT_EQ(j["config"]["batch_size"], 2);
  EXPECT_EQ(j["config"]["reuse_state"], true);
}

TEST_F(EvalCli, WikitextAndDefaults) {
  const auto out = tmp_.file("wiki.json");
  auto r = run_rankprune(eval_args("wikitext", out, {"--limit", "1", "--max-length", "512", "--seq-len", "256"}));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(read_file(out));
  const auto& w = j["results"]["wikitext"];
  for (const std::string m : {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"}) {
    ASSERT_TRUE(w[m + ",none"].is_number()) << m;
    EXPECT_EQ(w[m + "_stderr,none"], "N/A") << m;
  }
  EXPECT_GT(w["word_perplexity,none"].get<double>(), 1.0);
  EXPECT_EQ(j["config"]["add_bos_token"], true);
  EXPECT_EQ(j["config"]["max_length"], 512);
  EXPECT_EQ(j["n-samples"]["wikitext"]["effective"], 1);
  EXPECT_EQ(j["n-samples"]["wikitext"]["original"], 62);
  EXPECT_GT(j["task_details"]["wikitext"]["rolling_windows"].get<int>(), 1);
}

TEST_F(EvalCli, BadInputLeavesNoOutput) {
  const auto out = tmp_.file("never.json");
  expect_error(eval_args("piqa,bogus_task", out, {"--limit", "3"}), out, 2, {"bogus_task"});
  expect_error(eval_args("piqa", out, {"--limit", "0"}), out, 2, {"--limit"});
  const auto missing_dir = tmp_.file("no_such_data");
  expect_error(eval_args("piqa", out, {"--limit", "3", "--data-dir", missing_dir}), out, 1, {missing_dir});
  // A data folder without the task's file.
  const auto empty_dir = tmp_.file("empty_data");
  fs::create_directories(empty_dir);
  expect_error(eval_args("arc_easy", out, {"--limit", "3", "--data-dir", empty_dir}), out, 1,
               {path_join(empty_dir, "tasks/llmfoundry/arc_easy.jsonl")});
  // The shipped layout with a broken row on line 3 of the ARC file.
  const auto broken = tmp_.file("broken_data");
  fs::create_directories(path_join(broken, "tasks/llmfoundry"));
  std::istringstream real(read_file(path_join(data_dir(), "tasks/llmfoundry/arc_easy.jsonl")));
  std::string l1, l2;
  std::getline(real, l1);
  std::getline(real, l2);
  const auto arc = path_join(broken, "tasks/llmfoundry/arc_easy.jsonl");
  write_file_atomic(arc, l1 + "\n" + l2 + "\n{\"query\": \"Question: q?\", \"choices\": [\"a\"\n" + l1 + "\n");
  expect_error(eval_args("arc_easy", out, {"--limit", "4", "--data-dir", broken}), out, 1, {arc, ":3:"});
  // n-samples.original counts the whole file, so a bad row past --limit is still reported.
  expect_error(eval_args("arc_easy", out, {"--limit", "2", "--data-dir", broken}), out, 1, {arc, ":3:"});
}

}  // namespace
}  // namespace rankprune::testing
