// The regression corpus of the fuzz targets (docs/reliability.md): every input that ever made a
// target crash, hang, leak or report a finding lives in tests/fuzz_regress/<target>/, and is
// replayed here through the target's own code (fuzz/*.cpp compiled with RP_FUZZ_REPLAY, where a
// finding is thrown instead of aborting). Under the sanitizer build (scripts/sanitize.sh) the
// replay also catches memory and undefined-behaviour errors. A slow input (the fuzzers' limit is
// 1 s) is guarded against loosely: a hang or a quadratic loop fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fs.h"
#include "fuzz/fuzz_common.h"
#include "rp_fuzz_targets.h"

#define RP_REPLAY_TARGET(name)                                             \
  extern "C" int rp_replay_##name##_init(int*, char***);                   \
  extern "C" int rp_replay_##name##_one(const uint8_t*, size_t);
RP_FUZZ_TARGETS(RP_REPLAY_TARGET)
#undef RP_REPLAY_TARGET

namespace rankprune {
namespace {

namespace fs = std::filesystem;

struct Target {
  const char* name;
  int (*init)(int*, char***);
  int (*one)(const uint8_t*, size_t);
};

const std::vector<Target>& targets() {
#define RP_REPLAY_TARGET(name) {#name, rp_replay_##name##_init, rp_replay_##name##_one},
  static const std::vector<Target> t = {RP_FUZZ_TARGETS(RP_REPLAY_TARGET)};
#undef RP_REPLAY_TARGET
  return t;
}

std::string corpus_dir() { return std::string(RANKPRUNE_SOURCE_DIR) + "/tests/fuzz_regress"; }

// The targets that have a corpus folder (a test per target that can fail; tests/CMakeLists.txt
// compiles in only those).
std::vector<Target> targets_with_inputs() {
  std::vector<Target> out;
  for (const auto& t : targets())
    if (fs::is_directory(fs::path(corpus_dir()) / t.name)) out.push_back(t);
  return out;
}

class FuzzRegress : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzRegress, ReplaysClean) {
  const Target& t = GetParam();
  const fs::path dir = fs::path(corpus_dir()) / t.name;
  std::vector<fs::path> inputs;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) inputs.push_back(e.path());
  std::sort(inputs.begin(), inputs.end());
  ASSERT_FALSE(inputs.empty()) << "tests/fuzz_regress/" << t.name << " is empty";
  t.init(nullptr, nullptr);
  for (const auto& p : inputs) {
    SCOPED_TRACE(p.string());
    const std::string bytes = read_file(p.string());
    const auto t0 = std::chrono::steady_clock::now();
    try {
      t.one(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const fuzz::Finding& f) {
      ADD_FAILURE() << t.name << " on " << p.filename() << ": " << f.what;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The fuzzers' own limit is 1 s per input (-timeout=1); here a generous guard against a
    // regression to a hang or a quadratic loop, which a loaded CI machine cannot trip.
    EXPECT_LT(s, 10.0) << p.filename() << " took " << s << " s";
  }
}

TEST(FuzzRegress, EveryCorpusFolderIsATarget) {
  // A folder named after no target would never be replayed.
  for (const auto& e : fs::directory_iterator(corpus_dir())) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(std::any_of(targets().begin(), targets().end(), [&](const Target& t) { return name == t.name; }))
        << "tests/fuzz_regress/" << name << " names no fuzz target compiled in (fuzz/targets.cmake; re-run cmake)";
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzRegress, ::testing::ValuesIn(targets_with_inputs()),
                         [](const ::testing::TestParamInfo<Target>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace rankprune
