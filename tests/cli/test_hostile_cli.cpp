// Hostile sizes through the real binary (issue 17): the new user's experience. `rankprune info` on
// a checkpoint whose config.json claims 10^9 layers must fail in well under a second, naming the
// field, without growing (it used to reach 10 GiB in 60 s); a sweep --config file with sizes out
// of range must be refused naming the file. Peak RSS is the child's own (wait4).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

struct Measured {
  int code = -1;
  std::string out;
  double seconds = 0;
  long max_rss_mb = 0;
};

Measured run_measured(const std::vector<std::string>& args, const std::string& log, unsigned kill_after_s = 30) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> argv = args;
  argv.insert(argv.begin(), RANKPRUNE_BINARY);
  SpawnOptions opts;
  opts.kill_after_s = kill_after_s;  // a reader that believes the size dies here
  rusage ru{};
  Measured m;
  m.code = wait_process(spawn_process(argv, log, opts), &ru);
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.max_rss_mb = ru.ru_maxrss / 1024;
  m.out = read_file(log);
  return m;
}

class HostileCli : public CliTest {
 protected:
  // What the binary needs just to start: LibTorch alone is ~170 MB resident.
  long baseline_mb() {
    const Measured m = run_measured({"info", "--model", model_}, tmp_.file("base.log"));
    EXPECT_EQ(m.code, 0) << m.out;
    return m.max_rss_mb;
  }
};

TEST_F(HostileCli, InfoOnABillionLayerConfig) {
  const long base = baseline_mb();
  const std::string cfg = path_join(model_, "config.json");
  auto j = nlohmann::json::parse(read_file(cfg));
  j["num_hidden_layers"] = 1000000000;
  write_file_atomic(cfg, j.dump(2));
  const Measured m = run_measured({"info", "--model", model_}, tmp_.file("info.log"));
  EXPECT_EQ(m.code, 1) << m.out;
  EXPECT_NE(m.out.find("num_hidden_layers"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("1000000000"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("config.json"), std::string::npos) << m.out;
  // Startup is most of it; the refusal itself takes milliseconds and no memory.
  EXPECT_LT(m.seconds, 30.0);  // a hang guard (LibTorch's start-up is most of it)
  EXPECT_LE(m.max_rss_mb, base + 32) << "baseline " << base << " MB";
}

TEST_F(HostileCli, SweepConfigFileSizes) {
  struct Case {
    const char* line;
    int code;
    const char* needle;
  };
  const Case cases[] = {
      {"sequences = 99999999999999999999", 1, "sweep.ini"},  // beyond int64: refused naming the file
      {"seq-len = -4611686018427387904", 2, "--seq-len"},
      {"sequences = -1", 2, "--sequences"},
      {"batch-size = 0", 2, "--batch-size"},
      {"lease-seconds = -1e308", 2, "--lease-seconds"},
  };
  const std::string ini = tmp_.file("sweep.ini");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.line);
    write_file_atomic(ini, std::string("methods = drrqr\ntasks = piqa\ntokenizer = bytes\ndata = ") + ini + "\n" +
                               c.line + "\n");
    const Measured m =
        run_measured({"sweep", "--model", model_, "--config", ini, "--db", tmp_.file("h.db")}, tmp_.file("sweep.log"));
    EXPECT_EQ(m.code, c.code) << m.out;
    EXPECT_NE(m.out.find(c.needle), std::string::npos) << m.out;
    EXPECT_LT(m.seconds, 30.0);  // a hang guard (LibTorch's start-up is most of it)
  }
}

}  // namespace
}  // namespace rankprune::testing
