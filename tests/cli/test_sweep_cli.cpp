// `rankprune sweep`, `query` and `report` end to end: a sweep fills the database, a re-run is a
// no-op, a SIGKILLed sweep resumes to exactly the numbers of an uninterrupted one, options come
// from a config file with the command line winning, and pruned variants can be saved.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "common/fs.h"
#include "model/linear_lm.h"
#include "prune/select.h"
#include "storage/db.h"
#include "tests/cli/cli_fixture.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

class SweepCli : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    text_ = tmp_.file("calib.txt");
    std::string t;
    for (int i = 0; i < 300; ++i) t += "the state of a linear attention layer is low rank " + std::to_string(i) + "\n";
    write_file_atomic(text_, t);
  }
  // A sweep of 13 variants x 3 tasks on the tiny model: a few seconds.
  std::vector<std::string> sweep_args(const std::string& db) const {
    return {"sweep", "--model", model_, "--data", text_, "--tokenizer", "bytes", "--seq-len", "32", "--sequences", "8",
            "--methods", "drrqr,l1,random", "--ratios", "0.25,0.5,0.75", "--random-seeds", "0,1",
            "--tasks", "piqa,lambada_openai,arc_easy", "--limit", "4", "--max-length", "256",
            "--db", db, "--data-dir", data_dir(), "--threads", "1"};
  }
  std::string text_;
};

using Key = std::tuple<std::string, double, int64_t, std::string, std::string>;  // method ratio seed task metric

std::map<Key, double> metric_map(const std::string& db_path, std::size_t* rows = nullptr) {
  auto db = storage::Database::open(db_path);
  std::map<Key, double> m;
  const auto rs = db.results();
  for (const auto& r : rs) m[{r.method, r.ratio, r.seed, r.task, r.metric}] = r.value;
  if (rows) *rows = rs.size();
  return m;
}

int64_t done_jobs(const std::string& db_path) {
  if (!file_exists(db_path)) return 0;
  try {
    auto db = storage::Database::open(db_path);
    return static_cast<int64_t>(db.jobs({"done"}).size());
  } catch (const std::exception&) {
    return 0;  // created but not migrated yet
  }
}

pid_t spawn(const std::vector<std::string>& args) {
  std::vector<std::string> argv{RANKPRUNE_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return spawn_process(argv);
}

TEST_F(SweepCli, RerunIsANoOpAndQueryAndReportReadTheDatabase) {
  const auto db = tmp_.file("a.db");
  auto r = run_rankprune(sweep_args(db));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::size_t rows = 0;
  const auto first = metric_map(db, &rows);
  // baseline + drrqr x3 + l1 x3 + random x3x2 = 13 variants; piqa/arc_easy 2 metrics, lambada 2.
  EXPECT_EQ(rows, 13u * 3u * 2u);
  EXPECT_EQ(first.size(), rows);  // one row per (variant, task, metric)

  auto again = run_rankprune(sweep_args(db));
  ASSERT_EQ(again.exit_code, 0) << again.out;
  EXPECT_NE(again.out.find("nothing to do"), std::string::npos) << again.out;
  EXPECT_EQ(metric_map(db), first);

  auto q = run_rankprune({"query", "--db", db, "--task", "piqa", "--metric", "acc", "--format", "csv"});
  ASSERT_EQ(q.exit_code, 0) << q.out;
  EXPECT_NE(q.out.find("drrqr"), std::string::npos);
  auto jobs = run_rankprune({"query", "--db", db, "--jobs"});
  ASSERT_EQ(jobs.exit_code, 0) << jobs.out;
  EXPECT_NE(jobs.out.find("39 done"), std::string::npos) << jobs.out;
  const auto html = tmp_.file("r.html");
  auto rep = run_rankprune({"report", "--db", db, "--out", html});
  ASSERT_EQ(rep.exit_code, 0) << rep.out;
  EXPECT_NE(read_file(html).find("<svg"), std::string::npos);

  // A changed evaluation setting is new work, not a reuse of the old numbers.
  auto args = sweep_args(db);
  args[std::find(args.begin(), args.end(), "--limit") - args.begin() + 1] = "3";
  args[std::find(args.begin(), args.end(), "--methods") - args.begin() + 1] = "l1";
  args[std::find(args.begin(), args.end(), "--tasks") - args.begin() + 1] = "piqa";
  auto more = run_rankprune(args);
  ASSERT_EQ(more.exit_code, 0) << more.out;
  EXPECT_NE(more.out.find("4 job(s) done"), std::string::npos) << more.out;
}

TEST_F(SweepCli, SigkilledSweepResumesToTheUninterruptedResult) {
  const auto ref_db = tmp_.file("ref.db"), db = tmp_.file("killed.db");
  auto ref = run_rankprune(sweep_args(ref_db));
  ASSERT_EQ(ref.exit_code, 0) << ref.out;
  const auto expected = metric_map(ref_db);

  const pid_t pid = spawn(sweep_args(db));
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (done_jobs(db) < 5 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the sweep finished before it could be killed";
  const int64_t before = done_jobs(db);
  EXPECT_GE(before, 5);
  EXPECT_LT(before, 39);

  auto resumed = run_rankprune(sweep_args(db));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find(std::to_string(39 - before) + " job(s) done"), std::string::npos) << resumed.out;
  std::size_t rows = 0;
  const auto got = metric_map(db, &rows);
  EXPECT_EQ(rows, got.size()) << "a (variant, task, metric) has more than one row";
  EXPECT_EQ(got, expected);
  auto d = storage::Database::open(db);
  EXPECT_EQ(d.jobs({"done"}).size(), 39u);
  EXPECT_EQ(d.jobs().size(), 39u);
}

TEST_F(SweepCli, ConfigFileGivesOptionsAndTheCommandLineWins) {
  const auto ini = tmp_.file("sweep.ini");
  write_file_atomic(ini, "methods = l1\nratios = 0.5\ntasks = piqa\nlimit = 2\nmax-length = 256\ntokenizer = bytes\n"
                         "data-dir = " + data_dir() + "\n");
  const auto db = tmp_.file("c.db");
  auto r = run_rankprune({"sweep", "--model", model_, "--config", ini, "--ratios", "0.25", "--db", db,
                          "--save-pruned", tmp_.file("pruned"), "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::set<std::pair<std::string, double>> variants;
  for (const auto& row : storage::Database::open(db).results()) variants.insert({row.method, row.ratio});
  EXPECT_EQ(variants, (std::set<std::pair<std::string, double>>{{"none", 0.0}, {"l1", 0.25}}));
  // --save-pruned: one loadable fla checkpoint per variant, with its selection.
  const auto saved = path_join(tmp_.file("pruned"), "l1-0.25-seed0");
  auto m = LinearLM::load(saved);
  EXPECT_EQ(m.config().head_k_dim, 6);  // floor(8 * 0.75)
  auto sel = Selection::from_json(nlohmann::json::parse(read_file(path_join(saved, "selection.json"))), "selection");
  EXPECT_EQ(sel.method, "l1");

  write_file_atomic(ini, "methods = l1\nno-such-option = 3\n");
  auto bad = run_rankprune({"sweep", "--model", model_, "--config", ini, "--db", tmp_.file("d.db")});
  EXPECT_EQ(bad.exit_code, 1) << bad.out;
  EXPECT_NE(bad.out.find("sweep.ini"), std::string::npos) << bad.out;
}

TEST_F(SweepCli, BadInputIsRefusedClearly) {
  auto q = run_rankprune({"query", "--db", tmp_.file("missing.db")});
  EXPECT_EQ(q.exit_code, 1);
  EXPECT_NE(q.out.find("missing.db"), std::string::npos) << q.out;
  const auto foreign = tmp_.file("foreign.db");
  write_file_atomic(foreign, std::string(4096, 'x'));
  auto f = run_rankprune({"query", "--db", foreign});
  EXPECT_EQ(f.exit_code, 1);
  EXPECT_NE(f.out.find("foreign.db"), std::string::npos) << f.out;
  auto m = run_rankprune({"sweep", "--model", model_, "--methods", "drrqr,magic", "--tasks", "piqa", "--db", tmp_.file("x.db")});
  EXPECT_EQ(m.exit_code, 2);
  EXPECT_NE(m.out.find("magic"), std::string::npos) << m.out;
  auto nodata = run_rankprune({"sweep", "--model", model_, "--methods", "drrqr", "--tasks", "piqa", "--db", tmp_.file("y.db")});
  EXPECT_EQ(nodata.exit_code, 2);
  EXPECT_NE(nodata.out.find("--data"), std::string::npos) << nodata.out;
  EXPECT_FALSE(file_exists(tmp_.file("x.db")));
  EXPECT_FALSE(file_exists(tmp_.file("y.db")));
}


TEST_F(SweepCli, TwoConcurrentSweepsOnOneDatabaseDoEveryJobOnce) {
  const auto ref_db = tmp_.file("ref.db"), db = tmp_.file("shared.db");
  // More items per job than the other tests, so that the two runs surely overlap.
  auto heavier = [&](const std::string& path) {
    auto a = sweep_args(path);
    a[std::find(a.begin(), a.end(), "--limit") - a.begin() + 1] = "24";
    a[std::find(a.begin(), a.end(), "--max-length") - a.begin() + 1] = "512";
    return a;
  };
  ASSERT_EQ(run_rankprune(heavier(ref_db)).exit_code, 0);
  // Two independent processes on one file (as two array elements on one node would be): leases
  // split the jobs between them; neither runs a job the other holds, neither resets the other's.
  std::vector<std::string> argv{RANKPRUNE_BINARY};
  const auto args = heavier(db);
  argv.insert(argv.end(), args.begin(), args.end());
  const int a = spawn_process(argv, tmp_.file("a.log"));
  const int b = spawn_process(argv, tmp_.file("b.log"));
  EXPECT_EQ(wait_process(a), 0) << read_file(tmp_.file("a.log"));
  EXPECT_EQ(wait_process(b), 0) << read_file(tmp_.file("b.log"));
  // Both did work (they overlapped), and together exactly the 39 jobs.
  auto jobs_done = [](const std::string& log) {
    const auto at = log.find(" job(s) done");
    if (at == std::string::npos) return -1;
    const auto start = log.rfind("sweep: ", at);
    return std::stoi(log.substr(start + 7, at - start - 7));
  };
  const int na = jobs_done(read_file(tmp_.file("a.log"))), nb = jobs_done(read_file(tmp_.file("b.log")));
  EXPECT_GT(na, 0) << read_file(tmp_.file("a.log"));
  EXPECT_GT(nb, 0) << read_file(tmp_.file("b.log"));
  EXPECT_EQ(na + nb, 39);
  auto d = storage::Database::open(db);
  const auto jobs = d.jobs();
  EXPECT_EQ(jobs.size(), 39u);
  for (const auto& j : jobs) {
    EXPECT_EQ(j.state, "done") << j.method << " " << j.task;
    EXPECT_EQ(j.attempts, 1) << "job " << j.id << " ran more than once";
  }
  std::size_t rows = 0;
  EXPECT_EQ(metric_map(db, &rows), metric_map(ref_db));
  EXPECT_EQ(rows, 13u * 3u * 2u);
}

TEST_F(SweepCli, NpyRowsGiveTheSequenceLength) {
  // [6, 16] int32 ids: calibrate without --seq-len takes 16 from the file; a different --seq-len
  // is an error naming the file and both lengths.
  const auto npy = tmp_.file("ids.npy");
  {
    std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (6, 16), }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
    bytes += static_cast<char>(header.size() & 0xff);
    bytes += static_cast<char>(header.size() >> 8);
    bytes += header;
    for (int i = 0; i < 6 * 16; ++i) {
      const int32_t v = (i * 7) % 300;
      bytes.append(reinterpret_cast<const char*>(&v), 4);
    }
    write_file_atomic(npy, bytes);
  }
  const auto out = tmp_.file("s.safetensors");
  auto ok = run_rankprune({"calibrate", "--model", model_, "--data", npy, "--sequences", "4", "--out", out});
  ASSERT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("4 sequences x 16 tokens"), std::string::npos) << ok.out;
  auto bad = run_rankprune({"calibrate", "--model", model_, "--data", npy, "--seq-len", "32", "--sequences", "4",
                            "--out", tmp_.file("t.safetensors")});
  EXPECT_EQ(bad.exit_code, 1) << bad.out;
  EXPECT_NE(bad.out.find("ids.npy': rows have 16 tokens but --seq-len is 32"), std::string::npos) << bad.out;
  EXPECT_FALSE(file_exists(tmp_.file("t.safetensors")));
}

}  // namespace
}  // namespace rankprune::testing
