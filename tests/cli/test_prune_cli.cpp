// `rankprune calibrate` and `rankprune prune` end to end: outputs, determinism, ratio 0, and bad
// input that must leave no output directory.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/fs.h"
#include "model/linear_lm.h"
#include "prune/select.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

class PruneCli : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    text_ = tmp_.file("calib.txt");
    std::string t;
    for (int i = 0; i < 400; ++i) t += "the state of a linear attention layer is low rank " + std::to_string(i) + "\n";
    write_file_atomic(text_, t);
    stats_ = tmp_.file("stats.safetensors");
    auto r = run_rankprune({"calibrate", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                            "--sequences", "8", "--seed", "1", "--out", stats_});
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  std::string text_, stats_;
};

TEST_F(PruneCli, WritesLoadableCheckpointAndSelection) {
  auto out = tmp_.file("p");
  auto r = run_rankprune({"prune", "--model", model_, "--stats", stats_, "--method", "drrqr", "--ratio", "0.5", "--seed", "1",
                          "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto sel = Selection::from_json(nlohmann::json::parse(read_file(path_join(out, "selection.json"))), "selection.json");
  EXPECT_EQ(sel.method, "drrqr");
  EXPECT_EQ(sel.head_k_dim, 4);
  auto m = LinearLM::load(out);
  EXPECT_EQ(m.config().head_k_dim, 4);
  EXPECT_EQ(run_rankprune({"info", "--model", out}).exit_code, 0);
  // Same inputs, same selection (calibrating inline from --data with the same seed too).
  auto out2 = tmp_.file("p2");
  r = run_rankprune({"prune", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                     "--sequences", "8", "--seed", "1", "--method", "drrqr", "--ratio", "0.5", "--out", out2});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(read_file(path_join(out, "selection.json")), read_file(path_join(out2, "selection.json")));
  EXPECT_EQ(read_file(path_join(out, "model.safetensors")), read_file(path_join(out2, "model.safetensors")));
}

TEST_F(PruneCli, TaylorFromCalibrateTaylorOrInlineDataGivesOneSelection) {
  // calibrate --taylor adds the gradient sums; prune --method taylor uses them, or calibrates with
  // them from --data (the same sequences: the same selection, byte for byte).
  auto tstats = tmp_.file("taylor.safetensors");
  auto r = run_rankprune({"calibrate", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                          "--sequences", "8", "--seed", "1", "--taylor", "--out", tstats});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("with taylor gradients"), std::string::npos) << r.out;
  auto out = tmp_.file("t1"), out2 = tmp_.file("t2");
  r = run_rankprune({"prune", "--model", model_, "--stats", tstats, "--method", "taylor", "--ratio", "0.5", "--seed", "1",
                     "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run_rankprune({"prune", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                     "--sequences", "8", "--seed", "1", "--method", "taylor", "--ratio", "0.5", "--out", out2});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto sel = read_file(path_join(out, "selection.json"));
  EXPECT_NE(sel.find("\"method\": \"taylor\""), std::string::npos) << sel;
  EXPECT_EQ(sel, read_file(path_join(out2, "selection.json")));
  EXPECT_EQ(LinearLM::load(out).config().head_k_dim, 4);
  // Statistics without the gradients (the fixture's, as every file from before taylor): refused,
  // saying how to recompute, and nothing is written.
  auto never = tmp_.file("t3");
  r = run_rankprune({"prune", "--model", model_, "--stats", stats_, "--method", "taylor", "--ratio", "0.5", "--out", never});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("calibrate --taylor"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(never));
}

TEST_F(PruneCli, RatioZeroReproducesInputBitForBit) {
  auto out = tmp_.file("p0");
  ASSERT_EQ(run_rankprune({"prune", "--model", model_, "--method", "l1", "--ratio", "0", "--out", out}).exit_code, 0);
  EXPECT_EQ(read_file(path_join(out, "model.safetensors")), read_file(path_join(model_, "model.safetensors")));
  EXPECT_EQ(read_file(path_join(out, "config.json")), read_file(path_join(model_, "config.json")));
}

TEST_F(PruneCli, BadInputLeavesNoOutput) {
  auto out = tmp_.file("never");
  auto expect_error = [&](std::vector<std::string> args, int code, const std::string& needle) {
    auto r = run_rankprune(args);
    EXPECT_EQ(r.exit_code, code) << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << "want '" << needle << "' in: " << r.out;
    EXPECT_FALSE(file_exists(out)) << r.out;
    int entries = 0;  // no temporary directories left behind either
    for (auto& e : fs::directory_iterator(tmp_.path())) entries += e.path().filename().string().rfind("never", 0) == 0;
    EXPECT_EQ(entries, 0);
  };
  std::vector<std::string> base = {"prune", "--model", model_, "--out", out};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_error(with({"--stats", stats_, "--method", "drrqr", "--ratio", "1.0"}), 2, "--ratio");
  expect_error(with({"--stats", stats_, "--method", "drrqr", "--ratio", "-0.25"}), 2, "--ratio");
  expect_error(with({"--stats", stats_, "--method", "magnitude", "--ratio", "0.5"}), 2, "magnitude");
  // Statistics of another model (same shape, other weights).
  auto other = tmp_.file("other");
  ASSERT_EQ(run_rankprune({"init", "--arch", "delta_net", "--out", other, "--hidden-size", "32", "--num-layers", "2",
                           "--num-heads", "2", "--head-k-dim", "8", "--head-v-dim", "8", "--vocab-size", "300",
                           "--dtype", "f32", "--seed", "99"})
                .exit_code,
            0);
  auto other_stats = tmp_.file("other.safetensors");
  ASSERT_EQ(run_rankprune({"calibrate", "--model", other, "--data", text_, "--tokenizer", "bytes", "--seq-len", "64",
                           "--sequences", "2", "--out", other_stats})
                .exit_code,
            0);
  expect_error(with({"--stats", other_stats, "--method", "drrqr", "--ratio", "0.5"}), 1, "another model");
  // Empty and too-short data.
  auto empty = tmp_.file("empty.txt"), tiny = tmp_.file("tiny.txt");
  write_file_atomic(empty, "");
  write_file_atomic(tiny, "abc");
  expect_error(with({"--data", empty, "--tokenizer", "bytes", "--seq-len", "64", "--sequences", "2", "--method", "drrqr",
                     "--ratio", "0.5"}),
               1, "too short");
  expect_error(with({"--data", tiny, "--tokenizer", "bytes", "--seq-len", "64", "--sequences", "2", "--method", "wanda",
                     "--ratio", "0.5"}),
               1, "too short");
  expect_error(with({"--method", "drrqr", "--ratio", "0.5"}), 2, "--data");
}

}  // namespace
}  // namespace rankprune::testing
