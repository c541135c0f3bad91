// Results database: one SQLite file per sweep holding models, calibrations, pruned variants,
// evaluation jobs (variant x task) with their state, the metrics of finished jobs, and the runs
// (invocations) that touched it. Opening applies forward migrations (PRAGMA user_version) and
// refuses files that are not SQLite, SQLite files of another program, and schemas newer than this
// build. Within one run the coordinator (rank 0) is the single writer; several independent runs
// may share one file: each claims a job under a lease (storage/lease.h) before running it, so no
// job runs twice and no run resets another's live jobs. Readers (query, report) may open it
// concurrently. A Database is one connection: use it from one thread at a time; a second thread
// (e.g. the lease heartbeat) opens its own Database on the same path, which SQLite serializes.
// Schema, leases, merge and journal-mode rules: storage/README.md. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "storage/lease.h"
#include "storage/rows.h"

namespace rankprune::storage {

// Version written to PRAGMA user_version by the newest migration this build knows.
constexpr int kSchemaVersion = 3;
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

// What Database::merge_from copied from one source database.
struct MergeReport {
  std::int64_t models_added = 0, calibrations_added = 0, variants_added = 0, runs_added = 0;
  std::int64_t jobs_added = 0;    // absent from the target: inserted (done ones with their metrics)
  std::int64_t jobs_updated = 0;  // done in the source, not done (and not live) in the target
  std::int64_t jobs_skipped = 0;  // nothing to do: done in both with equal metrics, or not done in the source
  std::int64_t jobs_left_running = 0;  // done in the source but running under a live lease in the target
  std::int64_t metrics_added = 0;
};

// True for statfs() f_type values of network/cluster filesystems (NFS, CIFS/SMB, Lustre, GPFS,
// BeeGFS, Ceph, ...), where SQLite's WAL mode does not work.
bool is_network_filesystem_type(std::int64_t f_type);
// Whether the directory that holds `path` is on such a filesystem (false when unknown).
bool on_network_filesystem(const std::string& path);

class Database {
 public:
  struct Impl;  // opaque: connection, path and prepared-statement cache (storage/db_impl.h)

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
  // Same, recording the process that runs it (schema >= 3) with a lease of `lease_seconds` that
  // renew_leases extends: reset_interrupted_jobs marks the run "interrupted" once that lease is
  // stale while the run is still "running" (its process died without end_run).
  std::int64_t begin_run(const std::string& argv_json, const std::string& git_sha,
                         const std::string& host, const LeaseOwner& owner, double lease_seconds);
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
  // The job gets no lease, so any other run may take it over (single-run use; see claim_job).
  void start_job(std::int64_t job_id, const std::string& host, int rank, std::int64_t run_id);
  // One transaction: inserts every metric (unique per job and name) and marks the job done with
  // the finished time and `seconds`, clearing its lease. All of it lands or none (a duplicate
  // name throws and rolls back). `metrics` must not be empty; completing a done job is an
  // InternalError.
  void complete_job(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds);
  // -> failed with the error text kept (schema >= 2), lease cleared. Failing a done job is an
  // InternalError.
  void fail_job(std::int64_t job_id, const std::string& error);

  // Leases (schema >= 3; older schemas throw InternalError). The liveness rule is
  // lease_is_stale in storage/lease.h, judged with this connection's clock and this_host().
  //
  // One BEGIN IMMEDIATE transaction: a pending or failed job, or a running job whose lease is
  // stale (taken over), becomes running as in start_job and leased to `owner` until now +
  // lease_seconds; returns true. A done job, or a running job with a live lease of another owner:
  // returns false and changes nothing. A job already leased to `owner` is an InternalError (the
  // caller lost track of its own jobs). run_id 0 = not tied to a run.
  bool claim_job(std::int64_t job_id, const LeaseOwner& owner, double lease_seconds,
                 const std::string& host, int rank, std::int64_t run_id);
  // Pushes the expiry of every running job (and running run) of `owner` to now + lease_seconds;
  // returns how many jobs. Meant for a heartbeat thread every few seconds, well inside
  // lease_seconds: that thread must open its own Database on the same path (one connection per
  // thread; SQLite serializes the writes, each waiting up to the 10 s busy timeout).
  int renew_leases(const LeaseOwner& owner, double lease_seconds);
  // As complete_job / fail_job, but only while the job is running under `owner`'s lease (expired
  // or not: nobody else took it). Otherwise InputError "job N was taken over by <owner> after
  // this run's lease expired; its result is discarded; raise --lease-seconds", and nothing is
  // written.
  void complete_job(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds,
                    const LeaseOwner& owner);
  void fail_job(std::int64_t job_id, const std::string& error, const LeaseOwner& owner);
  // Running jobs of `owner` -> pending, lease cleared (a run stopping on a signal gives back what
  // it has not finished); returns how many.
  int release_jobs(const LeaseOwner& owner);
  // Running jobs whose lease is stale (a killed process, an expired lease, or any running job of
  // a schema-2 file) go back to "pending", lease cleared; returns how many. Jobs under a live
  // lease are not touched. Runs still "running" whose owner's lease is stale become
  // "interrupted" (runs begun without an owner are left as they are). Called at sweep start.
  // On schema < 3 (no leases): every running job goes back to pending.
  int reset_interrupted_jobs();
  // The clock leases are judged and written with, as unix seconds (default: unix_now). Tests use
  // it to move time instead of sleeping.
  void set_clock(std::function<double()> unix_seconds);

  // Metrics of done jobs joined with model path, method, ratio, seed, head_k_dim and task,
  // ordered by task, metric, method, ratio, seed (then model, job).
  std::vector<ResultRow> results(const ResultFilter& filter = {}) const;
  std::vector<JobRow> jobs(const JobFilter& filter = {}) const;  // ordered by id
  std::int64_t count_metrics() const;

  // Copies another results database into this one, in one transaction (all or nothing):
  // models, calibrations, variants, runs, jobs and the metrics of done jobs, matched by the
  // unique keys above (ids are re-mapped). The source is opened read-only and never modified or
  // migrated; InputError naming it when it is missing, not SQLite, another program's database or
  // of a newer schema. Idempotent: merging the same source again adds nothing.
  //  - A job done in the source and absent, pending, failed or running under a stale lease here
  //    becomes done with the source's row and metrics; done in both with equal metrics (exact
  //    comparison, NaN equal to NaN): skipped; running under a live lease here: left alone.
  //  - A job not done in the source is added only when absent here: failed as failed (error
  //    kept), pending or running as pending (no lease).
  //  - A run is copied once (matched by argv, git sha, host, start time and owner); a run still
  //    "running" here takes the source's end when the source has one.
  // Conflicts refuse the whole merge with an InputError naming both files and the row: the same
  // model (path, sha) with another arch or config_json, the same calibration key with another
  // n_tokens, the same variant key with another head_k_dim or selection_json, the same done job
  // with other metric names or values. Needs this database at schema kSchemaVersion.
  MergeReport merge_from(const std::string& source_path);

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
