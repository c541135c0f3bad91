// `rankprune rwkv7 info|logits|prune|eval` on the published RWKV-7 834K checkpoint: exit codes
// (0 ok, 1 bad file, 2 bad option), a pruned file that loads back, no output left on failure.
#include <gtest/gtest.h>

#include "common/fs.h"
#include "tests/testing/testing.h"

namespace rankprune::testing {
namespace {

std::string rwkv_model() { return path_join(data_dir(), "models/rwkv7-834K/tiny-rwkv-7v0-834K-FP32.bin"); }

bool has(const CommandResult& r, const std::string& s) { return r.out.find(s) != std::string::npos; }

TEST(Rwkv7Cli, InfoAndLogits) {
  auto r = run_rankprune({"rwkv7", "info", "--model", rwkv_model()});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(has(r, "829888")) << r.out;
  TempDir tmp;
  r = run_rankprune({"rwkv7", "logits", "--model", rwkv_model(), "--text", "\"in", "--out", tmp.file("l.npy")});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(file_exists(tmp.file("l.npy")));
}

TEST(Rwkv7Cli, PruneWritesALoadableFileAndEvalRuns) {
  TempDir tmp;
  auto r = run_rankprune({"rwkv7", "prune", "--model", rwkv_model(), "--method", "drrqr", "--ratio", "0.5",
                          "--calib-sequences", "2", "--seq-len", "128", "--out", tmp.file("p.bin"),
                          "--selection-out", tmp.file("sel.json")});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run_rankprune({"rwkv7", "info", "--model", tmp.file("p.bin"), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(has(r, "\"head_k\": 32")) << r.out;
  EXPECT_TRUE(has(r, "\"key_pruned\": true")) << r.out;
  r = run_rankprune({"rwkv7", "eval", "--model", tmp.file("p.bin"), "--max-bytes", "1000", "--max-length", "128",
                     "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(has(r, "bits_per_byte")) << r.out;
}

TEST(Rwkv7Cli, BadOptionsAndFiles) {
  TempDir tmp;
  auto r = run_rankprune({"rwkv7"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run_rankprune({"rwkv7", "frobnicate", "--model", rwkv_model()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run_rankprune({"rwkv7", "prune", "--model", rwkv_model(), "--method", "wanda", "--out", tmp.file("x.bin")});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run_rankprune({"rwkv7", "prune", "--model", rwkv_model(), "--ratio", "1", "--out", tmp.file("x.bin")});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run_rankprune({"rwkv7", "eval", "--model", rwkv_model(), "--max-length", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run_rankprune({"rwkv7", "logits", "--model", rwkv_model(), "--ids", "3,300"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_FALSE(file_exists(tmp.file("x.bin")));
  // A truncated model file: exit 1, the message names it.
  write_file_atomic(tmp.file("t.bin"), read_file(rwkv_model()).substr(0, 100000));
  r = run_rankprune({"rwkv7", "info", "--model", tmp.file("t.bin")});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(has(r, tmp.file("t.bin"))) << r.out;
  r = run_rankprune({"rwkv7", "prune", "--model", tmp.file("t.bin"), "--out", tmp.file("x.bin")});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_FALSE(file_exists(tmp.file("x.bin")));
  r = run_rankprune({"rwkv7", "info", "--model", tmp.file("absent.bin")});
  EXPECT_EQ(r.exit_code, 1) << r.out;
}

}  // namespace
}  // namespace rankprune::testing
