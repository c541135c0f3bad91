// Tests of the results database (storage/db.h): open-time checks, migrations, get-or-create keys,
// the job life cycle and its atomicity, and the result/job queries. Files live in a temporary
// directory under /tmp that each test creates and removes.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <random>
#include <regex>
#include <string>
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
                     {p, "written by a newer rankprune: schema version 99", "reads up to 2"});
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
    EXPECT_THROW(db.fail_job(other_job, "boom"), InternalError);  // jobs.error arrives in v2
  }
  {
    RawDb raw(p);
    EXPECT_EQ(raw.integer("PRAGMA user_version"), 1);
    EXPECT_EQ(raw.integer("SELECT count(*) FROM pragma_table_info('jobs') WHERE name = 'error'"), 0);
  }
  Database db = Database::open(p);
  EXPECT_EQ(db.schema_version(), 2);
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

}  // namespace
}  // namespace rankprune::storage
