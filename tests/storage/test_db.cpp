// Tests of the results database (storage/db.h): open-time checks, migrations, get-or-create keys,
// the job life cycle and its atomicity, the result/job queries, job leases (storage/lease.h) and
// merging databases. Files live in a temporary directory under /tmp that each test creates and
// removes.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "storage/db.h"

namespace rankprune::storage {
namespace {

// A fresh directory under /tmp, removed with its contents when the object dies.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/rp-test-db-XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    if (!made) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs fn and requires an InputError whose message contains every needle.
template <typename Fn>
void expect_input_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

// Direct SQLite access, independent of the code under test.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) throw std::runtime_error("sqlite3_open failed");
  }
  ~RawDb() { sqlite3_close(db_); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string msg = err ? err : "?";
      sqlite3_free(err);
      throw std::runtime_error(sql + ": " + msg);
    }
  }
  std::string text(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) != SQLITE_OK)
      throw std::runtime_error(sql + ": " + sqlite3_errmsg(db_));
    std::string out;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
      out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return out;
  }
  std::int64_t integer(const std::string& sql) { return std::stoll(text(sql)); }

 private:
  sqlite3* db_ = nullptr;
};

ModelRecord model(const std::string& path, const std::string& sha = "sha-a") {
  return {path, sha, "gated_deltanet", "{\"hidden\":64}"};
}

CalibrationRecord calibration(std::int64_t model_id, std::int64_t seed = 0) {
  return {model_id, "data-sha", 512, 16, seed, 8192, "/stats/" + std::to_string(seed)};
}

VariantRecord variant(std::int64_t model_id, std::optional<std::int64_t> cal, const std::string& method,
                      double ratio, std::int64_t seed = 0) {
  return {model_id, cal, method, ratio, seed, 64, "{}"};
}

std::vector<MetricValue> two_metrics() { return {{"acc", 0.5, 0.01}, {"acc_norm", 0.55, std::nullopt}}; }

// A model, one calibration, one drrqr variant and one pending job on it.
struct Small {
  std::int64_t model_id, cal_id, variant_id, job_id;
};
Small add_small(Database& db, const std::string& task = "piqa") {
  Small s{};
  s.model_id = db.ensure_model(model("models/m1"));
  s.cal_id = db.ensure_calibration(calibration(s.model_id));
  s.variant_id = db.ensure_variant(variant(s.model_id, s.cal_id, "drrqr", 0.25));
  s.job_id = db.ensure_job(s.variant_id, task, "{\"limit\":10}");
  return s;
}

// ------------------------------------------------------------------------------------ opening

TEST(DbOpen, FreshMemoryDatabaseIsAtCurrentVersion) {
  Database db = Database::open(":memory:");
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  EXPECT_EQ(db.journal_mode(), "memory");
  EXPECT_EQ(db.count_metrics(), 0);
  EXPECT_TRUE(db.jobs().empty());
  EXPECT_TRUE(db.results().empty());
}

TEST(DbOpen, FreshFileHasApplicationIdVersionAndWal) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  {
    Database db = Database::open(p);
    EXPECT_EQ(db.path(), p);
    EXPECT_EQ(db.schema_version(), kSchemaVersion);
    EXPECT_EQ(db.journal_mode(), on_network_filesystem(p) ? "delete" : "wal");
  }
  RawDb raw(p);
  EXPECT_EQ(raw.integer("PRAGMA application_id"), kApplicationId);
  EXPECT_EQ(raw.integer("PRAGMA user_version"), kSchemaVersion);
  if (!on_network_filesystem(p)) {
    EXPECT_EQ(raw.text("PRAGMA journal_mode"), "wal");
  }
}

TEST(DbOpen, SeveralProcessesOpeningOneNewFileTogetherAllSucceed) {
  // Setting the journal mode needs the file alone; SQLite answers BUSY at once (no busy handler)
  // while another connection holds it, which made the second of two sweeps started together fail.
  // Four connections race on each of 20 new files.
  TempDir dir;
  for (int round = 0; round < 20; ++round) {
    const std::string p = dir.file("race" + std::to_string(round) + ".db");
    std::atomic<int> ready{0}, ok{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&] {
        ++ready;
        while (ready < 4) {
        }
        try {
          Database db = Database::open(p);
          if (db.schema_version() == kSchemaVersion) ++ok;
        } catch (const std::exception& e) {
          ADD_FAILURE() << "round " << round << ": " << e.what();
        }
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ(ok, 4) << "round " << round;
  }
}

TEST(DbOpen, ForeignKeysAreEnforced) {
  Database db = Database::open(":memory:");
  EXPECT_THROW(db.ensure_calibration(calibration(/*model_id=*/42)), InternalError);
  EXPECT_THROW(db.ensure_job(/*variant_id=*/42, "piqa", "{}"), InternalError);
}

TEST(DbOpen, RefusesRandomBytes) {
  TempDir dir;
  const std::string p = dir.file("noise.db");
  {
    std::mt19937 rng(7);
    std::ofstream out(p, std::ios::binary);
    for (int i = 0; i < 8192; ++i) out.put(static_cast<char>(rng() & 0xff));
  }
  expect_input_error([&] { Database::open(p); }, {p, "not a database"});
  EXPECT_EQ(std::filesystem::file_size(p), 8192u);  // left as it was
}

TEST(DbOpen, RefusesAnotherProgramsSqliteDatabase) {
  TempDir dir;
  const std::string p = dir.file("other.sqlite");
  {
    RawDb raw(p);
    raw.exec("CREATE TABLE photos(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos(name) VALUES('x')");
  }
  expect_input_error([&] { Database::open(p); }, {p, "not a rankprune results database"});
  RawDb raw(p);  // untouched: no schema added, journal mode unchanged
  EXPECT_EQ(raw.integer("SELECT count(*) FROM sqlite_master"), 1);
  EXPECT_EQ(raw.integer("PRAGMA user_version"), 0);
  EXPECT_EQ(raw.text("PRAGMA journal_mode"), "delete");
}

TEST(DbOpen, RefusesSqliteFileWithForeignApplicationIdEvenWhenEmpty) {
  TempDir dir;
  const std::string p = dir.file("other.sqlite");
  RawDb(p).exec("PRAGMA application_id = 1234");
  expect_input_error([&] { Database::open(p); }, {p, "application_id 1234"});
}

TEST(DbOpen, RefusesNewerSchema) {
  TempDir dir;
  const std::string p = dir.file("new.db");
  Database::open(p);
  RawDb(p).exec("PRAGMA user_version = 99");
  expect_input_error([&] { Database::open(p); },
                     {p, "written by a newer rankprune: schema version 99",
                      "reads up to " + std::to_string(kSchemaVersion)});
}

TEST(DbOpen, RefusesMissingOrBlockedDirectory) {
  TempDir dir;
  const std::string missing = dir.file("no/such/dir/r.db");
  expect_input_error([&] { Database::open(missing); }, {missing, "cannot open"});
  EXPECT_FALSE(std::filesystem::exists(dir.file("no")));
  const std::string file = dir.file("plain");
  std::ofstream(file) << "x";
  const std::string under_file = file + "/r.db";  // a regular file where a directory should be
  expect_input_error([&] { Database::open(under_file); }, {under_file});
  EXPECT_THROW(Database::open(""), UsageError);
}

TEST(DbOpen, NetworkFilesystemTypes) {
  EXPECT_TRUE(is_network_filesystem_type(0x6969));      // NFS
  EXPECT_TRUE(is_network_filesystem_type(0x0BD00BD0));  // Lustre
  EXPECT_TRUE(is_network_filesystem_type(0x47504653));  // GPFS
  EXPECT_TRUE(is_network_filesystem_type(0xFF534D42));  // CIFS
  EXPECT_TRUE(is_network_filesystem_type(static_cast<std::int32_t>(0xFF534D42)));  // signed f_type
  EXPECT_FALSE(is_network_filesystem_type(0xEF53));      // ext4
  EXPECT_FALSE(is_network_filesystem_type(0x58465342));  // xfs
  EXPECT_FALSE(is_network_filesystem_type(0x01021994));  // tmpfs
}

// --------------------------------------------------------------------------------- migrations

TEST(DbMigration, VersionOneDataSurvivesUpgrade) {
  TempDir dir;
  const std::string p = dir.file("old.db");
  std::int64_t done_job = 0, other_job = 0;
  {
    Database db = Database::open_at_version(p, 1);
    EXPECT_EQ(db.schema_version(), 1);
    Small s = add_small(db);
    done_job = s.job_id;
    other_job = db.ensure_job(s.variant_id, "lambada_openai", "{}");
    db.start_job(done_job, "node1", 0, 0);
    db.complete_job(done_job, two_metrics(), 3.5);
    // jobs.error arrives in v2: a missing column is the file's (InputError), as for a hostile file
    // that claims a schema version it does not hold (tests/fuzz_regress/fuzz_db/missing-column.db).
    EXPECT_THROW(db.fail_job(other_job, "boom"), InputError);
  }
  {
    RawDb raw(p);
    EXPECT_EQ(raw.integer("PRAGMA user_version"), 1);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM pragma_table_info('jobs') WHERE name = 'error'"), 0);
  }
  Database db = Database::open(p);
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_EQ(db.job_state(done_job), "done");
  EXPECT_EQ(db.job_state(other_job), "pending");
  auto rows = db.results();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].metric, "acc");
  EXPECT_DOUBLE_EQ(rows[0].value, 0.5);
  db.fail_job(other_job, "boom");
  auto jobs = db.jobs({"failed"});
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, "boom");
  RawDb raw(p);
  EXPECT_EQ(raw.integer("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'jobs_state'"), 1);
  EXPECT_EQ(raw.integer("PRAGMA application_id"), kApplicationId);
}

TEST(DbMigration, ReopeningCurrentDatabaseRunsNoMigration) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  std::int64_t job = 0;
  {
    Database db = Database::open(p);
    job = add_small(db).job_id;
    db.start_job(job, "h", 1, 0);
    db.complete_job(job, two_metrics(), 1.0);
  }
  // Drop an index that migration 2 creates: a re-run of the migration would bring it back.
  RawDb(p).exec("DROP INDEX jobs_state");
  for (int i = 0; i < 2; ++i) {
    Database db = Database::open(p);
    EXPECT_EQ(db.schema_version(), kSchemaVersion);
    EXPECT_EQ(db.count_metrics(), 2);
    EXPECT_EQ(db.job_state(job), "done");
  }
  EXPECT_EQ(RawDb(p).integer("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_state'"), 0);
}

TEST(DbMigration, OpenAtOlderVersionNeverDowngrades) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  Database::open(p);
  Database db = Database::open_at_version(p, 1);
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
}

// ------------------------------------------------------------------------------ get-or-create

TEST(DbEnsure, SameKeySameIdDifferentKeyNewId) {
  Database db = Database::open(":memory:");
  const auto m1 = db.ensure_model(model("models/m1"));
  EXPECT_EQ(db.ensure_model(model("models/m1")), m1);
  ModelRecord changed = model("models/m1");
  changed.arch = "other";  // not part of the key
  EXPECT_EQ(db.ensure_model(changed), m1);
  const auto m2 = db.ensure_model(model("models/m1", "sha-b"));
  const auto m3 = db.ensure_model(model("models/m2"));
  EXPECT_NE(m2, m1);
  EXPECT_NE(m3, m1);
  EXPECT_NE(m3, m2);

  const auto c1 = db.ensure_calibration(calibration(m1, 0));
  EXPECT_EQ(db.ensure_calibration(calibration(m1, 0)), c1);
  EXPECT_NE(db.ensure_calibration(calibration(m1, 1)), c1);
  EXPECT_NE(db.ensure_calibration(calibration(m2, 0)), c1);

  const auto v1 = db.ensure_variant(variant(m1, c1, "drrqr", 0.25));
  EXPECT_EQ(db.ensure_variant(variant(m1, c1, "drrqr", 0.25)), v1);
  EXPECT_NE(db.ensure_variant(variant(m1, c1, "drrqr", 0.5)), v1);
  EXPECT_NE(db.ensure_variant(variant(m1, c1, "qrcp", 0.25)), v1);
  EXPECT_NE(db.ensure_variant(variant(m1, c1, "drrqr", 0.25, 1)), v1);

  const auto j1 = db.ensure_job(v1, "piqa", "{}");
  EXPECT_EQ(db.ensure_job(v1, "piqa", "{}"), j1);
  EXPECT_NE(db.ensure_job(v1, "piqa", "{\"limit\":5}"), j1);
  EXPECT_NE(db.ensure_job(v1, "wikitext", "{}"), j1);
  EXPECT_EQ(db.job_state(j1), "pending");
  EXPECT_EQ(db.jobs().size(), 3u);
}

TEST(DbEnsure, VariantWithoutCalibrationIsUnique) {
  Database db = Database::open(":memory:");
  const auto m = db.ensure_model(model("models/m1"));
  const auto c = db.ensure_calibration(calibration(m));
  const auto base = db.ensure_variant(variant(m, std::nullopt, "none", 0.0));
  EXPECT_EQ(db.ensure_variant(variant(m, std::nullopt, "none", 0.0)), base);
  EXPECT_NE(db.ensure_variant(variant(m, c, "none", 0.0)), base);
  const auto l1 = db.ensure_variant(variant(m, std::nullopt, "l1", 0.5));
  EXPECT_NE(l1, base);
  EXPECT_EQ(db.ensure_variant(variant(m, std::nullopt, "l1", 0.5)), l1);
}

TEST(DbEnsure, NullCalibrationUniqueEvenAgainstDirectInserts) {
  // The unique index itself, not only the lookup, must treat "no calibration" as one value.
  TempDir dir;
  const std::string p = dir.file("r.db");
  {
    Database db = Database::open(p);
    const auto m = db.ensure_model(model("models/m1"));
    db.ensure_variant(variant(m, std::nullopt, "none", 0.0));
  }
  RawDb raw(p);
  EXPECT_THROW(raw.exec("INSERT INTO variants(model_id, calibration_id, method, ratio, seed, head_k_dim, "
                        "selection_json) VALUES(1, NULL, 'none', 0.0, 0, 64, '{}')"),
               std::runtime_error);
}

TEST(DbEnsure, CheckConstraintsRejectBadValues) {
  Database db = Database::open(":memory:");
  const auto m = db.ensure_model(model("models/m1"));
  EXPECT_THROW(db.ensure_variant(variant(m, std::nullopt, "drrqr", 1.0)), InternalError);
  EXPECT_THROW(db.ensure_variant(variant(m, std::nullopt, "drrqr", -0.1)), InternalError);
  EXPECT_THROW(db.ensure_variant(variant(m, std::nullopt, "", 0.5)), InternalError);
  try {
    db.ensure_variant(variant(m, std::nullopt, "drrqr", 1.5));
    ADD_FAILURE() << "expected InternalError";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find(":memory:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("CHECK constraint failed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(db.ensure_variant(variant(m, std::nullopt, "drrqr", 0.5)), 1);  // failures left nothing
}

// ------------------------------------------------------------------------------- job life cycle

TEST(DbJobs, LifeCycleFields) {
  Database db = Database::open(":memory:");
  const auto run = db.begin_run("[\"rankprune\",\"sweep\"]", "abc123", "login1");
  Small s = add_small(db);
  db.start_job(s.job_id, "node7", 3, run);
  EXPECT_EQ(db.job_state(s.job_id), "running");
  auto j = db.jobs().at(0);
  EXPECT_EQ(j.id, s.job_id);
  EXPECT_EQ(j.model, "models/m1");
  EXPECT_EQ(j.method, "drrqr");
  EXPECT_DOUBLE_EQ(j.ratio, 0.25);
  EXPECT_EQ(j.task, "piqa");
  EXPECT_EQ(j.attempts, 1);
  EXPECT_EQ(j.host, "node7");
  EXPECT_EQ(j.rank, 3);
  EXPECT_TRUE(std::regex_match(j.started, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"))) << j.started;
  EXPECT_EQ(j.finished, "");
  db.complete_job(s.job_id, two_metrics(), 12.5);
  j = db.jobs().at(0);
  EXPECT_EQ(j.state, "done");
  EXPECT_DOUBLE_EQ(j.seconds, 12.5);
  EXPECT_TRUE(std::regex_match(j.finished, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"))) << j.finished;
  EXPECT_EQ(j.error, "");
  db.end_run(run, "ok");
  EXPECT_THROW(db.end_run(run, "great"), InternalError);
  EXPECT_THROW(db.end_run(run + 100, "ok"), InternalError);
  EXPECT_GT(db.begin_run("[]", "abc123", "login1"), run);
}

TEST(DbJobs, RunRowsRecordStatus) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  {
    Database db = Database::open(p);
    const auto r1 = db.begin_run("[\"a\"]", "sha1", "h");
    db.begin_run("[\"b\"]", "sha1", "h");
    db.end_run(r1, "interrupted");
  }
  RawDb raw(p);
  EXPECT_EQ(raw.text("SELECT status FROM runs WHERE id = 1"), "interrupted");
  EXPECT_NE(raw.text("SELECT finished FROM runs WHERE id = 1"), "");
  EXPECT_EQ(raw.text("SELECT status FROM runs WHERE id = 2"), "running");
  EXPECT_EQ(raw.text("SELECT argv_json FROM runs WHERE id = 2"), "[\"b\"]");
}

TEST(DbJobs, FailingCompleteLeavesNothingBehind) {
  Database db = Database::open(":memory:");
  Small s = add_small(db);
  db.start_job(s.job_id, "h", 0, 0);
  std::vector<MetricValue> dup = {{"acc", 0.5, 0.01}, {"acc_norm", 0.6, 0.02}, {"acc", 0.7, std::nullopt}};
  EXPECT_THROW(db.complete_job(s.job_id, dup, 1.0), InternalError);
  EXPECT_EQ(db.count_metrics(), 0);
  EXPECT_EQ(db.job_state(s.job_id), "running");
  EXPECT_DOUBLE_EQ(db.jobs().at(0).seconds, 0.0);
  EXPECT_TRUE(db.results().empty());
  db.complete_job(s.job_id, two_metrics(), 2.0);  // the retry stores exactly its own metrics
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_EQ(db.job_state(s.job_id), "done");
}

TEST(DbJobs, MetricsBecomeVisibleTogetherWithDone) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  Database writer = Database::open(p);
  Small s = add_small(writer);
  writer.start_job(s.job_id, "h", 0, 0);
  Database reader = Database::open(p);
  {
    auto tx = writer.transaction();
    writer.complete_job(s.job_id, two_metrics(), 1.0);
    EXPECT_EQ(writer.count_metrics(), 2);      // the writer sees its own work...
    EXPECT_EQ(reader.count_metrics(), 0);      // ...nobody else does yet
    EXPECT_EQ(reader.job_state(s.job_id), "running");
    // no commit: everything goes away
  }
  EXPECT_EQ(writer.count_metrics(), 0);
  EXPECT_EQ(writer.job_state(s.job_id), "running");
  {
    auto tx = writer.transaction();
    writer.complete_job(s.job_id, two_metrics(), 1.0);
    EXPECT_EQ(reader.count_metrics(), 0);
    tx.commit();
  }
  EXPECT_EQ(reader.count_metrics(), 2);
  EXPECT_EQ(reader.job_state(s.job_id), "done");
  EXPECT_EQ(reader.results().size(), 2u);
}

TEST(DbJobs, CompletingTwiceThrows) {
  Database db = Database::open(":memory:");
  Small s = add_small(db);
  db.start_job(s.job_id, "h", 0, 0);
  db.complete_job(s.job_id, two_metrics(), 1.0);
  EXPECT_THROW(db.complete_job(s.job_id, {{"other", 1.0, std::nullopt}}, 1.0), InternalError);
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_THROW(db.complete_job(s.job_id + 1000, two_metrics(), 1.0), InternalError);  // unknown job
  EXPECT_THROW(db.complete_job(s.job_id, {}, 1.0), InternalError);
}

TEST(DbJobs, FailAndRetry) {
  Database db = Database::open(":memory:");
  Small s = add_small(db);
  db.start_job(s.job_id, "h1", 0, 0);
  EXPECT_THROW(db.start_job(s.job_id, "h2", 1, 0), InternalError);  // already running
  db.fail_job(s.job_id, "CUDA out of memory");
  auto j = db.jobs().at(0);
  EXPECT_EQ(j.state, "failed");
  EXPECT_EQ(j.error, "CUDA out of memory");
  db.start_job(s.job_id, "h2", 1, 0);
  j = db.jobs().at(0);
  EXPECT_EQ(j.state, "running");
  EXPECT_EQ(j.attempts, 2);
  EXPECT_EQ(j.host, "h2");
  EXPECT_EQ(j.error, "");
  EXPECT_EQ(j.finished, "");
  db.complete_job(s.job_id, two_metrics(), 1.0);
  EXPECT_THROW(db.fail_job(s.job_id, "late"), InternalError);
  EXPECT_THROW(db.start_job(s.job_id, "h3", 0, 0), InternalError);
  EXPECT_EQ(db.job_state(s.job_id), "done");
  EXPECT_THROW(db.job_state(s.job_id + 1000), InternalError);
}

TEST(DbJobs, ResetInterruptedJobs) {
  Database db = Database::open(":memory:");
  Small s = add_small(db, "piqa");
  const auto running1 = s.job_id;
  const auto running2 = db.ensure_job(s.variant_id, "arc_easy", "{}");
  const auto done = db.ensure_job(s.variant_id, "wikitext", "{}");
  const auto failed = db.ensure_job(s.variant_id, "hellaswag", "{}");
  const auto pending = db.ensure_job(s.variant_id, "lambada_openai", "{}");
  for (auto id : {running1, running2, done, failed}) db.start_job(id, "h", 0, 0);
  db.complete_job(done, two_metrics(), 1.0);
  db.fail_job(failed, "x");
  EXPECT_EQ(db.reset_interrupted_jobs(), 2);
  EXPECT_EQ(db.job_state(running1), "pending");
  EXPECT_EQ(db.job_state(running2), "pending");
  EXPECT_EQ(db.job_state(done), "done");
  EXPECT_EQ(db.job_state(failed), "failed");
  EXPECT_EQ(db.job_state(pending), "pending");
  EXPECT_EQ(db.reset_interrupted_jobs(), 0);
  EXPECT_EQ(db.jobs({"pending"}).size(), 3u);
  EXPECT_EQ(db.jobs({"done"}).size(), 1u);
  EXPECT_EQ(db.jobs().size(), 5u);
  EXPECT_THROW(db.jobs({"finished"}), UsageError);
}

TEST(DbJobs, FindJobStateLooksUpWithoutCreating) {
  Database db = Database::open(":memory:");
  Small s = add_small(db, "piqa");
  const auto key = variant(s.model_id, s.cal_id, "drrqr", 0.25);
  EXPECT_EQ(db.find_job_state(key, "piqa", "{\"limit\":10}"), std::optional<std::string>("pending"));
  EXPECT_EQ(db.find_job_state(key, "piqa", "{\"limit\":11}"), std::nullopt);       // other eval config
  EXPECT_EQ(db.find_job_state(key, "hellaswag", "{\"limit\":10}"), std::nullopt);  // other task
  EXPECT_EQ(db.find_job_state(variant(s.model_id, std::nullopt, "drrqr", 0.25), "piqa", "{\"limit\":10}"),
            std::nullopt);  // no calibration is a different variant
  EXPECT_EQ(db.find_job_state(variant(s.model_id, s.cal_id, "drrqr", 0.5), "piqa", "{\"limit\":10}"), std::nullopt);
  db.start_job(s.job_id, "h", 0, 0);
  db.complete_job(s.job_id, two_metrics(), 1.0);
  EXPECT_EQ(db.find_job_state(key, "piqa", "{\"limit\":10}"), std::optional<std::string>("done"));
  EXPECT_EQ(db.jobs().size(), 1u);  // lookups created nothing
}

// ---------------------------------------------------------------------------------- queries

TEST(DbResults, JoinsFiltersAndOrder) {
  Database db = Database::open(":memory:");
  const auto m1 = db.ensure_model(model("models/a"));
  const auto m2 = db.ensure_model(model("models/b"));
  const auto cal = db.ensure_calibration(calibration(m1));
  struct Spec {
    std::int64_t model;
    std::optional<std::int64_t> cal;
    const char* method;
    double ratio;
    std::int64_t seed;
    const char* task;
    double value;
  };
  // Inserted out of order on purpose.
  const std::vector<Spec> specs = {
      {m1, cal, "drrqr", 0.5, 2, "piqa", 0.63},  {m1, cal, "qrcp", 0.5, 0, "piqa", 0.61},
      {m1, cal, "drrqr", 0.5, 1, "piqa", 0.64},
      {m1, cal, "drrqr", 0.25, 0, "piqa", 0.66}, {m1, std::nullopt, "none", 0.0, 0, "piqa", 0.7},
      {m2, std::nullopt, "l1", 0.5, 0, "piqa", 0.5}, {m1, cal, "drrqr", 0.5, 0, "arc_easy", 0.4},
  };
  for (const Spec& sp : specs) {
    VariantRecord v = variant(sp.model, sp.cal, sp.method, sp.ratio, sp.seed);
    v.head_k_dim = static_cast<int>(128 * (1 - sp.ratio));
    const auto job = db.ensure_job(db.ensure_variant(v), sp.task, "{}");
    db.start_job(job, "h", 0, 0);
    db.complete_job(job, {{"acc", sp.value, 0.01}, {"acc_norm", sp.value + 0.01, std::nullopt}}, 1.0);
  }
  // A pending job contributes nothing.
  db.ensure_job(db.ensure_variant(variant(m1, cal, "wanda", 0.5)), "piqa", "{}");

  auto all = db.results();
  ASSERT_EQ(all.size(), 14u);
  EXPECT_EQ(all[0].task, "arc_easy");
  auto acc = db.results({"", "piqa", "acc", ""});
  ASSERT_EQ(acc.size(), 6u);
  // Ordered by task, metric, method, ratio, seed.
  EXPECT_EQ(acc[0].method, "drrqr");
  EXPECT_DOUBLE_EQ(acc[0].ratio, 0.25);
  EXPECT_EQ(acc[0].head_k_dim, 96);
  EXPECT_EQ(acc[1].method, "drrqr");
  EXPECT_DOUBLE_EQ(acc[1].ratio, 0.5);
  EXPECT_EQ(acc[1].seed, 1);
  EXPECT_DOUBLE_EQ(acc[1].value, 0.64);
  EXPECT_EQ(acc[1].head_k_dim, 64);
  EXPECT_EQ(acc[2].seed, 2);
  EXPECT_DOUBLE_EQ(acc[2].value, 0.63);
  EXPECT_EQ(acc[3].method, "l1");
  EXPECT_EQ(acc[3].model, "models/b");
  EXPECT_EQ(acc[4].method, "none");
  EXPECT_EQ(acc[4].model, "models/a");
  EXPECT_EQ(acc[5].method, "qrcp");
  auto drrqr = db.results({"", "", "", "drrqr"});
  ASSERT_EQ(drrqr.size(), 8u);
  EXPECT_EQ(drrqr[0].task, "arc_easy");
  EXPECT_EQ(drrqr[1].metric, "acc_norm");
  EXPECT_EQ(drrqr[2].task, "piqa");
  EXPECT_EQ(drrqr[2].metric, "acc");
  auto qrcp = db.results({"", "", "", "qrcp"});
  ASSERT_EQ(qrcp.size(), 2u);
  EXPECT_EQ(qrcp[0].metric, "acc");
  ASSERT_TRUE(qrcp[0].stderr_value.has_value());
  EXPECT_DOUBLE_EQ(*qrcp[0].stderr_value, 0.01);
  EXPECT_EQ(qrcp[1].metric, "acc_norm");
  EXPECT_FALSE(qrcp[1].stderr_value.has_value());
  EXPECT_DOUBLE_EQ(qrcp[1].value, 0.62);
  EXPECT_EQ(db.results({"models/b", "", "", ""}).size(), 2u);
  EXPECT_EQ(db.results({"models/a", "piqa", "acc_norm", "drrqr"}).size(), 3u);
  EXPECT_TRUE(db.results({"models/c", "", "", ""}).empty());
  EXPECT_TRUE(db.results({"", "", "", "wanda"}).empty());
}

TEST(DbResults, NonFiniteValuesRoundTrip) {
  Database db = Database::open(":memory:");
  Small s = add_small(db, "wikitext");
  db.start_job(s.job_id, "h", 0, 0);
  const double inf = std::numeric_limits<double>::infinity();
  db.complete_job(s.job_id,
                  {{"word_perplexity", std::nan(""), std::nullopt}, {"bits_per_byte", inf, std::nullopt}}, 1.0);
  auto rows = db.results();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].metric, "bits_per_byte");
  EXPECT_EQ(rows[0].value, inf);
  EXPECT_TRUE(std::isnan(rows[1].value));
}

// ------------------------------------------------------------------------------ transactions

TEST(DbTransaction, RollsBackUnlessCommittedAndNests) {
  Database db = Database::open(":memory:");
  {
    auto tx = db.transaction();
    db.ensure_model(model("models/gone"));
  }
  EXPECT_TRUE(db.results().empty());
  std::int64_t job = 0;
  {
    auto tx = db.transaction();
    job = add_small(db).job_id;  // the ensure_* calls nest inside
    tx.commit();
    EXPECT_THROW(tx.commit(), InternalError);
  }
  EXPECT_EQ(db.job_state(job), "pending");
  EXPECT_EQ(db.ensure_model(model("models/gone")), 2);  // id 1 went to models/m1
  Database moved = std::move(db);
  EXPECT_EQ(moved.job_state(job), "pending");
}

// ------------------------------------------------------------------------------------- leases

// Above the largest pid_max Linux allows (2^22): never a live process.
constexpr std::int64_t kImpossiblePid = (std::int64_t{1} << 22) + 17;

// An owner on a host that is not this one: only its expiry can make its lease stale.
LeaseOwner foreign(std::int64_t pid, const std::string& host = "other-node") { return {host, pid, "1234"}; }

// A live process on this host other than us: our parent (ctest or the shell).
LeaseOwner parent_process() {
  const auto pid = static_cast<std::int64_t>(::getppid());
  return {this_host(), pid, process_start_time(pid).value_or("?")};
}

// The pid of a child that has exited; reaped unless `as_zombie` (then the caller reaps it).
std::int64_t exited_child(bool as_zombie = false) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  if (as_zombie) {
    // Wait until the kernel shows it as a zombie (state Z), without reaping it.
    for (int i = 0; i < 2000; ++i) {
      std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
      std::string line;
      std::getline(in, line);
      const auto close = line.rfind(')');
      if (close != std::string::npos && line.compare(close + 2, 1, "Z") == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  } else {
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  return pid;
}

// A clock the test moves by hand (unix seconds). Must outlive the Databases that use it.
struct FakeClock {
  double t = 1.7e9;
  std::function<double()> fn() {
    return [this] { return t; };
  }
};

TEST(DbLease, OwnerIdRoundTripsAndNamesThisProcess) {
  const LeaseOwner me = this_process();
  EXPECT_EQ(me.pid, static_cast<std::int64_t>(::getpid()));
  EXPECT_EQ(me.host, this_host());
  ASSERT_FALSE(me.start_time.empty());
  EXPECT_EQ(process_start_time(me.pid), std::optional<std::string>(me.start_time));
  // Start times count clock ticks since boot: our parent started no later than we did.
  const LeaseOwner parent = parent_process();
  EXPECT_LE(std::stoll(parent.start_time), std::stoll(me.start_time));
  EXPECT_EQ(me.id(), me.host + ":" + std::to_string(me.pid) + ":" + me.start_time);
  const auto back = LeaseOwner::parse(me.id());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->host, me.host);
  EXPECT_EQ(back->pid, me.pid);
  EXPECT_EQ(back->start_time, me.start_time);
  const auto odd = LeaseOwner::parse("fe80::1:42:77");  // a host with ':' in it
  ASSERT_TRUE(odd.has_value());
  EXPECT_EQ(odd->host, "fe80::1");
  EXPECT_EQ(odd->pid, 42);
  EXPECT_EQ(odd->start_time, "77");
  for (const char* bad : {"", "node", "node:12", ":12:3", "node:x:3", "node:12:y", "node::3"})
    EXPECT_FALSE(LeaseOwner::parse(bad).has_value()) << bad;
  EXPECT_FALSE(process_start_time(kImpossiblePid).has_value());
  EXPECT_FALSE(process_start_time(0).has_value());
}

TEST(DbLease, StalenessRules) {
  const double now = 1000.0;
  const LeaseOwner me = this_process();
  const std::string here = me.host;
  EXPECT_TRUE(lease_is_stale("", now + 60, now, here));              // no owner
  EXPECT_TRUE(lease_is_stale(me.id(), std::nullopt, now, here));     // no expiry
  EXPECT_TRUE(lease_is_stale(me.id(), now - 0.5, now, here));        // expired, though alive
  EXPECT_FALSE(lease_is_stale(me.id(), now + 60, now, here));        // alive here
  EXPECT_FALSE(lease_is_stale(me.id(), now, now, here));             // expires exactly now: not yet past
  EXPECT_FALSE(lease_is_stale(parent_process().id(), now + 60, now, here));
  LeaseOwner reused = parent_process();
  reused.start_time = "1";  // same pid, another process
  EXPECT_TRUE(lease_is_stale(reused.id(), now + 60, now, here));
  EXPECT_TRUE(lease_is_stale(LeaseOwner{here, kImpossiblePid, "1"}.id(), now + 60, now, here));
  EXPECT_TRUE(lease_is_stale(LeaseOwner{here, exited_child(), "1"}.id(), now + 60, now, here));
  const std::int64_t zombie = exited_child(/*as_zombie=*/true);
  EXPECT_TRUE(lease_is_stale(LeaseOwner{here, zombie, "1"}.id(), now + 60, now, here));
  int status = 0;
  ::waitpid(static_cast<pid_t>(zombie), &status, 0);
  // Another host's pids cannot be looked at: only the expiry counts there.
  EXPECT_FALSE(lease_is_stale(foreign(kImpossiblePid).id(), now + 60, now, here));
  EXPECT_TRUE(lease_is_stale(foreign(kImpossiblePid).id(), now - 1, now, here));
  // The host is a parameter: the same dead-pid lease is live to a machine that is not its host.
  EXPECT_FALSE(lease_is_stale(LeaseOwner{here, kImpossiblePid, "1"}.id(), now + 60, now, "elsewhere"));
  EXPECT_FALSE(lease_is_stale("not an owner id", now + 60, now, here));  // unparseable: expiry decides
}

TEST(DbLease, ClaimPendingLeasesItToTheOwner) {
  FakeClock clock;
  Database db = Database::open(":memory:");
  db.set_clock(clock.fn());
  const auto run = db.begin_run("[]", "sha", "login1");
  Small s = add_small(db);
  const LeaseOwner me = this_process();
  EXPECT_TRUE(db.claim_job(s.job_id, me, 30, "node7", 2, run));
  auto j = db.jobs().at(0);
  EXPECT_EQ(j.state, "running");
  EXPECT_EQ(j.attempts, 1);
  EXPECT_EQ(j.host, "node7");
  EXPECT_EQ(j.rank, 2);
  EXPECT_EQ(j.lease_owner, me.id());
  EXPECT_FALSE(j.started.empty());
  EXPECT_THROW(db.claim_job(s.job_id, me, 30, "node7", 2, run), InternalError);  // our own job again
  EXPECT_EQ(db.jobs().at(0).attempts, 1);
  db.fail_job(s.job_id, "CUDA out of memory", me);
  j = db.jobs().at(0);
  EXPECT_EQ(j.state, "failed");
  EXPECT_EQ(j.lease_owner, "");
  EXPECT_EQ(j.error, "CUDA out of memory");
  EXPECT_TRUE(db.claim_job(s.job_id, me, 30, "node8", 0, run));  // failed -> running (retry)
  EXPECT_EQ(db.jobs().at(0).attempts, 2);
  db.complete_job(s.job_id, two_metrics(), 1.5, me);
  j = db.jobs().at(0);
  EXPECT_EQ(j.state, "done");
  EXPECT_EQ(j.lease_owner, "");
  EXPECT_FALSE(db.claim_job(s.job_id, me, 30, "node7", 2, run));  // done: never again
  EXPECT_FALSE(db.claim_job(s.job_id, foreign(1), 30, "node9", 0, 0));
  j = db.jobs().at(0);
  EXPECT_EQ(j.state, "done");
  EXPECT_EQ(j.attempts, 2);
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_THROW(db.claim_job(s.job_id + 100, me, 30, "h", 0, 0), InternalError);  // unknown job
}

TEST(DbLease, LiveLeaseOfAnotherOwnerIsNotTaken) {
  FakeClock clock;
  Database db = Database::open(":memory:");
  db.set_clock(clock.fn());
  Small s = add_small(db);
  const auto local_job = db.ensure_job(s.variant_id, "arc_easy", "{}");
  const LeaseOwner me = this_process();
  const LeaseOwner other = foreign(4242);
  ASSERT_TRUE(db.claim_job(s.job_id, other, 60, "other-node", 1, 0));
  ASSERT_TRUE(db.claim_job(local_job, parent_process(), 1000, "here", 0, 0));  // a live process here
  clock.t += 59;
  EXPECT_FALSE(db.claim_job(s.job_id, me, 60, "here", 0, 0));  // another host, lease not expired
  EXPECT_FALSE(db.claim_job(local_job, me, 60, "here", 0, 0));
  auto rows = db.jobs();
  EXPECT_EQ(rows.at(0).lease_owner, other.id());
  EXPECT_EQ(rows.at(0).attempts, 1);
  EXPECT_EQ(rows.at(0).host, "other-node");
  EXPECT_EQ(rows.at(1).lease_owner, parent_process().id());
  clock.t += 2;  // now past the other host's expiry
  EXPECT_TRUE(db.claim_job(s.job_id, me, 60, "here", 0, 0));
  rows = db.jobs();
  EXPECT_EQ(rows.at(0).lease_owner, me.id());
  EXPECT_EQ(rows.at(0).attempts, 2);
  EXPECT_EQ(rows.at(0).host, "here");
  EXPECT_FALSE(db.claim_job(s.job_id, other, 60, "other-node", 1, 0));  // ours now
}

TEST(DbLease, LeaseOfADeadProcessOnThisHostIsTakenOverBeforeExpiry) {
  FakeClock clock;
  Database db = Database::open(":memory:");
  db.set_clock(clock.fn());
  Small s = add_small(db);
  const auto second = db.ensure_job(s.variant_id, "arc_easy", "{}");
  const auto third = db.ensure_job(s.variant_id, "hellaswag", "{}");
  const std::string here = this_host();
  ASSERT_TRUE(db.claim_job(s.job_id, LeaseOwner{here, kImpossiblePid, "1"}, 1e6, here, 0, 0));
  ASSERT_TRUE(db.claim_job(second, LeaseOwner{here, exited_child(), "1"}, 1e6, here, 0, 0));
  // Same host name as an impossible pid, but on a host that is not this one: trusted until expiry.
  ASSERT_TRUE(db.claim_job(third, LeaseOwner{"node-b", kImpossiblePid, "1"}, 1e6, "node-b", 0, 0));
  const LeaseOwner me = this_process();
  EXPECT_TRUE(db.claim_job(s.job_id, me, 30, here, 0, 0));
  EXPECT_TRUE(db.claim_job(second, me, 30, here, 0, 0));
  EXPECT_FALSE(db.claim_job(third, me, 30, here, 0, 0));
  EXPECT_EQ(db.jobs().at(0).lease_owner, me.id());
  EXPECT_EQ(db.jobs().at(1).lease_owner, me.id());
  EXPECT_EQ(db.jobs().at(2).lease_owner, (LeaseOwner{"node-b", kImpossiblePid, "1"}.id()));
}

TEST(DbLease, RenewFromAHeartbeatConnectionExtendsTheLease) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  FakeClock clock;
  const double t0 = clock.t;
  Database db = Database::open(p);
  db.set_clock(clock.fn());
  const LeaseOwner me = this_process();
  const auto run = db.begin_run("[\"sweep\"]", "sha", me.host, me, 10);
  Small s = add_small(db);
  const auto other_job = db.ensure_job(s.variant_id, "arc_easy", "{}");
  ASSERT_TRUE(db.claim_job(s.job_id, me, 10, me.host, 0, run));
  ASSERT_TRUE(db.claim_job(other_job, foreign(7), 10, "other-node", 0, 0));
  RawDb raw(p);
  auto expiry = [&](const char* table, std::int64_t id) {
    return raw.integer(cat("SELECT CAST(lease_expires AS INTEGER) FROM ", table, " WHERE id = ", id));
  };
  EXPECT_EQ(expiry("jobs", s.job_id), t0 + 10);
  EXPECT_EQ(expiry("runs", run), t0 + 10);
  clock.t = t0 + 8;
  int renewed = -1;
  std::thread heartbeat([&] {  // its own connection, as the sweep's heartbeat thread has
    Database hb = Database::open(p);
    hb.set_clock(clock.fn());
    renewed = hb.renew_leases(me, 10);
  });
  heartbeat.join();
  EXPECT_EQ(renewed, 1);  // only our job, not the other owner's
  EXPECT_EQ(expiry("jobs", s.job_id), t0 + 18);
  EXPECT_EQ(expiry("runs", run), t0 + 18);
  EXPECT_EQ(expiry("jobs", other_job), t0 + 10);
  clock.t = t0 + 15;  // past the first expiry, inside the renewed one
  EXPECT_FALSE(db.claim_job(s.job_id, foreign(8), 10, "other-node", 0, 0));
  EXPECT_TRUE(db.claim_job(other_job, foreign(8), 10, "other-node", 0, 0));  // not renewed: expired
  EXPECT_EQ(db.renew_leases(foreign(7), 10), 0);
  clock.t = t0 + 19;
  EXPECT_TRUE(db.claim_job(s.job_id, foreign(8), 10, "other-node", 0, 0));
  EXPECT_EQ(db.renew_leases(me, 10), 0);
}

TEST(DbLease, CompletingATakenOverJobIsRefusedAndWritesNothing) {
  FakeClock clock;
  Database db = Database::open(":memory:");
  db.set_clock(clock.fn());
  Small s = add_small(db);
  const LeaseOwner a = foreign(1, "node-a"), b = foreign(2, "node-b");
  ASSERT_TRUE(db.claim_job(s.job_id, a, 10, "node-a", 0, 0));
  clock.t += 11;
  ASSERT_TRUE(db.claim_job(s.job_id, b, 10, "node-b", 0, 0));
  const std::string taken = "job " + std::to_string(s.job_id) + " was taken over by " + b.id();
  expect_input_error([&] { db.complete_job(s.job_id, two_metrics(), 1.0, a); },
                     {":memory:", taken, "its result is discarded", "raise --lease-seconds"});
  EXPECT_EQ(db.count_metrics(), 0);
  expect_input_error([&] { db.fail_job(s.job_id, "late failure", a); }, {taken});
  auto j = db.jobs().at(0);
  EXPECT_EQ(j.state, "running");
  EXPECT_EQ(j.lease_owner, b.id());
  EXPECT_EQ(j.error, "");
  db.complete_job(s.job_id, two_metrics(), 1.0, b);
  expect_input_error([&] { db.complete_job(s.job_id, two_metrics(), 1.0, a); },
                     {"taken over by another run (the job is done now)"});
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_EQ(db.job_state(s.job_id), "done");
  // A job started without a lease (start_job) is nobody's: lease-checked updates refuse it too.
  const auto plain = db.ensure_job(s.variant_id, "arc_easy", "{}");
  db.start_job(plain, "h", 0, 0);
  expect_input_error([&] { db.complete_job(plain, two_metrics(), 1.0, a); }, {"taken over by another run"});
  // Our own lease having expired does not matter while nobody took the job.
  const auto mine = db.ensure_job(s.variant_id, "hellaswag", "{}");
  ASSERT_TRUE(db.claim_job(mine, a, 10, "node-a", 0, 0));
  clock.t += 100;
  db.complete_job(mine, two_metrics(), 1.0, a);
  EXPECT_EQ(db.job_state(mine), "done");
}

TEST(DbLease, ReleaseGivesBackOnlyTheOwnersRunningJobs) {
  Database db = Database::open(":memory:");
  Small s = add_small(db);
  const LeaseOwner a = foreign(1, "node-a"), b = foreign(2, "node-b");
  std::vector<std::int64_t> ids = {s.job_id};
  for (const char* t : {"arc_easy", "hellaswag", "wikitext", "lambada_openai"})
    ids.push_back(db.ensure_job(s.variant_id, t, "{}"));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(db.claim_job(ids[i], a, 60, "node-a", 0, 0));
  ASSERT_TRUE(db.claim_job(ids[3], b, 60, "node-b", 0, 0));
  db.complete_job(ids[2], two_metrics(), 1.0, a);
  EXPECT_EQ(db.release_jobs(a), 2);
  auto rows = db.jobs();
  for (int i : {0, 1}) {
    EXPECT_EQ(rows[i].state, "pending");
    EXPECT_EQ(rows[i].lease_owner, "");
    EXPECT_EQ(rows[i].attempts, 1);
  }
  EXPECT_EQ(rows[2].state, "done");
  EXPECT_EQ(rows[3].state, "running");
  EXPECT_EQ(rows[3].lease_owner, b.id());
  EXPECT_EQ(rows[4].state, "pending");
  EXPECT_EQ(db.release_jobs(a), 0);
  EXPECT_TRUE(db.claim_job(ids[0], b, 60, "node-b", 0, 0));  // free for anybody again
}

TEST(DbLease, ResetInterruptedJobsSparesLiveLeases) {
  TempDir dir;
  const std::string p = dir.file("r.db");
  FakeClock clock;
  Database db = Database::open(p);
  db.set_clock(clock.fn());
  const std::string here = this_host();
  const LeaseOwner me = this_process(), dead{here, kImpossiblePid, "1"};
  Small s = add_small(db);
  auto job = [&](const char* task) { return db.ensure_job(s.variant_id, task, "{}"); };
  const auto live_foreign = s.job_id, expired_foreign = job("t1"), dead_local = job("t2"), unleased = job("t3"),
             mine = job("t4"), done = job("t5"), pending = job("t6");
  ASSERT_TRUE(db.claim_job(live_foreign, foreign(1), 1000, "other-node", 0, 0));
  ASSERT_TRUE(db.claim_job(expired_foreign, foreign(2), 5, "other-node", 0, 0));
  ASSERT_TRUE(db.claim_job(dead_local, dead, 1000, here, 0, 0));
  db.start_job(unleased, here, 0, 0);
  ASSERT_TRUE(db.claim_job(mine, me, 1000, here, 0, 0));
  ASSERT_TRUE(db.claim_job(done, me, 1000, here, 0, 0));
  db.complete_job(done, two_metrics(), 1.0, me);
  const auto run_dead = db.begin_run("[1]", "sha", here, dead, 1000);
  const auto run_live = db.begin_run("[2]", "sha", here, me, 1000);
  const auto run_expired = db.begin_run("[3]", "sha", "other-node", foreign(3), 5);
  const auto run_plain = db.begin_run("[4]", "sha", here);
  const auto run_ended = db.begin_run("[5]", "sha", here, dead, 1000);
  db.end_run(run_ended, "ok");
  clock.t += 10;
  EXPECT_EQ(db.reset_interrupted_jobs(), 3);
  EXPECT_EQ(db.job_state(live_foreign), "running");
  EXPECT_EQ(db.job_state(expired_foreign), "pending");
  EXPECT_EQ(db.job_state(dead_local), "pending");
  EXPECT_EQ(db.job_state(unleased), "pending");
  EXPECT_EQ(db.job_state(mine), "running");
  EXPECT_EQ(db.job_state(done), "done");
  EXPECT_EQ(db.job_state(pending), "pending");
  for (const auto& r : db.jobs())
    if (r.state == "pending") {
      EXPECT_EQ(r.lease_owner, "") << r.id;
    }
  EXPECT_EQ(db.jobs().at(0).lease_owner, foreign(1).id());
  RawDb raw(p);
  auto status = [&](std::int64_t run) { return raw.text("SELECT status FROM runs WHERE id = " + std::to_string(run)); };
  EXPECT_EQ(status(run_dead), "interrupted");
  EXPECT_NE(raw.text("SELECT finished FROM runs WHERE id = " + std::to_string(run_dead)), "");
  EXPECT_EQ(status(run_live), "running");
  EXPECT_EQ(status(run_expired), "interrupted");
  EXPECT_EQ(status(run_plain), "running");  // no owner recorded: cannot tell
  EXPECT_EQ(status(run_ended), "ok");
  EXPECT_EQ(raw.integer("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL AND state <> 'running'"), 0);
  EXPECT_EQ(db.reset_interrupted_jobs(), 0);
}

TEST(DbLease, MigrationFromVersionTwoTreatsRunningJobsAsStale) {
  TempDir dir;
  const std::string p = dir.file("v2.db");
  std::int64_t running = 0, running2 = 0, done = 0, failed = 0, pending = 0;
  {
    Database db = Database::open_at_version(p, 2);
    Small s = add_small(db);
    running = s.job_id;
    running2 = db.ensure_job(s.variant_id, "arc_easy", "{}");
    done = db.ensure_job(s.variant_id, "wikitext", "{}");
    failed = db.ensure_job(s.variant_id, "hellaswag", "{}");
    pending = db.ensure_job(s.variant_id, "lambada_openai", "{}");
    for (auto id : {running, running2, done, failed}) db.start_job(id, "old-node", 1, 0);
    db.complete_job(done, two_metrics(), 2.0);
    db.fail_job(failed, "boom");
    db.begin_run("[\"old\"]", "sha", "old-node");
    EXPECT_THROW(db.claim_job(pending, this_process(), 30, "h", 0, 0), InternalError);  // schema 2: no leases
    EXPECT_THROW(db.renew_leases(this_process(), 30), InternalError);
    EXPECT_EQ(db.jobs().at(0).lease_owner, "");
  }
  {
    RawDb raw(p);
    EXPECT_EQ(raw.integer("PRAGMA user_version"), 2);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM pragma_table_info('jobs') WHERE name = 'lease_owner'"), 0);
  }
  Database db = Database::open(p);
  EXPECT_EQ(db.schema_version(), 3);
  {
    RawDb raw(p);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM pragma_table_info('jobs') WHERE name IN "
                          "('lease_owner', 'lease_expires')"),
              2);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM pragma_table_info('runs') WHERE name IN ('owner', 'lease_expires')"),
              2);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_lease_owner'"), 1);
    EXPECT_EQ(raw.text("SELECT status FROM runs WHERE id = 1"), "running");
  }
  EXPECT_EQ(db.count_metrics(), 2);
  EXPECT_EQ(db.job_state(done), "done");
  EXPECT_EQ(db.jobs({"failed"}).at(0).error, "boom");
  EXPECT_EQ(db.job_state(running), "running");
  EXPECT_EQ(db.jobs().at(0).lease_owner, "");
  const LeaseOwner me = this_process();
  EXPECT_TRUE(db.claim_job(running, me, 30, "new-node", 0, 0));  // no lease: taken over
  EXPECT_EQ(db.jobs().at(0).attempts, 2);
  EXPECT_EQ(db.reset_interrupted_jobs(), 1);  // running2; ours is live now
  EXPECT_EQ(db.job_state(running2), "pending");
  EXPECT_EQ(db.job_state(running), "running");
  EXPECT_EQ(db.job_state(pending), "pending");
  EXPECT_FALSE(db.claim_job(done, me, 30, "new-node", 0, 0));
}

TEST(DbLease, ConcurrentClaimsFromSeveralConnectionsClaimEachJobOnce) {
  ASSERT_NE(sqlite3_threadsafe(), 0);
  TempDir dir;
  const std::string p = dir.file("shared.db");
  constexpr int kJobs = 50;
  constexpr int kThreads = 4;
  std::vector<std::int64_t> ids;
  {
    Database db = Database::open(p);
    Small s = add_small(db);
    ids.push_back(s.job_id);
    for (int i = 1; i < kJobs; ++i) ids.push_back(db.ensure_job(s.variant_id, "task" + std::to_string(i), "{}"));
  }
  std::vector<Database> conns;
  std::vector<LeaseOwner> owners;
  for (int k = 0; k < kThreads; ++k) {
    conns.push_back(Database::open(p));
    owners.push_back(foreign(100 + k, "node-" + std::to_string(k)));
  }
  std::vector<std::vector<std::int64_t>> claimed(kThreads);
  std::vector<std::string> errors(kThreads + 1);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false}, claims_over{false};
  std::atomic<int> renewals{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      std::vector<std::int64_t> order = ids;
      std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(k)));
      ++ready;
      while (!go) std::this_thread::yield();
      try {
        for (std::int64_t id : order)
          if (conns[k].claim_job(id, owners[k], 600, "node-" + std::to_string(k), k, 0)) claimed[k].push_back(id);
      } catch (const std::exception& e) {
        errors[k] = e.what();
      }
    });
  // A heartbeat on a connection of its own, renewing the first owner's leases meanwhile.
  threads.emplace_back([&] {
    try {
      Database hb = Database::open(p);
      ++ready;
      while (!go) std::this_thread::yield();
      while (!claims_over) {
        hb.renew_leases(owners[0], 600);
        ++renewals;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } catch (const std::exception& e) {
      errors[kThreads] = e.what();
      ++ready;
    }
  });
  while (ready < kThreads + 1) std::this_thread::yield();
  go = true;
  for (int k = 0; k < kThreads; ++k) threads[k].join();
  claims_over = true;
  threads.back().join();
  for (const auto& e : errors) EXPECT_EQ(e, "");
  EXPECT_GT(renewals.load(), 0);
  std::map<std::int64_t, int> count;
  std::map<std::int64_t, std::string> claimer;
  for (int k = 0; k < kThreads; ++k)
    for (std::int64_t id : claimed[k]) {
      ++count[id];
      claimer[id] = owners[k].id();
    }
  EXPECT_EQ(count.size(), static_cast<std::size_t>(kJobs));
  for (const auto& [id, n] : count) EXPECT_EQ(n, 1) << "job " << id;
  const auto rows = Database::open(p).jobs();
  ASSERT_EQ(rows.size(), static_cast<std::size_t>(kJobs));
  for (const auto& r : rows) {
    EXPECT_EQ(r.state, "running");
    EXPECT_EQ(r.attempts, 1) << r.id;
    EXPECT_EQ(r.lease_owner, claimer[r.id]) << r.id;
  }
}

// -------------------------------------------------------------------------------------- merge

// A small sweep plan: one model, one calibration, four variants x three tasks = 12 jobs, returned
// in plan order (the same order in every database built this way).
std::vector<std::int64_t> add_plan(Database& db, const std::string& model_path = "models/m1") {
  const auto m = db.ensure_model(model(model_path));
  const auto c = db.ensure_calibration(calibration(m));
  std::vector<VariantRecord> variants = {variant(m, std::nullopt, "none", 0.0), variant(m, c, "drrqr", 0.25),
                                         variant(m, c, "drrqr", 0.5), variant(m, std::nullopt, "l1", 0.5)};
  std::vector<std::int64_t> jobs;
  for (auto& v : variants) {
    v.head_k_dim = static_cast<int>(64 * (1 - v.ratio));
    v.selection_json = cat("{\"method\":\"", v.method, "\",\"ratio\":", v.ratio, "}");
    const auto id = db.ensure_variant(v);
    for (const char* t : {"piqa", "wikitext", "arc_easy"}) jobs.push_back(db.ensure_job(id, t, "{\"limit\":8}"));
  }
  return jobs;
}

// The metrics the i-th job of the plan scores: the same in every database; one NaN.
std::vector<MetricValue> plan_metrics(std::size_t i) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  return {{"acc", 0.5 + 0.01 * static_cast<double>(i), 0.001 * static_cast<double>(i + 1)},
          {"word_perplexity", i == 4 ? nan : 10.0 + static_cast<double>(i), std::nullopt}};
}

// Runs (claims and completes) the plan's jobs i with keep(i), under `run`.
void run_plan(Database& db, const std::vector<std::int64_t>& jobs, std::int64_t run,
              const std::function<bool(std::size_t)>& keep = [](std::size_t) { return true; }) {
  const LeaseOwner me = this_process();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (!keep(i)) continue;
    ASSERT_TRUE(db.claim_job(jobs[i], me, 60, "node" + std::to_string(i % 3), static_cast<int>(i % 2), run));
    db.complete_job(jobs[i], plan_metrics(i), 1.0 + static_cast<double>(i), me);
  }
}

bool same(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// Results equal field by field, values exactly (NaN equal to NaN).
void expect_same_results(const std::vector<ResultRow>& got, const std::vector<ResultRow>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const ResultRow &g = got[i], &w = want[i];
    SCOPED_TRACE(cat("row ", i, ": ", w.method, " ", w.ratio, " ", w.task, " ", w.metric));
    EXPECT_EQ(g.model, w.model);
    EXPECT_EQ(g.method, w.method);
    EXPECT_EQ(g.ratio, w.ratio);
    EXPECT_EQ(g.seed, w.seed);
    EXPECT_EQ(g.head_k_dim, w.head_k_dim);
    EXPECT_EQ(g.task, w.task);
    EXPECT_EQ(g.metric, w.metric);
    EXPECT_TRUE(same(g.value, w.value)) << g.value << " vs " << w.value;
    EXPECT_EQ(g.stderr_value.has_value(), w.stderr_value.has_value());
    if (g.stderr_value && w.stderr_value) {
      EXPECT_EQ(*g.stderr_value, *w.stderr_value);
    }
  }
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Everything a merge may change, as text: rows of every table (ids included).
std::string dump(const std::string& path) {
  RawDb raw(path);
  std::string out;
  for (const char* sql :
       {"SELECT group_concat(id || path || sha || arch || config_json, '|') FROM models",
        "SELECT group_concat(id || model_id || data_sha || n_tokens || stats_path, '|') FROM calibrations",
        "SELECT group_concat(id || model_id || IFNULL(calibration_id, '-') || method || ratio || selection_json, '|') "
        "FROM variants",
        "SELECT group_concat(id || argv_json || host || started || IFNULL(finished, '-') || status, '|') FROM runs",
        "SELECT group_concat(id || variant_id || task || state || attempts || IFNULL(run_id, '-') || "
        "IFNULL(error, '-') || IFNULL(lease_owner, '-'), '|') FROM jobs",
        "SELECT group_concat(job_id || name || IFNULL(value, 'nan') || IFNULL(stderr, '-'), '|') FROM metrics"})
    out += raw.text(sql) + "\n";
  return out;
}

TEST(DbMerge, CopiesEverythingWithRemappedIds) {
  TempDir dir;
  const std::string src = dir.file("element.db");
  std::vector<ResultRow> want;
  std::vector<JobRow> src_jobs;
  {
    Database db = Database::open(src);
    const auto run = db.begin_run("[\"sweep\",\"--shard\",\"0\"]", "sha1", "node0", this_process(), 60);
    const auto jobs = add_plan(db);
    run_plan(db, jobs, run, [](std::size_t i) { return i % 2 == 0; });
    db.fail_job(jobs[1], "CUDA out of memory");
    db.end_run(run, "ok");
    want = db.results();
    src_jobs = db.jobs();
  }
  const std::string before = file_bytes(src);
  const std::string into_path = dir.file("merged.db");
  Database into = Database::open(into_path);
  // Rows of another sweep first, so every id of the source means something else here.
  const auto other = add_plan(into, "models/other");
  into.begin_run("[\"other\"]", "sha0", "login");
  const MergeReport r = into.merge_from(src);
  EXPECT_EQ(r.models_added, 1);
  EXPECT_EQ(r.calibrations_added, 1);
  EXPECT_EQ(r.variants_added, 4);
  EXPECT_EQ(r.runs_added, 1);
  EXPECT_EQ(r.jobs_added, 12);
  EXPECT_EQ(r.jobs_updated, 0);
  EXPECT_EQ(r.jobs_skipped, 0);
  EXPECT_EQ(r.metrics_added, 12);  // 6 done jobs x 2 metrics
  expect_same_results(into.results({"models/m1", "", "", ""}), want);
  EXPECT_TRUE(into.results({"models/other", "", "", ""}).empty());
  const auto rows = into.jobs();
  ASSERT_EQ(rows.size(), 24u);
  for (std::size_t i = 0; i < 12; ++i) {
    const JobRow &g = rows[12 + i], &w = src_jobs[i];
    EXPECT_EQ(g.id, other.back() + 1 + static_cast<std::int64_t>(i));  // re-mapped
    EXPECT_NE(g.id, w.id);
    EXPECT_EQ(g.model, "models/m1");
    EXPECT_EQ(g.method, w.method);
    EXPECT_EQ(g.task, w.task);
    EXPECT_EQ(g.state, w.state);
    EXPECT_EQ(g.attempts, w.attempts);
    EXPECT_EQ(g.host, w.host);
    EXPECT_EQ(g.rank, w.rank);
    EXPECT_EQ(g.started, w.started);
    EXPECT_EQ(g.finished, w.finished);
    EXPECT_EQ(g.seconds, w.seconds);
    EXPECT_EQ(g.error, w.error);
  }
  EXPECT_EQ(rows[13].state, "failed");
  EXPECT_EQ(rows[13].error, "CUDA out of memory");
  RawDb raw(into_path);
  EXPECT_EQ(raw.text("SELECT status FROM runs WHERE id = 2"), "ok");
  EXPECT_EQ(raw.text("SELECT owner FROM runs WHERE id = 2"), this_process().id());
  EXPECT_EQ(raw.integer("SELECT count(DISTINCT run_id) FROM jobs WHERE id > 12 AND run_id IS NOT NULL"), 1);
  EXPECT_EQ(raw.integer("SELECT min(run_id) FROM jobs WHERE id > 12"), 2);  // the copied run, not source id 1
  EXPECT_EQ(raw.integer("SELECT count(*) FROM variants v JOIN calibrations c ON c.id = v.calibration_id "
                        "JOIN models m ON m.id = c.model_id WHERE m.path = 'models/m1'"),
            2);
  EXPECT_EQ(file_bytes(src), before);  // the source was only read
}

TEST(DbMerge, MergingTheSameSourceTwiceAddsNothing) {
  TempDir dir;
  const std::string src = dir.file("a.db"), into_path = dir.file("into.db");
  {
    Database db = Database::open(src);
    const auto run = db.begin_run("[\"a\"]", "sha1", "node0");
    const auto jobs = add_plan(db);
    run_plan(db, jobs, run, [](std::size_t i) { return i != 7; });  // job 4 scores NaN
    db.end_run(run, "ok");
  }
  Database into = Database::open(into_path);
  const MergeReport first = into.merge_from(src);
  EXPECT_EQ(first.jobs_added, 12);
  const std::string after_first = dump(into_path);
  const MergeReport second = into.merge_from(src);
  EXPECT_EQ(second.models_added + second.calibrations_added + second.variants_added + second.runs_added, 0);
  EXPECT_EQ(second.jobs_added, 0);
  EXPECT_EQ(second.jobs_updated, 0);
  EXPECT_EQ(second.metrics_added, 0);
  EXPECT_EQ(second.jobs_skipped, 12);  // NaN compared equal to NaN
  EXPECT_EQ(dump(into_path), after_first);
  // A database merged into itself is a no-op too.
  const MergeReport self = into.merge_from(into_path);
  EXPECT_EQ(self.jobs_skipped, 12);
  EXPECT_EQ(self.runs_added, 0);
  EXPECT_EQ(dump(into_path), after_first);
}

TEST(DbMerge, ConflictsRefuseTheWholeMergeAndLeaveTheTargetUnchanged) {
  TempDir dir;
  const std::string src = dir.file("src.db");
  {
    Database db = Database::open(src);
    add_plan(db, "models/extra");  // rows that come before the conflict in merge order
    run_plan(db, add_plan(db), 0);
  }
  auto target = [&](const std::string& name, const std::function<void(Database&)>& build) {
    const std::string p = dir.file(name);
    Database db = Database::open(p);
    build(db);
    return p;
  };
  // The same done job with another value.
  const std::string metrics_path = target("metrics.db", [](Database& db) {
    const auto jobs = add_plan(db);
    run_plan(db, jobs, 0, [](std::size_t i) { return i != 5; });
    const LeaseOwner me = this_process();
    ASSERT_TRUE(db.claim_job(jobs[5], me, 60, "h", 0, 0));
    auto m = plan_metrics(5);
    m[0].value = std::nextafter(m[0].value, 1.0);  // one ulp apart is a different result
    db.complete_job(jobs[5], m, 1.0, me);
  });
  // The same done job with a metric more.
  const std::string extra_path = target("extra.db", [](Database& db) {
    const auto jobs = add_plan(db);
    run_plan(db, jobs, 0, [](std::size_t i) { return i != 2; });
    const LeaseOwner me = this_process();
    ASSERT_TRUE(db.claim_job(jobs[2], me, 60, "h", 0, 0));
    auto m = plan_metrics(2);
    m.push_back({"acc_norm", 0.1, std::nullopt});
    db.complete_job(jobs[2], m, 1.0, me);
  });
  // The same variant key with another selection.
  const std::string selection_path = target("selection.db", [](Database& db) {
    const auto m = db.ensure_model(model("models/m1"));
    const auto c = db.ensure_calibration(calibration(m));
    VariantRecord v = variant(m, c, "drrqr", 0.25);
    v.head_k_dim = 48;
    v.selection_json = "{\"other\":true}";
    db.ensure_variant(v);
  });
  // The same model path and sha with another config.
  const std::string config_path = target("config.db", [](Database& db) {
    ModelRecord m = model("models/m1");
    m.config_json = "{\"hidden\":128}";
    db.ensure_model(m);
  });
  // The same calibration key with another token count.
  const std::string tokens_path = target("tokens.db", [](Database& db) {
    const auto m = db.ensure_model(model("models/m1"));
    CalibrationRecord c = calibration(m);
    c.n_tokens = 1;
    db.ensure_calibration(c);
  });
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {metrics_path, {"done in both with different metrics", "acc = 0.55000000000000004 (stderr 0.0060000000000000001) in '" + src +
                         "' but 0.55000000000000016", "job arc_easy of variant drrqr ratio 0.25"}},
      {extra_path, {"done in both with different metrics", "acc_norm only in '" + extra_path + "'"}},
      {selection_path, {"variant drrqr ratio 0.25 seed 0 of model 'models/m1'", "selection {\"other\":true}",
                        "head_k_dim 48"}},
      {config_path, {"model 'models/m1' (sha sha-a)", "{\"hidden\":128}"}},
      {tokens_path, {"calibration", "8192 tokens in '" + src + "' but 1 in '" + tokens_path + "'"}},
  };
  for (const auto& [path, needles] : cases) {
    SCOPED_TRACE(path);
    const std::string before = dump(path);
    {
      Database into = Database::open(path);
      std::vector<std::string> all = needles;
      all.push_back("cannot merge '" + src + "' into '" + path + "'");
      all.push_back("nothing was merged");
      try {
        into.merge_from(src);
        ADD_FAILURE() << "expected InputError";
      } catch (const InputError& e) {
        for (const auto& n : all) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << "\n" << e.what();
      }
      EXPECT_TRUE(into.results({"models/extra", "", "", ""}).empty());
    }
    EXPECT_EQ(dump(path), before);
  }
}

TEST(DbMerge, DoneInTheSourceFinishesUnfinishedTargetJobs) {
  TempDir dir;
  const std::string src = dir.file("src.db");
  std::vector<ResultRow> want;
  {
    Database db = Database::open(src);
    run_plan(db, add_plan(db), 0);
    want = db.results();
  }
  FakeClock clock;
  Database into = Database::open(":memory:");
  into.set_clock(clock.fn());
  into.ensure_model(model("models/first"));  // shifts the ids
  const auto jobs = add_plan(into);
  // 0 pending; 1 failed; 2 running without a lease; 3 running under a live lease of another host;
  // 4 done with the same metrics (NaN); 5 running under an expired lease; the rest pending.
  into.start_job(jobs[1], "h", 0, 0);
  into.fail_job(jobs[1], "oom");
  into.start_job(jobs[2], "h", 0, 0);
  ASSERT_TRUE(into.claim_job(jobs[3], foreign(9), 1000, "other-node", 0, 0));
  run_plan(into, jobs, 0, [](std::size_t i) { return i == 4; });
  ASSERT_TRUE(into.claim_job(jobs[5], foreign(10), 5, "other-node", 0, 0));
  clock.t += 10;
  const MergeReport r = into.merge_from(src);
  EXPECT_EQ(r.jobs_added, 0);
  EXPECT_EQ(r.jobs_updated, 10);
  EXPECT_EQ(r.jobs_skipped, 1);
  EXPECT_EQ(r.jobs_left_running, 1);
  EXPECT_EQ(r.metrics_added, 20);
  EXPECT_EQ(r.variants_added, 0);
  const auto rows = into.jobs();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    EXPECT_EQ(rows[i].state, i == 3 ? "running" : "done") << i;
    EXPECT_EQ(rows[i].lease_owner, i == 3 ? foreign(9).id() : "") << i;
  }
  EXPECT_EQ(into.job_state(jobs[3]), "running");
  // Job 3 is variant 1 (drrqr 0.25), task piqa: everything else matches the source.
  std::vector<ResultRow> expected;
  for (const auto& w : want)
    if (!(w.method == "drrqr" && w.ratio == 0.25 && w.task == "piqa")) expected.push_back(w);
  expect_same_results(into.results(), expected);
  // The live owner finds its job still its own and finishes it.
  into.complete_job(jobs[3], plan_metrics(3), 1.0, foreign(9));
  expect_same_results(into.results(), want);
}

TEST(DbMerge, UnfinishedSourceJobsAreAddedOnlyWhenAbsent) {
  TempDir dir;
  const std::string src = dir.file("src.db");
  {
    Database db = Database::open(src);
    const auto jobs = add_plan(db);
    db.start_job(jobs[0], "node1", 0, 0);
    db.fail_job(jobs[0], "CUDA out of memory");
    ASSERT_TRUE(db.claim_job(jobs[1], this_process(), 600, "node1", 0, 0));  // live in the source
    run_plan(db, jobs, 0, [](std::size_t i) { return i == 3; });
  }
  {
    Database into = Database::open(":memory:");
    const MergeReport r = into.merge_from(src);
    EXPECT_EQ(r.jobs_added, 12);
    const auto rows = into.jobs();
    EXPECT_EQ(rows[0].state, "failed");
    EXPECT_EQ(rows[0].error, "CUDA out of memory");
    EXPECT_EQ(rows[0].attempts, 1);
    EXPECT_EQ(rows[1].state, "pending");  // no lease comes along: it is the source's
    EXPECT_EQ(rows[1].lease_owner, "");
    EXPECT_EQ(rows[2].state, "pending");
    EXPECT_EQ(rows[3].state, "done");
    EXPECT_EQ(into.count_metrics(), 2);
    EXPECT_EQ(into.reset_interrupted_jobs(), 0);
  }
  Database into = Database::open(":memory:");
  const auto jobs = add_plan(into);
  run_plan(into, jobs, 0, [](std::size_t i) { return i == 0; });
  into.start_job(jobs[1], "here", 0, 0);
  into.fail_job(jobs[1], "disk full");
  const MergeReport r = into.merge_from(src);
  EXPECT_EQ(r.jobs_added, 0);
  EXPECT_EQ(r.jobs_updated, 1);   // job 3
  EXPECT_EQ(r.jobs_skipped, 11);  // present here and not done in the source
  const auto rows = into.jobs();
  EXPECT_EQ(rows[0].state, "done");
  EXPECT_EQ(rows[1].state, "failed");
  EXPECT_EQ(rows[1].error, "disk full");
  EXPECT_EQ(rows[3].state, "done");
}

TEST(DbMerge, ThreeArrayElementsEqualOneDatabaseThatRanEverything) {
  TempDir dir;
  Database single = Database::open(":memory:");
  run_plan(single, add_plan(single), single.begin_run("[\"all\"]", "sha1", "node0"));
  std::vector<std::string> elements;
  for (int k = 0; k < 3; ++k) {
    elements.push_back(dir.file("element" + std::to_string(k) + ".db"));
    Database db = Database::open(elements.back());
    const auto run = db.begin_run(cat("[\"sweep\",\"--shard\",\"", k, "/3\"]"), "sha1", "node" + std::to_string(k),
                                  this_process(), 60);
    run_plan(db, add_plan(db), run, [k](std::size_t i) { return static_cast<int>(i % 3) == k; });
    db.end_run(run, "ok");
  }
  for (const auto& order : std::vector<std::vector<int>>{{0, 1, 2}, {2, 0, 1}}) {
    const std::string merged_path = dir.file(cat("merged", order[0], ".db"));
    Database merged = Database::open(merged_path);
    std::int64_t added = 0, updated = 0, metrics = 0;
    for (int k : order) {
      const MergeReport r = merged.merge_from(elements[k]);
      added += r.jobs_added;
      updated += r.jobs_updated;
      metrics += r.metrics_added;
      EXPECT_EQ(r.runs_added, 1);
    }
    EXPECT_EQ(added, 12);
    EXPECT_EQ(updated, 8);
    EXPECT_EQ(metrics, 24);
    expect_same_results(merged.results(), single.results());
    EXPECT_EQ(merged.jobs({"done"}).size(), 12u);
    EXPECT_EQ(merged.count_metrics(), single.count_metrics());
    RawDb raw(merged_path);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM runs WHERE status = 'ok'"), 3);
    EXPECT_EQ(raw.integer("SELECT count(DISTINCT run_id) FROM jobs"), 3);
  }
}

TEST(DbMerge, RunsAreCopiedOnceAndTakeTheirFinalStatus) {
  TempDir dir;
  const std::string src = dir.file("src.db"), into_path = dir.file("into.db");
  Database source = Database::open(src);
  const auto run = source.begin_run("[\"sweep\"]", "sha1", "node0", this_process(), 60);
  const auto jobs = add_plan(source);
  run_plan(source, jobs, run, [](std::size_t i) { return i < 2; });
  Database into = Database::open(into_path);
  EXPECT_EQ(into.merge_from(src).runs_added, 1);  // while the source's run is still going
  RawDb raw(into_path);
  EXPECT_EQ(raw.text("SELECT status FROM runs"), "running");
  run_plan(source, jobs, run, [](std::size_t i) { return i == 2; });
  source.end_run(run, "ok");
  const MergeReport r = into.merge_from(src);
  EXPECT_EQ(r.runs_added, 0);
  EXPECT_EQ(r.jobs_updated, 1);
  EXPECT_EQ(raw.integer("SELECT count(*) FROM runs"), 1);
  EXPECT_EQ(raw.text("SELECT status FROM runs"), "ok");
  EXPECT_NE(raw.text("SELECT finished FROM runs"), "");
}

TEST(DbMerge, RefusesBadSourcesAndNeverWritesThem) {
  TempDir dir;
  Database into = Database::open(dir.file("into.db"));
  add_plan(into);
  const std::string before = dump(dir.file("into.db"));
  const std::string missing = dir.file("missing.db");
  expect_input_error([&] { into.merge_from(missing); }, {missing, "does not exist"});
  EXPECT_FALSE(std::filesystem::exists(missing));
  const std::string noise = dir.file("noise.db");
  {
    std::mt19937 rng(3);
    std::ofstream out(noise, std::ios::binary);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng() & 0xff));
  }
  const std::string noise_bytes = file_bytes(noise);
  expect_input_error([&] { into.merge_from(noise); }, {noise, "not a database"});
  EXPECT_EQ(file_bytes(noise), noise_bytes);
  const std::string other = dir.file("other.sqlite");
  RawDb(other).exec("CREATE TABLE photos(id INTEGER PRIMARY KEY)");
  expect_input_error([&] { into.merge_from(other); }, {other, "not a rankprune results database"});
  const std::string empty = dir.file("empty.db");
  std::ofstream(empty).close();
  expect_input_error([&] { into.merge_from(empty); }, {empty, "empty SQLite file"});
  EXPECT_EQ(std::filesystem::file_size(empty), 0u);
  const std::string newer = dir.file("newer.db");
  Database::open(newer);
  RawDb(newer).exec("PRAGMA user_version = 99");
  expect_input_error([&] { into.merge_from(newer); }, {newer, "newer rankprune", "schema version 99"});
  EXPECT_EQ(RawDb(newer).integer("PRAGMA user_version"), 99);
  // A row the schema refuses (a file written with its checks off, or damaged; found by fuzz_db):
  // an input error naming the source and the constraint, not an internal error; nothing merged.
  const std::string broken = dir.file("broken.db");
  {
    Database db = Database::open(broken);
    add_plan(db, "models/broken");
  }
  RawDb(broken).exec("PRAGMA ignore_check_constraints = ON; UPDATE calibrations SET seq_len = 0");
  expect_input_error([&] { into.merge_from(broken); },
                     {broken, "breaks the rankprune schema", "CHECK constraint failed", "nothing was merged"});
  EXPECT_EQ(dump(dir.file("into.db")), before);
  // An older schema is read as it is, not migrated.
  const std::string old = dir.file("v1.db");
  {
    Database db = Database::open_at_version(old, 1);
    const auto jobs = add_plan(db, "models/old");
    db.start_job(jobs[0], "h", 0, 0);
    db.complete_job(jobs[0], plan_metrics(0), 1.0);
  }
  const std::string old_bytes = file_bytes(old);
  const MergeReport r = into.merge_from(old);
  EXPECT_EQ(r.jobs_added, 12);
  EXPECT_EQ(into.results({"models/old", "", "", ""}).size(), 2u);
  EXPECT_EQ(RawDb(old).integer("PRAGMA user_version"), 1);
  EXPECT_EQ(file_bytes(old), old_bytes);
}

}  // namespace
}  // namespace rankprune::storage
