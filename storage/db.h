// Results database: one SQLite file per sweep holding models, calibrations, pruned variants,
// evaluation jobs (variant x task) with their state, the metrics of finished jobs, and the runs
// (invocations) that touched it. Opening applies forward migrations (PRAGMA user_version) and
// refuses files that are not SQLite, SQLite files of another program, and schemas newer than this
// build. The coordinator is the single writer; readers (query, report) may open it concurrently.
// A Database is one connection: use it from one thread at a time.
// Schema and journal-mode rules: storage/README.md. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "storage/rows.h"

namespace rankprune::storage {

// Version written to PRAGMA user_version by the newest migration this build knows.
constexpr int kSchemaVersion = 2;
// PRAGMA application_id of every rankprune results database: ASCII "RPdb".
constexpr std::int32_t kApplicationId = 0x52506462;

struct ModelRecord {
  std::string path;         // model path as given to the sweep
  std::string sha;          // content hash of the weights
  std::string arch;         // architecture name from the config
  std::string config_json;  // the model config, verbatim
};

struct CalibrationRecord {
  std::int64_t model_id = 0;
  std::string data_sha;     // hash of the calibration text
  std::int64_t seq_len = 0;
  std::int64_t sequences = 0;
  std::int64_t seed = 0;
  std::int64_t n_tokens = 0;
  std::string stats_path;   // where the collected statistics live
};

struct VariantRecord {
  std::int64_t model_id = 0;
  std::optional<std::int64_t> calibration_id;  // none for data-free methods and the baseline
  std::string method;       // drrqr, qrcp, l1, ..., or "none" for the unpruned baseline
  double ratio = 0.0;       // prune ratio in [0, 1); matched exactly (bit for bit) in the key
  std::int64_t seed = 0;
  int head_k_dim = 0;       // key channels per head after pruning
  std::string selection_json;  // kept channels per layer/head
};

struct MetricValue {
  std::string name;
  double value = 0.0;       // NaN is allowed (a diverged model) and reads back as NaN
  std::optional<double> stderr_value;
};

// Empty field = any value.
struct ResultFilter {
  std::string model, task, metric, method;
};

// Empty state = any; otherwise one of pending, running, done, failed (UsageError if not).
struct JobFilter {
  std::string state;
};

// True for statfs() f_type values of network/cluster filesystems (NFS, CIFS/SMB, Lustre, GPFS,
// BeeGFS, Ceph, ...), where SQLite's WAL mode does not work.
bool is_network_filesystem_type(std::int64_t f_type);
// Whether the directory that holds `path` is on such a filesystem (false when unknown).
bool on_network_filesystem(const std::string& path);

class Database {
  struct Impl;  // connection, path and prepared-statement cache (db.cpp)

 public:
  // Opens or creates `path` (":memory:" allowed), checks it, sets pragmas (foreign keys, busy
  // timeout, journal mode) and applies forward migrations up to kSchemaVersion.
  // InputError naming the path when the file is not SQLite, is another program's SQLite
  // database, has a newer schema, or cannot be opened/written.
  static Database open(const std::string& path);
  // Same, but migrates only up to `version` (1..kSchemaVersion); never downgrades. Tests use it to
  // build old-schema databases. Methods that need a newer schema throw InternalError.
  static Database open_at_version(const std::string& path, int version);

  Database(Database&&) noexcept;
  Database& operator=(Database&&) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  const std::string& path() const;
  int schema_version() const;
  std::string journal_mode() const;  // "wal", "delete" or "memory"

  // Runs: one row per invocation. status: "ok", "failed" or "interrupted".
  std::int64_t begin_run(const std::string& argv_json, const std::string& git_sha,
                         const std::string& host);
  void end_run(std::int64_t run_id, const std::string& status);

  // Get-or-create by the unique key; the same key returns the same id and keeps the fields stored
  // first. Keys: model (path, sha); calibration (model_id, data_sha, seq_len, sequences, seed);
  // variant (model_id, calibration_id or none, method, ratio, seed);
  // job (variant_id, task, eval_config_json). New jobs are "pending".
  std::int64_t ensure_model(const ModelRecord& m);
  std::int64_t ensure_calibration(const CalibrationRecord& c);
  std::int64_t ensure_variant(const VariantRecord& v);
  std::int64_t ensure_job(std::int64_t variant_id, const std::string& task,
                          const std::string& eval_config_json);

  // Lookup without creating: the state of the job (variant key of `v`, task, eval config) when
  // that variant and job exist. Only the key fields of `v` are read. Lets a sweep tell what is
  // left to do before it computes any selection.
  std::optional<std::string> find_job_state(const VariantRecord& v, const std::string& task,
                                            const std::string& eval_config_json) const;

  // Job life cycle: pending -> running -> done | failed; failed -> running on retry.
  std::string job_state(std::int64_t job_id) const;  // InternalError for an unknown id
  // pending or failed -> running: attempts+1, started = now (UTC ISO-8601), finished/seconds
  // cleared. run_id 0 = not tied to a run. Starting a running or done job is an InternalError.
  void start_job(std::int64_t job_id, const std::string& host, int rank, std::int64_t run_id);
  // One transaction: inserts every metric (unique per job and name) and marks the job done with
  // the finished time and `seconds`. All of it lands or none (a duplicate name throws and rolls
  // back). `metrics` must not be empty; completing a done job is an InternalError.
  void complete_job(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds);
  // -> failed with the error text kept (schema >= 2). Failing a done job is an InternalError.
  void fail_job(std::int64_t job_id, const std::string& error);
  // Jobs left "running" by a killed process go back to "pending"; returns how many.
  // Only the single writer calls it, at sweep start.
  int reset_interrupted_jobs();

  // Metrics of done jobs joined with model path, method, ratio, seed, head_k_dim and task,
  // ordered by task, metric, method, ratio, seed (then model, job).
  std::vector<ResultRow> results(const ResultFilter& filter = {}) const;
  std::vector<JobRow> jobs(const JobFilter& filter = {}) const;  // ordered by id
  std::int64_t count_metrics() const;

  // RAII write transaction: BEGIN IMMEDIATE (a SAVEPOINT when one is already open, so the
  // methods above compose inside it); commit() makes it durable; destruction without commit()
  // rolls back. Must not outlive its Database's connection (moving the Database is fine).
  class Transaction {
   public:
    Transaction(Transaction&& other) noexcept;
    Transaction& operator=(Transaction&&) = delete;
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    ~Transaction();
    void commit();

   private:
    friend class Database;
    explicit Transaction(Impl& db);
    Impl* db_ = nullptr;
    bool nested_ = false;
    bool open_ = false;
  };
  Transaction transaction();

 private:
  explicit Database(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rankprune::storage
