// Database::merge_from (storage/db.h): copies another results database into this one. The source
// is read whole through a read-only connection inside one read transaction (one consistent
// snapshot; results databases are small: thousands of jobs, a few metrics each), closed, and
// then written here in one write transaction, so a conflict anywhere leaves this file unchanged
// and the two connections never wait on each other (the source may even be this same file).
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <map>
#include <sstream>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/fs.h"
#include "storage/db.h"
#include "storage/db_impl.h"

namespace rankprune::storage {

namespace {

using detail::Statement;

struct SrcModel {
  std::int64_t id = 0;
  std::string path, sha, arch, config_json;
};

struct SrcCalibration {
  std::int64_t id = 0, model_id = 0;
  std::string data_sha;
  std::int64_t seq_len = 0, sequences = 0, seed = 0, n_tokens = 0;
  std::string stats_path;
};

struct SrcVariant {
  std::int64_t id = 0, model_id = 0;
  std::optional<std::int64_t> calibration_id;
  std::string method;
  double ratio = 0;
  std::int64_t seed = 0, head_k_dim = 0;
  std::string selection_json;
};

struct SrcRun {
  std::int64_t id = 0;
  std::string argv_json, git_sha, host, started;
  std::optional<std::string> finished;
  std::string status;
  std::optional<std::string> owner;
  std::optional<double> lease_expires;
};

struct SrcJob {
  std::int64_t id = 0, variant_id = 0;
  std::string task, eval_config_json, state;
  std::int64_t attempts = 0;
  std::optional<std::string> started, finished;
  std::optional<double> seconds;
  std::optional<std::string> host;
  std::optional<std::int64_t> rank, run_id;
  std::optional<std::string> error;
  std::vector<MetricValue> metrics;  // done jobs only
};

struct Source {
  std::string path;
  std::vector<SrcModel> models;
  std::vector<SrcCalibration> calibrations;
  std::vector<SrcVariant> variants;
  std::vector<SrcRun> runs;
  std::vector<SrcJob> jobs;
};

// Exact equality with NaN equal to NaN (a diverged model scores NaN in both files).
bool same_value(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }
bool same_value(const std::optional<double>& a, const std::optional<double>& b) {
  return a.has_value() == b.has_value() && (!a || same_value(*a, *b));
}

// Every digit of a double, so values one ulp apart read differently in a message.
std::string exact(double v) {
  std::ostringstream os;
  os << std::setprecision(17) << v;
  return os.str();
}
std::string exact(const std::optional<double>& v) { return v ? exact(*v) : "none"; }

// Long JSON shortened for an error message.
std::string brief(const std::string& text) {
  constexpr std::size_t kMax = 80;
  return text.size() <= kMax ? text : text.substr(0, kMax) + "...";
}

// Status order for a run seen in both files: a later state wins (running < interrupted < ended).
int run_rank(const std::string& status) {
  if (status == "running") return 0;
  if (status == "interrupted") return 1;
  return 2;  // ok, failed
}

// Reads every row of `path` without writing to it (read-only connection, no migration).
Source read_source_rows(const std::string& path) {
  Source src;
  src.path = path;
  if (!file_exists(path)) throw InputError(cat("merge source '", path, "' does not exist"));
  Database::Impl db;
  db.path = path;
  db.connect(/*read_only=*/true);
  db.exec("BEGIN", "starting a read transaction");  // one snapshot for every read below
  const std::int64_t version = db.check_identity();
  RP_CHECK_INPUT(version >= 1 && db.query_int("PRAGMA application_id") == kApplicationId, "merge source '", path,
                 "' is an empty SQLite file, not a rankprune results database");
  {
    Statement q(db.db, db.path, "SELECT id, path, sha, arch, config_json FROM models ORDER BY id");
    while (q.step()) src.models.push_back({q.col_int64(0), q.col_text(1), q.col_text(2), q.col_text(3), q.col_text(4)});
  }
  {
    Statement q(db.db, db.path,
                "SELECT id, model_id, data_sha, seq_len, sequences, seed, n_tokens, stats_path FROM calibrations "
                "ORDER BY id");
    while (q.step())
      src.calibrations.push_back({q.col_int64(0), q.col_int64(1), q.col_text(2), q.col_int64(3), q.col_int64(4),
                                  q.col_int64(5), q.col_int64(6), q.col_text(7)});
  }
  {
    Statement q(db.db, db.path,
                "SELECT id, model_id, calibration_id, method, ratio, seed, head_k_dim, selection_json FROM variants "
                "ORDER BY id");
    while (q.step())
      src.variants.push_back({q.col_int64(0), q.col_int64(1), q.col_opt_int64(2), q.col_text(3), q.col_real(4),
                              q.col_int64(5), q.col_int64(6), q.col_text(7)});
  }
  {
    // Schema 3 added the owner and lease of a run.
    Statement q(db.db, db.path,
                version >= 3 ? "SELECT id, argv_json, git_sha, host, started, finished, status, owner, lease_expires "
                               "FROM runs ORDER BY id"
                             : "SELECT id, argv_json, git_sha, host, started, finished, status, NULL, NULL "
                               "FROM runs ORDER BY id");
    while (q.step())
      src.runs.push_back({q.col_int64(0), q.col_text(1), q.col_text(2), q.col_text(3), q.col_text(4),
                          q.col_opt_text(5), q.col_text(6), q.col_opt_text(7), q.col_opt_real(8)});
  }
  std::unordered_map<std::int64_t, std::size_t> job_index;
  {
    // Schema 2 added jobs.error.
    Statement q(db.db, db.path,
                version >= 2 ? "SELECT id, variant_id, task, eval_config_json, state, attempts, started, finished, "
                               "seconds, host, rank, run_id, error FROM jobs ORDER BY id"
                             : "SELECT id, variant_id, task, eval_config_json, state, attempts, started, finished, "
                               "seconds, host, rank, run_id, NULL FROM jobs ORDER BY id");
    while (q.step()) {
      SrcJob j;
      j.id = q.col_int64(0);
      j.variant_id = q.col_int64(1);
      j.task = q.col_text(2);
      j.eval_config_json = q.col_text(3);
      j.state = q.col_text(4);
      j.attempts = q.col_int64(5);
      j.started = q.col_opt_text(6);
      j.finished = q.col_opt_text(7);
      j.seconds = q.col_opt_real(8);
      j.host = q.col_opt_text(9);
      j.rank = q.col_opt_int64(10);
      j.run_id = q.col_opt_int64(11);
      j.error = q.col_opt_text(12);
      job_index[j.id] = src.jobs.size();
      src.jobs.push_back(std::move(j));
    }
  }
  {
    Statement q(db.db, db.path,
                "SELECT x.job_id, x.name, x.value, x.stderr FROM metrics x JOIN jobs j ON j.id = x.job_id "
                "WHERE j.state = 'done' ORDER BY x.job_id, x.name");
    while (q.step()) {
      const std::int64_t job_id = q.col_int64(0);
      const auto it = job_index.find(job_id);
      // Only a file without rankprune's constraints (e.g. a job id twice, a job of no variant)
      // has metrics of a done job the job query did not return.
      if (it == job_index.end())
        throw InputError(cat("merge source '", path, "' holds metrics of jobs id ", job_id,
                             ", a job its tables do not describe consistently; the file is damaged"));
      src.jobs[it->second].metrics.push_back({q.col_text(1), q.col_real_or_nan(2), q.col_opt_real(3)});
    }
  }
  db.exec("COMMIT", "ending the read transaction");
  return src;
}

// A file that passed the identity check (our application_id, a known schema version) but whose
// tables are not what that version has (missing, other columns) is damaged or forged: SQLite's
// "no such table" would otherwise read as an error in our SQL.
Source read_source(const std::string& path) {
  Source src;
  try {
    src = read_source_rows(path);
  } catch (const InternalError& e) {
    throw InputError(cat("merge source '", path, "' claims to be a rankprune results database but its tables do not ",
                         "match its schema version (", e.what(), "); the file is damaged"));
  }
  // rankprune's schema keeps one value per (job, metric); a file without that constraint may not,
  // and its rows could not be inserted here.
  for (const auto& j : src.jobs) {
    std::set<std::string> names;
    for (const auto& m : j.metrics)
      if (!names.insert(m.name).second)
        throw InputError(cat("merge source '", path, "' holds metric '", m.name, "' twice for jobs id ", j.id,
                             " (its tables lack the rankprune schema's constraints); the file is damaged"));
  }
  return src;
}

// The write half: maps source ids to ids here, row by row, inside the caller's transaction.
class Merger {
 public:
  Merger(Database::Impl& db, const Source& src, MergeReport& report) : db_(db), src_(src), report_(report) {}

  void run() {
    for (const auto& m : src_.models) model(m);
    for (const auto& c : src_.calibrations) calibration(c);
    for (const auto& v : src_.variants) variant(v);
    for (const auto& r : src_.runs) run_row(r);
    for (const auto& j : src_.jobs) job(j);
  }

 private:
  [[noreturn]] void conflict(const std::string& what) const {
    throw InputError(cat("cannot merge '", src_.path, "' into '", db_.path, "': ", what, "; nothing was merged"));
  }

  // A dangling reference is the source file's fault (SQLite does not enforce foreign keys on a
  // file written without them, and a damaged file can hold anything): an input error.
  std::int64_t mapped(const std::unordered_map<std::int64_t, std::int64_t>& map, std::int64_t id,
                      const char* table) const {
    auto it = map.find(id);
    if (it == map.end())
      throw InputError(cat("cannot merge '", src_.path, "' into '", db_.path, "': a row of '", src_.path,
                           "' refers to ", table, " id ", id, ", which it does not have (the file is damaged or "
                           "was not written by rankprune); nothing was merged"));
    return it->second;
  }

  std::string describe_variant(std::int64_t src_variant_id) const {
    for (const auto& v : src_.variants)
      if (v.id == src_variant_id) {
        std::string model = "?";
        for (const auto& m : src_.models)
          if (m.id == v.model_id) model = m.path;
        return cat("variant ", v.method, " ratio ", v.ratio, " seed ", v.seed, " of model '", model, "'",
                   v.calibration_id ? " (calibrated)" : "");
      }
    return cat("variant id ", src_variant_id);
  }

  void model(const SrcModel& m) {
    auto find = db_.use("SELECT id, arch, config_json FROM models WHERE path = ?1 AND sha = ?2");
    find->text(1, m.path).text(2, m.sha);
    if (find->step()) {
      if (find->col_text(1) != m.arch || find->col_text(2) != m.config_json)
        conflict(cat("model '", m.path, "' (sha ", m.sha, ") has arch ", m.arch, " and config ", brief(m.config_json),
                     " in '", src_.path, "' but arch ", find->col_text(1), " and config ", brief(find->col_text(2)),
                     " in '", db_.path, "'"));
      models_[m.id] = find->col_int64(0);
      return;
    }
    auto insert = db_.use("INSERT INTO models(path, sha, arch, config_json) VALUES(?1, ?2, ?3, ?4)");
    insert->text(1, m.path).text(2, m.sha).text(3, m.arch).text(4, m.config_json).run();
    models_[m.id] = db_.last_id();
    ++report_.models_added;
  }

  // stats_path is a cache location (per database by default), not part of what was measured: the
  // one stored here first is kept.
  void calibration(const SrcCalibration& c) {
    const std::int64_t model_id = mapped(models_, c.model_id, "models");
    auto find = db_.use(
        "SELECT id, n_tokens FROM calibrations WHERE model_id = ?1 AND data_sha = ?2 AND seq_len = ?3 "
        "AND sequences = ?4 AND seed = ?5");
    find->int64(1, model_id).text(2, c.data_sha).int64(3, c.seq_len).int64(4, c.sequences).int64(5, c.seed);
    if (find->step()) {
      if (find->col_int64(1) != c.n_tokens)
        conflict(cat("calibration (data ", c.data_sha, ", ", c.sequences, " x ", c.seq_len, " tokens, seed ", c.seed,
                     ") has ", c.n_tokens, " tokens in '", src_.path, "' but ", find->col_int64(1), " in '", db_.path,
                     "'"));
      calibrations_[c.id] = find->col_int64(0);
      return;
    }
    auto insert = db_.use(
        "INSERT INTO calibrations(model_id, data_sha, seq_len, sequences, seed, n_tokens, stats_path) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    insert->int64(1, model_id).text(2, c.data_sha).int64(3, c.seq_len).int64(4, c.sequences);
    insert->int64(5, c.seed).int64(6, c.n_tokens).text(7, c.stats_path).run();
    calibrations_[c.id] = db_.last_id();
    ++report_.calibrations_added;
  }

  void variant(const SrcVariant& v) {
    const std::int64_t model_id = mapped(models_, v.model_id, "models");
    std::optional<std::int64_t> cal_id;
    if (v.calibration_id) cal_id = mapped(calibrations_, *v.calibration_id, "calibrations");
    auto find = db_.use(
        "SELECT id, head_k_dim, selection_json FROM variants WHERE model_id = ?1 "
        "AND IFNULL(calibration_id, 0) = IFNULL(?2, 0) AND method = ?3 AND ratio = ?4 AND seed = ?5");
    find->int64(1, model_id).opt_int64(2, cal_id).text(3, v.method).real(4, v.ratio).int64(5, v.seed);
    if (find->step()) {
      if (find->col_int64(1) != v.head_k_dim || find->col_text(2) != v.selection_json)
        conflict(cat(describe_variant(v.id), " has head_k_dim ", v.head_k_dim, " and selection ",
                     brief(v.selection_json), " in '", src_.path, "' but head_k_dim ", find->col_int64(1),
                     " and selection ", brief(find->col_text(2)), " in '", db_.path, "'"));
      variants_[v.id] = find->col_int64(0);
      return;
    }
    auto insert = db_.use(
        "INSERT INTO variants(model_id, calibration_id, method, ratio, seed, head_k_dim, selection_json) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    insert->int64(1, model_id).opt_int64(2, cal_id).text(3, v.method).real(4, v.ratio);
    insert->int64(5, v.seed).int64(6, v.head_k_dim).text(7, v.selection_json).run();
    variants_[v.id] = db_.last_id();
    ++report_.variants_added;
  }

  // Runs have no key of their own: the same invocation is recognised by what it recorded.
  void run_row(const SrcRun& r) {
    const std::string owner = r.owner.value_or("");
    auto find = db_.use(
        "SELECT id, status FROM runs WHERE argv_json = ?1 AND git_sha = ?2 AND host = ?3 AND started = ?4 "
        "AND IFNULL(owner, '') = ?5");
    find->text(1, r.argv_json).text(2, r.git_sha).text(3, r.host).text(4, r.started).text(5, owner);
    if (find->step()) {
      const std::int64_t id = find->col_int64(0);
      runs_[r.id] = id;
      if (run_rank(r.status) > run_rank(find->col_text(1))) {
        auto end = db_.use("UPDATE runs SET finished = ?2, status = ?3 WHERE id = ?1");
        end->int64(1, id).opt_text(2, r.finished).text(3, r.status).run();
      }
      return;
    }
    auto insert = db_.use(
        "INSERT INTO runs(argv_json, git_sha, host, started, finished, status, owner, lease_expires) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    insert->text(1, r.argv_json).text(2, r.git_sha).text(3, r.host).text(4, r.started).opt_text(5, r.finished);
    insert->text(6, r.status).opt_text(7, r.owner).opt_real(8, r.lease_expires).run();
    runs_[r.id] = db_.last_id();
    ++report_.runs_added;
  }

  std::optional<std::int64_t> run_id(const SrcJob& j) const {
    if (!j.run_id) return std::nullopt;
    return mapped(runs_, *j.run_id, "runs");
  }

  void insert_metrics(std::int64_t job_id, const SrcJob& j) {
    auto insert = db_.use("INSERT INTO metrics(job_id, name, value, stderr) VALUES(?1, ?2, ?3, ?4)");
    for (const MetricValue& m : j.metrics) {
      insert->int64(1, job_id).text(2, m.name).real(3, m.value).opt_real(4, m.stderr_value).run();
      insert->reset();
      ++report_.metrics_added;
    }
  }

  // Done in both: the same metric names with exactly the same values.
  void compare_metrics(std::int64_t job_id, const SrcJob& j) {
    std::map<std::string, MetricValue> here;
    {
      auto q = db_.use("SELECT name, value, stderr FROM metrics WHERE job_id = ?1");
      q->int64(1, job_id);
      while (q->step()) here[q->col_text(0)] = {q->col_text(0), q->col_real_or_nan(1), q->col_opt_real(2)};
    }
    const std::string what = cat("job ", j.task, " of ", describe_variant(j.variant_id), " (eval config ",
                                 brief(j.eval_config_json), ") is done in both with different metrics: ");
    for (const MetricValue& a : j.metrics) {
      auto it = here.find(a.name);
      if (it == here.end()) conflict(cat(what, "metric ", a.name, " only in '", src_.path, "'"));
      const MetricValue& b = it->second;
      if (!same_value(a.value, b.value) || !same_value(a.stderr_value, b.stderr_value))
        conflict(cat(what, a.name, " = ", exact(a.value), " (stderr ", exact(a.stderr_value), ") in '", src_.path,
                     "' but ", exact(b.value), " (stderr ", exact(b.stderr_value), ") in '", db_.path, "'"));
      here.erase(it);
    }
    if (!here.empty()) conflict(cat(what, "metric ", here.begin()->first, " only in '", db_.path, "'"));
  }

  void job(const SrcJob& j) {
    const std::int64_t variant_id = mapped(variants_, j.variant_id, "variants");
    std::optional<std::int64_t> id;
    std::string state, holder;
    std::optional<double> expires;
    {
      auto find = db_.use(
          "SELECT id, state, IFNULL(lease_owner, ''), lease_expires FROM jobs "
          "WHERE variant_id = ?1 AND task = ?2 AND eval_config_json = ?3");
      find->int64(1, variant_id).text(2, j.task).text(3, j.eval_config_json);
      if (find->step()) {
        id = find->col_int64(0);
        state = find->col_text(1);
        holder = find->col_text(2);
        expires = find->col_opt_real(3);
      }
    }
    const bool done = j.state == "done";
    if (!id) {
      // Not done elsewhere: failed stays failed (its error is the news), anything else waits here.
      const std::string new_state = done || j.state == "failed" ? j.state : "pending";
      const bool ended = new_state != "pending";
      auto insert = db_.use(
          "INSERT INTO jobs(variant_id, task, eval_config_json, state, attempts, started, finished, seconds, host, "
          "rank, run_id, error) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
      insert->int64(1, variant_id).text(2, j.task).text(3, j.eval_config_json).text(4, new_state);
      insert->int64(5, j.attempts).opt_text(6, j.started).opt_text(7, ended ? j.finished : std::nullopt);
      insert->opt_real(8, ended ? j.seconds : std::nullopt).opt_text(9, j.host).opt_int64(10, j.rank);
      insert->opt_int64(11, run_id(j)).opt_text(12, j.error).run();
      const std::int64_t new_id = db_.last_id();
      if (done) insert_metrics(new_id, j);
      ++report_.jobs_added;
      return;
    }
    if (!done) {
      ++report_.jobs_skipped;
      return;
    }
    if (state == "done") {
      compare_metrics(*id, j);
      ++report_.jobs_skipped;
      return;
    }
    if (state == "running" && !db_.lease_stale(holder, expires)) {
      ++report_.jobs_left_running;  // its live owner will finish it (or find it taken)
      return;
    }
    auto update = db_.use(
        "UPDATE jobs SET state = 'done', attempts = ?2, started = ?3, finished = ?4, seconds = ?5, host = ?6, "
        "rank = ?7, run_id = ?8, error = ?9, lease_owner = NULL, lease_expires = NULL WHERE id = ?1");
    update->int64(1, *id).int64(2, j.attempts).opt_text(3, j.started).opt_text(4, j.finished).opt_real(5, j.seconds);
    update->opt_text(6, j.host).opt_int64(7, j.rank).opt_int64(8, run_id(j)).opt_text(9, j.error).run();
    insert_metrics(*id, j);
    ++report_.jobs_updated;
  }

  Database::Impl& db_;
  const Source& src_;
  MergeReport& report_;
  std::unordered_map<std::int64_t, std::int64_t> models_, calibrations_, variants_, runs_;
};

}  // namespace

MergeReport Database::merge_from(const std::string& source_path) {
  impl_->require_version(kSchemaVersion, "merging");
  Source src;
  try {
    src = read_source(source_path);  // the read connection is closed again before we write
  } catch (const InputError& e) {
    throw InputError(cat("cannot merge '", source_path, "' into '", impl_->path, "': ", e.what()));
  }
  MergeReport report;
  Transaction tx = transaction();
  try {
    Merger(*impl_, src, report).run();
  } catch (const detail::ConstraintError& e) {
    // Every row inserted here is one of the source's, copied as read (a file written without the
    // schema's constraints, or damaged, can hold a row the schema refuses).
    throw InputError(cat("cannot merge '", source_path, "' into '", impl_->path, "': a row of '", source_path,
                         "' breaks the rankprune schema (", e.what(),
                         "); the file is damaged or was not written by rankprune; nothing was merged"));
  }
  tx.commit();
  return report;
}

}  // namespace rankprune::storage
