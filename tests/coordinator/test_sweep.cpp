// The sweep's planner, scheduler and the whole collective run with ranks as threads: the same
// results bitwise for 1, 2 and 3 ranks, a lost rank recorded and resumed from, a failing job, and
// two runs sharing one database without running a job twice.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include "cluster/communicator.h"
#include "common/error.h"
#include "common/fs.h"
#include "coordinator/scheduler.h"
#include "coordinator/sweep.h"
#include "coordinator/sweep_plan.h"
#include "storage/db.h"
#include "tests/testing/testing.h"
#include "worker/calibration.h"
#include "worker/protocol.h"
#include "worker/worker_loop.h"

namespace rankprune {
namespace {

using testing::TempDir;

// ---- planner

TEST(Plan, VariantsBaselineFirstSeedsOnlyForRandom) {
  const auto v = plan::plan_variants({"drrqr", "random"}, {0.25, 0.5}, {0, 1});
  std::vector<std::string> labels;
  for (const auto& k : v) labels.push_back(k.label());
  EXPECT_EQ(labels, (std::vector<std::string>{"baseline", "drrqr 0.25", "drrqr 0.5", "random 0.25 seed 0",
                                              "random 0.25 seed 1", "random 0.5 seed 0", "random 0.5 seed 1"}));
  EXPECT_TRUE(v[1].needs_stats);
  EXPECT_FALSE(v[3].needs_stats);
  EXPECT_EQ(v[4].folder(), "random-0.25-seed1");
  EXPECT_THROW(plan::plan_variants({"magnitude"}, {0.5}, {0}), UsageError);
  EXPECT_THROW(plan::plan_variants({"l1"}, {1.0}, {0}), UsageError);
  EXPECT_THROW(plan::plan_variants({}, {0.5}, {0}), UsageError);
  const auto jobs = plan::plan_jobs(v, {"piqa", "wikitext"});
  ASSERT_EQ(jobs.size(), 14u);
  EXPECT_EQ(jobs[1].variant, 0u);
  EXPECT_EQ(jobs[1].task, "wikitext");
  EXPECT_EQ(jobs[2].variant, 1u);
}

TEST(Plan, ShardsCoverEveryUnitOnceInOrder) {
  std::vector<std::vector<eval::Unit>> units(3);
  for (int j = 0; j < 3; ++j)
    for (int u = 0; u < 10 * (j + 1); ++u) units[j].push_back({0, static_cast<std::size_t>(u), 5 + u % 7});
  for (int world : {1, 2, 3, 8}) {
    const auto shards = plan::plan_shards(units, world);
    std::vector<std::size_t> next(3, 0);
    int64_t biggest = 0, total = 0;
    for (const auto& s : shards) {
      EXPECT_EQ(s.lo, next[s.job]) << "contiguous, in order";
      EXPECT_GT(s.hi, s.lo);
      next[s.job] = s.hi;
      int64_t t = 0;
      for (std::size_t u = s.lo; u < s.hi; ++u) t += units[s.job][u].tokens;
      EXPECT_EQ(t, s.tokens);
      biggest = std::max(biggest, s.tokens);
      total += s.tokens;
    }
    for (int j = 0; j < 3; ++j) EXPECT_EQ(next[static_cast<std::size_t>(j)], units[static_cast<std::size_t>(j)].size());
    if (world == 1) {
      EXPECT_EQ(shards.size(), 3u);
    } else {
      EXPECT_GE(static_cast<int>(shards.size()), 3 * world) << "enough shards for every rank";
      EXPECT_LE(biggest, total / (4 * world) + 11) << "none much above a quarter of a rank's share";
    }
  }
}

// ---- a small world: a random model on disk, calibration text, three tasks

struct World {
  TempDir tmp;
  ModelConfig cfg;
  std::optional<LinearLM> model;
  std::unique_ptr<Tokenizer> tok;
  std::string model_dir, sha;

  World() {
    cfg = ModelConfig::defaults(Arch::GatedDeltaNet);
    cfg.hidden_size = 32, cfg.num_hidden_layers = 2, cfg.num_heads = 2, cfg.vocab_size = 256;
    cfg.intermediate_size = 64, cfg.head_dim = 8, cfg.expand_v = 1.0, cfg.initializer_range = 0.3;
    cfg.finalize();
    model_dir = tmp.file("model");
    std::filesystem::create_directories(model_dir);
    LinearLM(cfg, init_random_weights(cfg, 11, torch::kFloat32)).save(model_dir);
    model.emplace(LinearLM::load(model_dir));
    tok = Tokenizer::load("bytes");
    sha = model_sha(model_dir);
    std::string text;
    for (int i = 0; i < 60; ++i) text += "The quick brown fox jumps over the lazy dog number " + std::to_string(i) + ". ";
    write_file_atomic(tmp.file("cal.txt"), text);
  }

  coord::SweepRequest request(const std::string& db) const {
    coord::SweepRequest r;
    r.model_dir = model_dir, r.model_sha = sha, r.model = &*model, r.tokenizer = tok.get(), r.tokenizer_path = "bytes";
    r.variants = plan::plan_variants({"drrqr", "l1", "pca", "random"}, {0.5}, {0, 1});
    r.tasks = {"piqa", "lambada_openai", "wikitext"};
    r.eval.data_dir = testing::data_dir();
    r.eval.limit = 4;
    r.eval.seq_len = 64;
    r.eval.engine.batch_size = 2;
    r.eval.engine.max_length = 512;
    r.data = {tmp.file("cal.txt")};
    r.seq_len = 32, r.sequences = 8, r.batch_size = 2;
    r.db_path = db;
    r.lease_seconds = 30;
    return r;
  }
};

// (method, ratio, seed, task, metric) -> value and stderr bits, plus the selections.
struct Snapshot {
  std::map<std::string, std::pair<uint64_t, uint64_t>> metrics;
  std::size_t rows = 0;
};

uint64_t bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

Snapshot snapshot(const std::string& db_path) {
  auto db = storage::Database::open(db_path);
  Snapshot s;
  for (const auto& r : db.results()) {
    const std::string key = cat(r.method, "|", r.ratio, "|", r.seed, "|", r.task, "|", r.metric);
    EXPECT_EQ(s.metrics.count(key), 0u) << "one row per (variant, task, metric): " << key;
    s.metrics[key] = {bits(r.value), r.stderr_value ? bits(*r.stderr_value) : 0};
    ++s.rows;
  }
  return s;
}

int sweep_on(int P, const coord::SweepRequest& req, std::string* out_text = nullptr,
             std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  int code = -1;
  std::ostringstream out, err;
  cluster::run_threads(
      P,
      [&](cluster::Communicator& comm) {
        std::ostringstream o, e;
        const int c = coord::run_sweep(req, comm, nullptr, comm.rank() == 0 ? out : o, comm.rank() == 0 ? err : e);
        if (comm.rank() == 0) code = c;
        EXPECT_TRUE(o.str().empty() && e.str().empty()) << "workers print nothing: " << o.str() << e.str();
      },
      timeout);
  if (out_text) *out_text = out.str() + err.str();
  return code;
}

TEST(Sweep, OneTwoThreeRanksGiveBitwiseTheSameResults) {
  World w;
  std::map<int, Snapshot> snaps;
  std::map<int, std::vector<std::string>> selections;
  for (int P : {1, 2, 3}) {
    const std::string db = w.tmp.file(cat("p", P, ".db"));
    std::string log;
    ASSERT_EQ(sweep_on(P, w.request(db), &log), 0) << log;
    EXPECT_NE(log.find(cat("on ", P, " rank(s)")), std::string::npos) << log;
    snaps[P] = snapshot(db);
    auto d = storage::Database::open(db);
    for (const auto& j : d.jobs()) EXPECT_EQ(j.state, "done") << j.method << " " << j.task;
    // The statistics file: computed here (not cached) for every P.
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(db + ".cache")) {
      selections[P].push_back(read_file(e.path().string()));
      ++files;
    }
    EXPECT_EQ(files, 1);
    // A second run has nothing to do.
    std::string again;
    ASSERT_EQ(sweep_on(P, w.request(db), &again), 0);
    EXPECT_NE(again.find("nothing to do"), std::string::npos) << again;
  }
  // 6 variants x (piqa 2 + lambada 2 + wikitext 4 metrics).
  EXPECT_EQ(snaps[1].rows, 6u * 8u);
  for (int P : {2, 3}) {
    EXPECT_EQ(snaps[P].metrics, snaps[1].metrics) << P << " ranks";
    EXPECT_EQ(selections[P], selections[1]) << "statistics files, byte for byte, " << P << " ranks";
  }
}

TEST(Sweep, TaylorAddedToAFinishedSweepRunsOnlyItsGradientsAndJobs) {
  World w;
  std::map<int, Snapshot> snaps;
  for (int P : {1, 2}) {
    const std::string db = w.tmp.file(cat("t", P, ".db"));
    auto req = w.request(db);
    req.tasks = {"wikitext"};
    req.variants = plan::plan_variants({"drrqr", "l1"}, {0.5}, {0});
    std::string log;
    ASSERT_EQ(sweep_on(P, req, &log), 0) << log;
    std::string cache;
    for (const auto& e : std::filesystem::directory_iterator(db + ".cache")) cache = e.path().string();
    const auto before = CalibrationStats::load(cache);
    EXPECT_FALSE(before.has_taylor()) << "no taylor variant: no backward passes";
    // Adding taylor: the cached statistics gain the gradient sums; only taylor's jobs run.
    req.variants = plan::plan_variants({"drrqr", "l1", "taylor"}, {0.5}, {0});
    ASSERT_EQ(sweep_on(P, req, &log), 0) << log;
    EXPECT_NE(log.find("1 of 4 jobs to run"), std::string::npos) << log;
    EXPECT_NE(log.find("no taylor gradients; computing them"), std::string::npos) << log;
    const auto after = CalibrationStats::load(cache);
    ASSERT_TRUE(after.has_taylor());
    EXPECT_TRUE(torch::equal(after.gram, before.gram));
    // The same gradients as a calibration that computes everything at once.
    auto cdata = load_calibration_data(req.data, w.tok.get(), "bytes", req.seq_len, req.sequences, req.seed,
                                       w.model->config().vocab_size);
    const auto direct = collect_statistics(*w.model, cdata.ids, req.batch_size, req.forward, /*taylor=*/true);
    EXPECT_TRUE(torch::equal(after.taylor_grad_q, direct.taylor_grad_q));
    EXPECT_TRUE(torch::equal(after.taylor_grad_k, direct.taylor_grad_k));
    snaps[P] = snapshot(db);
    ASSERT_EQ(sweep_on(P, req, &log), 0);
    EXPECT_NE(log.find("nothing to do"), std::string::npos) << log;
  }
  EXPECT_EQ(snaps[1].rows, 4u * 4u);  // baseline, drrqr, l1, taylor x 4 wikitext metrics
  EXPECT_EQ(snaps[2].metrics, snaps[1].metrics);
}

// ---- the scheduler alone: a lost rank, a failing job, two runs on one database

struct SchedulerWorld : World {
  std::vector<Variant> variants;
  std::vector<std::string> tasks{"piqa", "lambada_openai"};
  eval::EvalSettings settings;

  SchedulerWorld() {
    settings.data_dir = testing::data_dir();
    settings.limit = 8;
    settings.engine.batch_size = 2;
    settings.engine.max_length = 512;
    variants.push_back({"none", 0, 0, {}});
    for (double r : {0.25, 0.5, 0.75})
      variants.push_back({"l1", r, 0, select_channels(*model, nullptr, "l1", r, 0)});
  }

  // Registers every (variant, task) job in `db` and returns the tickets.
  std::vector<coord::JobTicket> tickets(storage::Database& db) const {
    const int64_t m = db.ensure_model({model_dir, sha, "gated_deltanet", "{}"});
    std::vector<coord::JobTicket> out;
    for (std::size_t v = 0; v < variants.size(); ++v) {
      const int64_t vid = db.ensure_variant({m, std::nullopt, variants[v].method, variants[v].ratio, 0,
                                             static_cast<int>(variants[v].method == "none" ? 8 : variants[v].selection.head_k_dim),
                                             "{}"});
      for (const auto& t : tasks) out.push_back({v, t, db.ensure_job(vid, t, "{}"), variants[v].method});
    }
    return out;
  }
};

coord::SchedulerOptions options(const std::string& host) {
  coord::SchedulerOptions o;
  o.owner = {host, 1, "1"};  // another host's owner: its lease is trusted until it expires
  o.lease_seconds = 60;
  return o;
}

TEST(Scheduler, ALostRankFailsItsJobsAndAReRunResumes) {
  SchedulerWorld w;
  const std::string db_path = w.tmp.file("lost.db");
  std::string error;
  try {
    cluster::run_threads(
        3,
        [&](cluster::Communicator& comm) {
          Executor ex(*w.model, *w.tok, w.settings);
          ex.set_variants(w.variants);
          if (comm.rank() == 0) {
            auto db = storage::Database::open(db_path);
            coord::schedule(comm, db, ex, w.tickets(db), options("simA"), nullptr);
          } else if (comm.rank() == 1) {
            run_worker(comm, ex, nullptr);
          } else {
            // Rank 2 takes its first item and goes silent (a hung or killed process).
            while (!comm.recv(0, proto::kToWorker, std::chrono::milliseconds(50))) {
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1500));
          }
        },
        std::chrono::milliseconds(400));
    ADD_FAILURE() << "expected the lost rank to end the run";
  } catch (const cluster::CommError& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("rank 2"), std::string::npos) << error;
  EXPECT_NE(error.find("stopped answering"), std::string::npos) << error;
  {
    auto db = storage::Database::open(db_path);
    int failed = 0, running = 0;
    for (const auto& j : db.jobs()) {
      failed += j.state == "failed";
      running += j.state == "running";
      if (j.state == "failed") {
        EXPECT_NE(j.error.find("rank 2"), std::string::npos) << j.error;
      }
    }
    EXPECT_GE(failed, 1);
    EXPECT_EQ(running, 0) << "the other claimed jobs were given back";
  }
  // A re-run on one rank finishes exactly what is left; the results equal an undisturbed run.
  for (const std::string& path : {db_path, w.tmp.file("clean.db")}) {
    auto db = storage::Database::open(path);
    auto local = cluster::make_local();
    Executor ex(*w.model, *w.tok, w.settings);
    ex.set_variants(w.variants);
    std::vector<coord::JobTicket> todo;
    for (const auto& t : w.tickets(db))
      if (db.job_state(t.job_id) != "done") todo.push_back(t);
    const auto oc = coord::schedule(*local, db, ex, todo, options("simA"), nullptr);
    EXPECT_EQ(oc.done, static_cast<int64_t>(todo.size()));
    EXPECT_FALSE(oc.failure);
  }
  EXPECT_EQ(snapshot(db_path).metrics, snapshot(w.tmp.file("clean.db")).metrics);
  EXPECT_EQ(snapshot(db_path).rows, 4u * (2 + 2));
}

coord::ScheduleOutcome schedule_on_two(SchedulerWorld& w, storage::Database& db) {
  coord::ScheduleOutcome oc;
  cluster::run_threads(2, [&](cluster::Communicator& comm) {
    Executor ex(*w.model, *w.tok, w.settings);
    ex.set_variants(w.variants);
    if (comm.rank() == 0) {
      std::ostringstream err;
      auto o = options("simA");
      o.err = &err;
      oc = coord::schedule(comm, db, ex, w.tickets(db), o, nullptr);
    } else {
      run_worker(comm, ex, nullptr);
    }
  });
  return oc;
}

TEST(Scheduler, AFailingJobIsRecordedAndStopsTheRun) {
  {
    // A shard that fails where it runs (here: a malformed selection of one variant).
    SchedulerWorld w;
    w.variants[2].selection.kept[0].pop_back();
    auto db = storage::Database::open(":memory:");
    const auto oc = schedule_on_two(w, db);
    ASSERT_TRUE(oc.failure.has_value());
    EXPECT_TRUE(oc.failure_is_input);
    EXPECT_NE(oc.failure->find("selection layer 0 has 1 heads"), std::string::npos) << *oc.failure;
    int failed = 0;
    for (const auto& j : db.jobs()) {
      failed += j.state == "failed";
      EXPECT_NE(j.state, "running") << "nothing left claimed";
      if (j.state == "failed") {
        EXPECT_EQ(j.ratio, 0.5);
        EXPECT_NE(j.error.find("selection layer 0"), std::string::npos) << j.error;
      }
    }
    EXPECT_GE(failed, 1);
  }
  {
    // A task that cannot be planned (a continuation longer than max_length) fails before any work goes out.
    SchedulerWorld w;
    w.settings.engine.max_length = 1;
    auto db = storage::Database::open(":memory:");
    const auto oc = schedule_on_two(w, db);
    ASSERT_TRUE(oc.failure.has_value());
    EXPECT_NE(oc.failure->find("max-length"), std::string::npos) << *oc.failure;
    EXPECT_EQ(oc.done, 0);
    for (const auto& j : db.jobs()) EXPECT_NE(j.state, "running");
  }
}

TEST(Scheduler, TwoRunsOnOneDatabaseDoEveryJobOnce) {
  SchedulerWorld w;
  const std::string path = w.tmp.file("shared.db");
  { auto db = storage::Database::open(path); w.tickets(db); }
  std::vector<coord::ScheduleOutcome> oc(2);
  std::vector<std::thread> runs;
  for (int i = 0; i < 2; ++i)
    runs.emplace_back([&, i] {
      auto db = storage::Database::open(path);
      auto local = cluster::make_local();
      Executor ex(*w.model, *w.tok, w.settings);
      ex.set_variants(w.variants);
      oc[static_cast<std::size_t>(i)] = coord::schedule(*local, db, ex, w.tickets(db), options(i ? "simB" : "simA"), nullptr);
    });
  for (auto& t : runs) t.join();
  EXPECT_EQ(oc[0].done + oc[1].done, 8) << "every job once";
  EXPECT_EQ(oc[0].taken + oc[1].taken, 8) << "each run skipped what the other held";
  auto db = storage::Database::open(path);
  for (const auto& j : db.jobs()) {
    EXPECT_EQ(j.state, "done");
    EXPECT_EQ(j.attempts, 1) << "never run twice";
  }
  // Equal to one run alone.
  const std::string alone = w.tmp.file("alone.db");
  {
    auto d = storage::Database::open(alone);
    auto local = cluster::make_local();
    Executor ex(*w.model, *w.tok, w.settings);
    ex.set_variants(w.variants);
    coord::schedule(*local, d, ex, w.tickets(d), options("simA"), nullptr);
  }
  EXPECT_EQ(snapshot(path).metrics, snapshot(alone).metrics);
}


// An ostream that raises a flag once something is written: the scheduler writes one line per
// finished job, so this sets a "signal" right after the first job.
class SignalOnWrite : public std::streambuf {
 public:
  explicit SignalOnWrite(std::atomic<int>& flag) : flag_(flag) {}

 protected:
  int overflow(int c) override {
    flag_ = 10;  // SIGUSR1
    return c;
  }

 private:
  std::atomic<int>& flag_;
};

TEST(Scheduler, ASignalStopsNewWorkAndSaysWhatIsLeft) {
  SchedulerWorld w;
  for (std::size_t n : {std::size_t{1}, std::size_t{3}}) {
    auto db = storage::Database::open(":memory:");
    auto all = w.tickets(db);
    all.resize(n);
    std::atomic<int> flag{0};
    SignalOnWrite buf(flag);
    std::ostream out(&buf);
    auto o = options("simA");
    o.out = &out;
    auto local = cluster::make_local();
    Executor ex(*w.model, *w.tok, w.settings);
    ex.set_variants(w.variants);
    const auto oc = coord::schedule(*local, db, ex, all, o, &flag);
    EXPECT_EQ(oc.stop_signal, 10);
    EXPECT_EQ(oc.done, 1);
    // A warning during the last job leaves nothing to do (the sweep then exits 0, not 138).
    EXPECT_EQ(oc.left, static_cast<int64_t>(n - 1)) << n << " jobs";
    EXPECT_EQ(oc.released, 0);
    for (const auto& j : db.jobs()) EXPECT_NE(j.state, "running");
  }
}

}  // namespace
}  // namespace rankprune
