// The real thing under mpirun: the same sweep on 1, 2 and 3 processes gives identical statistics
// files, selection.json files and metric bits; a 3-rank sweep with one rank SIGKILLed ends with a
// non-zero exit naming the rank, and a re-run completes with one result per (variant, task,
// metric), equal to the uninterrupted run. Label `mpi` (needs mpirun; as root it runs with
// --allow-run-as-root --oversubscribe).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <tuple>

#include "common/fs.h"
#include "storage/db.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

using Key = std::tuple<std::string, double, int64_t, std::string, std::string>;

std::map<Key, std::pair<uint64_t, uint64_t>> metric_bits(const std::string& db_path, std::size_t* rows) {
  auto db = storage::Database::open(db_path);
  std::map<Key, std::pair<uint64_t, uint64_t>> m;
  const auto rs = db.results();
  for (const auto& r : rs) {
    uint64_t v = 0, e = 0;
    std::memcpy(&v, &r.value, 8);
    if (r.stderr_value) std::memcpy(&e, &*r.stderr_value, 8);
    m[{r.method, r.ratio, r.seed, r.task, r.metric}] = {v, e};
  }
  *rows = rs.size();
  return m;
}

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> files_under(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "model.safetensors" && e.path().filename() != "config.json")
      out[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  return out;
}

int64_t done_jobs(const std::string& db_path) {
  if (!file_exists(db_path)) return 0;
  try {
    return static_cast<int64_t>(storage::Database::open(db_path).jobs({"done"}).size());
  } catch (const std::exception&) {
    return 0;
  }
}

// The rank processes mpirun `launcher` started: pid of the one with OMPI_COMM_WORLD_RANK == rank.
int rank_pid(int launcher, int rank) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid != launcher) continue;
    std::ifstream env(e.path() / "environ");
    std::string var;
    while (std::getline(env, var, '\0'))
      if (var == "OMPI_COMM_WORLD_RANK=" + std::to_string(rank)) return std::stoi(name);
  }
  return -1;
}

class MpiSweep : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    text_ = tmp_.file("calib.txt");
    std::string t;
    for (int i = 0; i < 300; ++i) t += "the state of a linear attention layer is low rank " + std::to_string(i) + "\n";
    write_file_atomic(text_, t);
  }
  std::vector<std::string> sweep(const std::string& db, int np, const std::string& save = "") const {
    std::vector<std::string> a;
    if (np > 0) a = {RANKPRUNE_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", std::to_string(np)};
    a.push_back(RANKPRUNE_BINARY);
    for (const auto& s : {"sweep", "--model", model_.c_str(), "--data", text_.c_str(), "--tokenizer", "bytes",
                          "--seq-len", "32", "--sequences", "9", "--batch-size", "2", "--methods", "drrqr,l1,pca,random",
                          "--ratios", "0.25,0.5,0.75", "--random-seeds", "0,1", "--tasks", "piqa,lambada_openai,arc_easy",
                          "--limit", "8", "--max-length", "256", "--data-dir"})
      a.push_back(s);
    a.push_back(data_dir());
    for (const auto& s : {"--threads", "1", "--db", db.c_str()}) a.push_back(s);
    if (!save.empty()) a.insert(a.end(), {"--save-pruned", save});
    return a;
  }
  int run(const std::vector<std::string>& argv, std::string* log_text = nullptr) {
    const std::string log = tmp_.file("run" + std::to_string(++runs_) + ".log");
    const int rc = wait_process(spawn_process(argv, log));
    if (log_text) *log_text = read_file(log);
    return rc;
  }
  std::string text_;
  int runs_ = 0;
};

constexpr std::size_t kJobs = 16 * 3;  // baseline + 3 x (drrqr, l1, pca) + 3 x 2 random seeds; 3 tasks

TEST_F(MpiSweep, OneTwoThreeProcessesGiveIdenticalFilesAndMetricBits) {
  std::map<int, std::map<Key, std::pair<uint64_t, uint64_t>>> metrics;
  std::map<int, std::map<std::string, std::string>> pruned, stats;
  for (int np : {0, 2, 3}) {  // 0: the plain binary, no launcher
    SCOPED_TRACE(np);
    const std::string db = tmp_.file("p" + std::to_string(np) + ".db");
    const std::string save = tmp_.file("pruned" + std::to_string(np));
    std::string log;
    ASSERT_EQ(run(sweep(db, np, save), &log), 0) << log;
    EXPECT_NE(log.find("on " + std::to_string(std::max(np, 1)) + " rank(s)"), std::string::npos) << log;
    std::size_t rows = 0;
    metrics[np] = metric_bits(db, &rows);
    EXPECT_EQ(rows, metrics[np].size()) << "one row per (variant, task, metric)";
    EXPECT_EQ(rows, kJobs * 2);
    pruned[np] = files_under(save);  // selection.json (+ pca_rotation.safetensors) per variant
    stats[np] = files_under(db + ".cache");
  }
  EXPECT_EQ(pruned[0].size(), 16u - 1u + 3u) << "15 selection.json and 3 pca rotations";
  EXPECT_EQ(stats[0].size(), 1u);
  for (int np : {2, 3}) {
    EXPECT_EQ(metrics[np], metrics[0]) << np << " processes: metric values and stderrs, bit for bit";
    EXPECT_EQ(pruned[np], pruned[0]) << np << " processes: every selection.json byte for byte";
    EXPECT_EQ(stats[np], stats[0]) << np << " processes: the statistics file byte for byte";
  }
}

TEST_F(MpiSweep, AKilledRankEndsTheRunAndAReRunCompletesIt) {
  const std::string ref = tmp_.file("ref.db"), db = tmp_.file("killed.db");
  ASSERT_EQ(run(sweep(ref, 0)), 0);
  std::size_t rows = 0;
  const auto expected = metric_bits(ref, &rows);

  const std::string log = tmp_.file("killed.log");
  const int launcher = spawn_process(sweep(db, 3), log);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (done_jobs(db) < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const int victim = rank_pid(launcher, 2);
  ASSERT_GT(victim, 0) << "rank 2's process not found";
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const int rc = wait_process(launcher);
  const std::string out = read_file(log);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("rank 2"), std::string::npos) << "the error names the lost rank:\n" << out;
  const int64_t before = done_jobs(db);
  ASSERT_LT(before, static_cast<int64_t>(kJobs)) << "the sweep finished before the kill";

  std::string again;
  ASSERT_EQ(run(sweep(db, 3), &again), 0) << again;
  std::size_t got_rows = 0;
  const auto got = metric_bits(db, &got_rows);
  EXPECT_EQ(got_rows, got.size()) << "a (variant, task, metric) has more than one row";
  EXPECT_EQ(got, expected) << "equal to the uninterrupted run, bit for bit";
  auto d = storage::Database::open(db);
  EXPECT_EQ(d.jobs({"done"}).size(), kJobs);
}

}  // namespace
}  // namespace rankprune::testing
