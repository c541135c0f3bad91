// Results database on SQLite: error mapping, open-time checks, journal mode, migrations, the job
// life cycle with leases and the typed queries declared in storage/db.h (merging lives in
// merge.cpp). All SQL text is fixed; values are bound by index.
#include "storage/db.h"

#include <sqlite3.h>
#ifdef __linux__
#include <sys/vfs.h>
#endif

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>

#include "common/error.h"
#include "common/fs.h"
#include "storage/db_impl.h"

namespace rankprune::storage {

namespace {

constexpr int kBusyTimeoutMs = 10000;

// statfs() f_type magic numbers of filesystems shared over a network or a cluster fabric.
constexpr std::uint32_t kNetworkFsMagics[] = {
    0x6969,      // NFS
    0x517B,      // SMB
    0xFF534D42,  // CIFS
    0xFE534D42,  // SMB2
    0x0BD00BD0,  // Lustre
    0x47504653,  // GPFS (IBM Spectrum Scale)
    0x19830326,  // BeeGFS
    0x00C36400,  // CephFS
    0xAAD7AAEA,  // PanFS
    0x5346414F,  // OpenAFS
    0x6B414653,  // kAFS
    0x73757245,  // Coda
    0x01021997,  // 9p (v9fs)
    0x65735546,  // FUSE (sshfs, gcsfuse, ...: may be remote, so treated as such)
    0x7461636F,  // OCFS2
    0x01161970,  // GFS2
};

// Errors that say something about the file or its surroundings (the user can fix them), as
// opposed to errors in our SQL or its use (InternalError).
bool is_environment_error(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY: case SQLITE_LOCKED: case SQLITE_READONLY: case SQLITE_IOERR:
    case SQLITE_CORRUPT: case SQLITE_FULL: case SQLITE_CANTOPEN: case SQLITE_PROTOCOL:
    case SQLITE_NOTADB: case SQLITE_PERM: case SQLITE_NOLFS: case SQLITE_AUTH: case SQLITE_NOMEM:
      return true;
    default:
      return false;
  }
}

const char* hint(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY: case SQLITE_LOCKED:
      return "; another process held it locked for longer than the 10 s busy timeout";
    case SQLITE_READONLY: case SQLITE_PERM: case SQLITE_CANTOPEN:
      return "; check that the file and its directory exist and are writable";
    case SQLITE_NOTADB: case SQLITE_CORRUPT:
      return "; expected an SQLite results database written by rankprune";
    case SQLITE_FULL:
      return "; the disk is full";
    default:
      return "";
  }
}

// UTC now as ISO-8601, evaluated by SQLite inside the statement.
#define RP_SQL_NOW "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"

// Schema version 1: the tables. application_id marks the file as ours.
constexpr const char* kMigrationV1 = R"sql(
CREATE TABLE models(
  id          INTEGER PRIMARY KEY,
  path        TEXT NOT NULL,
  sha         TEXT NOT NULL,
  arch        TEXT NOT NULL,
  config_json TEXT NOT NULL,
  UNIQUE(path, sha));
CREATE TABLE calibrations(
  id         INTEGER PRIMARY KEY,
  model_id   INTEGER NOT NULL REFERENCES models(id),
  data_sha   TEXT NOT NULL,
  seq_len    INTEGER NOT NULL CHECK(seq_len > 0),
  sequences  INTEGER NOT NULL CHECK(sequences > 0),
  seed       INTEGER NOT NULL,
  n_tokens   INTEGER NOT NULL CHECK(n_tokens >= 0),
  stats_path TEXT NOT NULL,
  UNIQUE(model_id, data_sha, seq_len, sequences, seed));
CREATE TABLE variants(
  id             INTEGER PRIMARY KEY,
  model_id       INTEGER NOT NULL REFERENCES models(id),
  calibration_id INTEGER REFERENCES calibrations(id),
  method         TEXT NOT NULL CHECK(method <> ''),
  ratio          REAL NOT NULL CHECK(ratio >= 0 AND ratio < 1),
  seed           INTEGER NOT NULL,
  head_k_dim     INTEGER NOT NULL CHECK(head_k_dim > 0),
  selection_json TEXT NOT NULL);
-- Row ids start at 1, so 0 stands for "no calibration" and NULLs compare equal in the key.
CREATE UNIQUE INDEX variants_key
  ON variants(model_id, IFNULL(calibration_id, 0), method, ratio, seed);
CREATE TABLE runs(
  id        INTEGER PRIMARY KEY,
  argv_json TEXT NOT NULL,
  git_sha   TEXT NOT NULL,
  host      TEXT NOT NULL,
  started   TEXT NOT NULL,
  finished  TEXT,
  status    TEXT NOT NULL DEFAULT 'running'
            CHECK(status IN ('running', 'ok', 'failed', 'interrupted')));
CREATE TABLE jobs(
  id               INTEGER PRIMARY KEY,
  variant_id       INTEGER NOT NULL REFERENCES variants(id),
  task             TEXT NOT NULL CHECK(task <> ''),
  eval_config_json TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'pending'
                   CHECK(state IN ('pending', 'running', 'done', 'failed')),
  attempts         INTEGER NOT NULL DEFAULT 0 CHECK(attempts >= 0),
  started          TEXT,
  finished         TEXT,
  seconds          REAL CHECK(seconds IS NULL OR seconds >= 0),
  host             TEXT,
  rank             INTEGER,
  run_id           INTEGER REFERENCES runs(id),
  UNIQUE(variant_id, task, eval_config_json));
-- value NULL = NaN (SQLite stores a bound NaN as NULL).
CREATE TABLE metrics(
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  name   TEXT NOT NULL CHECK(name <> ''),
  value  REAL,
  stderr REAL,
  PRIMARY KEY(job_id, name));
PRAGMA application_id = 1381000290;
PRAGMA user_version = 1;
)sql";

// Schema version 2: failure messages, and indexes for the state and metric-name filters.
constexpr const char* kMigrationV2 = R"sql(
ALTER TABLE jobs ADD COLUMN error TEXT;
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX metrics_name ON metrics(name);
CREATE INDEX jobs_run ON jobs(run_id);
PRAGMA user_version = 2;
)sql";

struct Migration {
  int version;
  const char* sql;
};
// Schema version 3: job leases, so several runs can share one file (storage/lease.h). Running
// jobs of older files have no lease and count as stale. Runs record their owner and a lease of
// their own, so a dead run can be told from a live one.
constexpr const char* kMigrationV3 = R"sql(
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires REAL;
CREATE INDEX jobs_lease_owner ON jobs(lease_owner) WHERE lease_owner IS NOT NULL;
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires REAL;
PRAGMA user_version = 3;
)sql";

constexpr Migration kMigrations[] = {{1, kMigrationV1}, {2, kMigrationV2}, {3, kMigrationV3}};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == kSchemaVersion,
              "one migration per schema version");
static_assert(kApplicationId == 1381000290, "kMigrationV1 writes this application_id");

}  // namespace

bool is_network_filesystem_type(std::int64_t f_type) {
  const auto magic = static_cast<std::uint32_t>(f_type);
  for (std::uint32_t m : kNetworkFsMagics)
    if (m == magic) return true;
  return false;
}

bool on_network_filesystem(const std::string& path) {
#ifdef __linux__
  struct statfs st {};
  // The file itself when it exists (follows a symlink to another mount), else its directory.
  const std::string probe = file_exists(path) ? path : parent_dir(path);
  if (::statfs(probe.c_str(), &st) != 0) return false;
  return is_network_filesystem_type(static_cast<std::int64_t>(st.f_type));
#else
  return false;
#endif
}

namespace detail {

namespace {
// The last OS-level failure SQLite logged on this thread ("fdatasync(/x/results.db-wal) -
// Input/output error"), taken by the next error thrown.
thread_local std::string t_os_error;

void sqlite_log(void*, int code, const char* message) {
  const int primary = code & 0xff;
  if ((primary != SQLITE_IOERR && primary != SQLITE_FULL && primary != SQLITE_CANTOPEN) || !message) return;
  // os_unix.c writes "os_unix.c:LINE: (ERRNO) CALL(PATH) - STRERROR" (STRERROR is empty with
  // glibc's strerror_r, so the errno is decoded here). Other messages restate the SQLite error.
  const std::string m = message;
  if (m.rfind("os_unix.c:", 0) != 0) return;
  const std::size_t open = m.find(": (");
  const std::size_t close = m.find(") ", open == std::string::npos ? 0 : open);
  const std::size_t dash = m.rfind(" - ");
  if (open == std::string::npos || close == std::string::npos || dash == std::string::npos || dash < close) return;
  const int err = std::atoi(m.c_str() + open + 3);
  t_os_error = cat(m.substr(close + 2, dash - close - 2), " failed: ", err > 0 ? std::strerror(err) : "unknown error");
}
}  // namespace

void install_sqlite_log() {
  static std::once_flag once;
  // Only possible before SQLite initialises itself, i.e. before the first connection; harmless
  // (SQLITE_MISUSE, ignored) if another user of the library got there first.
  std::call_once(once, [] { sqlite3_config(SQLITE_CONFIG_LOG, sqlite_log, nullptr); });
}

std::string take_sqlite_os_error() {
  std::string m;
  m.swap(t_os_error);
  return m;
}

void clear_sqlite_os_error() { t_os_error.clear(); }

[[noreturn]] void throw_sqlite(const std::string& path, sqlite3* db, int rc, const std::string& doing) {
  const int errno_now = errno;  // what the failed call left, before anything here can change it
  std::string msg = cat("results database '", path, "': ", doing, ": ", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
                        " (SQLite code ", rc, ")");
  // SQLite says "disk I/O error" for every failed read, write or sync; the OS error it saw is the
  // reason the user needs (no space left, I/O error, quota, file too large): the system call and
  // file SQLite logged, else the errno it kept.
  const int primary = rc & 0xff;
  if (primary == SQLITE_IOERR || primary == SQLITE_FULL || primary == SQLITE_CANTOPEN) {
    const std::string os_call = take_sqlite_os_error();
    if (!os_call.empty()) {
      msg += ": " + os_call;
    } else if (const int os = db ? sqlite3_system_errno(db) : 0; os != 0) {
      msg += cat(": ", std::strerror(os));
    } else if (primary == SQLITE_FULL) {
      // os_unix.c returns SQLITE_FULL for a write that failed with ENOSPC (and keeps no errno).
      msg += cat(": ", std::strerror(ENOSPC));
    } else if (int last = 0; db && sqlite3_file_control(db, "main", SQLITE_FCNTL_LAST_ERRNO, &last) == SQLITE_OK &&
                              last != 0) {
      msg += cat(": ", std::strerror(last));  // a failed write() is not logged; the file keeps its errno
    } else if (errno_now != 0) {
      msg += cat(": ", std::strerror(errno_now));  // a write to the WAL / journal: the errno it left
    }
  }
  if (is_environment_error(rc)) throw InputError(msg + hint(rc));
  // rankprune's statements are fixed and tested against its own schema: a table or column they
  // do not find is missing from the file (one that claims a schema version it does not hold).
  if (const char* m = db ? sqlite3_errmsg(db) : nullptr;
      (rc & 0xff) == SQLITE_ERROR && m && (std::strncmp(m, "no such column", 14) == 0 || std::strncmp(m, "no such table", 13) == 0))
    throw InputError(msg + "; the file does not hold the tables of the rankprune schema version it claims");
  if ((rc & 0xff) == SQLITE_CONSTRAINT) throw ConstraintError(msg);
  throw InternalError(msg);
}

}  // namespace detail

using detail::Statement;

// ---------------------------------------------------------------------------------------------
// Impl

void Database::Impl::connect(bool read_only) {
  detail::install_sqlite_log();
  detail::clear_sqlite_os_error();  // nothing logged earlier belongs to this connection
  const int flags = read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    db = nullptr;
    throw InputError(cat("cannot open results database '", path, "': ", msg,
                         read_only ? "; check that the file exists and is readable"
                                   : "; check that its directory exists and is writable"));
  }
  clock = unix_now;
  host = this_host();
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  exec("PRAGMA foreign_keys = ON", "enabling foreign keys");
}

// The first read of the file: random bytes fail here (SQLITE_NOTADB); another program's SQLite
// file has a different application_id and tables; a newer rankprune has a higher user_version.
std::int64_t Database::Impl::check_identity() {
  std::int64_t objects = 0, app_id = 0, version = 0;
  try {
    objects = query_int("SELECT count(*) FROM sqlite_master");
    app_id = query_int("PRAGMA application_id");
    version = query_int("PRAGMA user_version");
  } catch (const InternalError& e) {
    // Nothing of ours has run yet: any failure here is the file's. A damaged header reads as
    // SQLITE_ERROR ("unsupported file format"), which elsewhere would mean our SQL is wrong.
    throw InputError(cat("'", path, "' cannot be read as an SQLite results database (", e.what(),
                         "); expected a results database written by rankprune, or a new file"));
  }
  RP_CHECK_INPUT(app_id == kApplicationId || (app_id == 0 && objects == 0), "'", path,
                 "' is an SQLite database but not a rankprune results database (application_id ",
                 app_id, ", ", objects, " schema objects); give a new file or a results database");
  RP_CHECK_INPUT(version <= kSchemaVersion, "results database '", path,
                 "' was written by a newer rankprune: schema version ", version,
                 ", this build reads up to ", kSchemaVersion, "; use a newer rankprune");
  if (version >= 1) {
    // A file claiming a schema must have its tables: else every query would fail later with
    // "no such table", which reads as an error in our SQL.
    const std::int64_t tables = query_int(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
        "('models', 'calibrations', 'variants', 'runs', 'jobs', 'metrics')");
    RP_CHECK_INPUT(tables == 6, "results database '", path, "' claims schema version ", version, " but has ", tables,
                   " of its 6 tables; the file is damaged");
  }
  return version;
}

// WAL lets readers run while the sweep writes, but needs shared memory between all users of the
// file, which network filesystems do not provide: there we keep the rollback (DELETE) journal.
//
// Changing the journal mode needs the file to itself, and SQLite answers SQLITE_BUSY at once
// (without its busy handler) while another connection has it open: two sweeps opening one new
// file together would fail. So the mode is only set when it is not already the one wanted, and
// that attempt is retried for up to the busy timeout.
void Database::Impl::choose_journal() {
  if (path == ":memory:" || sqlite3_db_readonly(db, "main") == 1) return;
  const bool network = on_network_filesystem(path);
  const char* want = network ? "delete" : "wal";
  std::string mode = query_text("PRAGMA journal_mode");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  while (mode != want) {
    sqlite3_stmt* st = nullptr;
    int rc = sqlite3_prepare_v2(db, network ? "PRAGMA journal_mode = DELETE" : "PRAGMA journal_mode = WAL", -1, &st,
                                nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) mode = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) break;
    if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) fail(rc, "setting the journal mode");
    if (std::chrono::steady_clock::now() > deadline) fail(rc, "setting the journal mode");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    mode = query_text("PRAGMA journal_mode");
  }
  exec(mode == "wal" ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL",
       "setting the synchronous mode");
}

// Each migration runs in its own write transaction that ends by bumping user_version. The
// version is read again inside the transaction, so two processes opening a new file concurrently
// apply each step once.
void Database::Impl::migrate(int target) {
  for (const Migration& m : kMigrations) {
    if (m.version > target) break;
    Transaction tx(*this);
    if (query_int("PRAGMA user_version") >= m.version) continue;
    try {
      exec(m.sql, cat("migrating to schema version ", m.version));
    } catch (const InternalError& e) {
      // The migrations are fixed SQL, tested on new and old files: when SQLite refuses one, the
      // file is at fault (a damaged header, e.g. a text encoding it cannot change on a file
      // that claims to be empty).
      throw InputError(cat("cannot migrate results database '", path, "' to schema version ", m.version, " (",
                           e.what(), "); the file is damaged or not a rankprune results database"));
    }
    tx.commit();
  }
  version = static_cast<int>(query_int("PRAGMA user_version"));
}

void Database::Impl::require_version(int needed, const char* what) const {
  RP_ASSERT(version >= needed, what, " needs schema version ", needed, "; results database '", path,
            "' is at version ", version);
}

bool Database::Impl::lease_stale(const std::string& owner_id, std::optional<double> expires) const {
  return lease_is_stale(owner_id, expires, now(), host);
}

// `find` and `insert` are bound to the same key; call inside `tx`, which this commits on insert.
std::int64_t Database::Impl::find_or_insert(Transaction& tx, Statement& find, Statement& insert) {
  if (find.step()) return find.col_int64(0);
  insert.run();
  const std::int64_t id = last_id();
  tx.commit();
  return id;
}

std::string Database::Impl::job_state(std::int64_t job_id) {
  auto q = use("SELECT state FROM jobs WHERE id = ?1");
  q->int64(1, job_id);
  RP_ASSERT(q->step(), "no job with id ", job_id, " in results database '", path, "'");
  return q->col_text(0);
}

void Database::Impl::expect_job_changed(std::int64_t job_id, const char* action) {
  if (changes() == 1) return;
  const std::string state = job_state(job_id);  // asserts when the job does not exist
  throw_internal(__FILE__, __LINE__,
                 cat("cannot ", action, " job ", job_id, " in results database '", path, "': it is ", state));
}

// ---------------------------------------------------------------------------------------------
// Transaction

Database::Transaction::Transaction(Impl& db) : db_(&db) {
  nested_ = sqlite3_get_autocommit(db.db) == 0;
  db.exec(nested_ ? "SAVEPOINT rp_nested" : "BEGIN IMMEDIATE", "starting a write transaction");
  open_ = true;
}

Database::Transaction::Transaction(Transaction&& other) noexcept
    : db_(other.db_), nested_(other.nested_), open_(other.open_) {
  other.open_ = false;
}

Database::Transaction::~Transaction() {
  if (!open_) return;
  // Errors are ignored: SQLite may already have rolled back after a failed statement.
  sqlite3_exec(db_->db, nested_ ? "ROLLBACK TO rp_nested; RELEASE rp_nested" : "ROLLBACK", nullptr,
               nullptr, nullptr);
}

void Database::Transaction::commit() {
  RP_ASSERT(open_, "transaction on '", db_->path, "' already committed");
  db_->exec(nested_ ? "RELEASE rp_nested" : "COMMIT", "committing");
  open_ = false;
}

// ---------------------------------------------------------------------------------------------
// Database

Database::Database(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Database::Database(Database&&) noexcept = default;
Database& Database::operator=(Database&&) noexcept = default;
Database::~Database() = default;

Database Database::open(const std::string& path) { return open_at_version(path, kSchemaVersion); }

Database Database::open_at_version(const std::string& path, int version) {
  RP_ASSERT(version >= 1 && version <= kSchemaVersion, "schema version ", version);
  if (path.empty()) throw UsageError("the results database path is empty");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->connect();
  impl->check_identity();  // before anything that writes: a refused file stays untouched
  impl->choose_journal();
  impl->migrate(version);
  return Database(std::move(impl));
}

const std::string& Database::path() const { return impl_->path; }

int Database::schema_version() const {
  return static_cast<int>(impl_->query_int("PRAGMA user_version"));
}

std::string Database::journal_mode() const { return impl_->query_text("PRAGMA journal_mode"); }

Database::Transaction Database::transaction() { return Transaction(*impl_); }

std::int64_t Database::begin_run(const std::string& argv_json, const std::string& git_sha,
                                 const std::string& host) {
  auto q = impl_->use("INSERT INTO runs(argv_json, git_sha, host, started) VALUES(?1, ?2, ?3, " RP_SQL_NOW ")");
  q->text(1, argv_json).text(2, git_sha).text(3, host).run();
  return impl_->last_id();
}

std::int64_t Database::begin_run(const std::string& argv_json, const std::string& git_sha,
                                 const std::string& host, const LeaseOwner& owner, double lease_seconds) {
  impl_->require_version(3, "begin_run with an owner");
  RP_ASSERT(std::isfinite(lease_seconds) && lease_seconds > 0, "lease of ", lease_seconds, " s");
  auto q = impl_->use(
      "INSERT INTO runs(argv_json, git_sha, host, started, owner, lease_expires) "
      "VALUES(?1, ?2, ?3, " RP_SQL_NOW ", ?4, ?5)");
  q->text(1, argv_json).text(2, git_sha).text(3, host).text(4, owner.id()).real(5, impl_->now() + lease_seconds).run();
  return impl_->last_id();
}

void Database::end_run(std::int64_t run_id, const std::string& status) {
  RP_ASSERT(status == "ok" || status == "failed" || status == "interrupted", "run status '", status, "'");
  auto q = impl_->use("UPDATE runs SET finished = " RP_SQL_NOW ", status = ?2 WHERE id = ?1");
  q->int64(1, run_id).text(2, status).run();
  RP_ASSERT(impl_->changes() == 1, "no run with id ", run_id, " in results database '", impl_->path, "'");
}

std::int64_t Database::ensure_model(const ModelRecord& m) {
  Transaction tx = transaction();
  auto find = impl_->use("SELECT id FROM models WHERE path = ?1 AND sha = ?2");
  find->text(1, m.path).text(2, m.sha);
  auto insert = impl_->use("INSERT INTO models(path, sha, arch, config_json) VALUES(?1, ?2, ?3, ?4)");
  insert->text(1, m.path).text(2, m.sha).text(3, m.arch).text(4, m.config_json);
  return impl_->find_or_insert(tx, *find, *insert);
}

std::int64_t Database::ensure_calibration(const CalibrationRecord& c) {
  Transaction tx = transaction();
  auto find = impl_->use(
      "SELECT id FROM calibrations WHERE model_id = ?1 AND data_sha = ?2 AND seq_len = ?3 "
      "AND sequences = ?4 AND seed = ?5");
  find->int64(1, c.model_id).text(2, c.data_sha).int64(3, c.seq_len).int64(4, c.sequences).int64(5, c.seed);
  auto insert = impl_->use(
      "INSERT INTO calibrations(model_id, data_sha, seq_len, sequences, seed, n_tokens, stats_path) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  insert->int64(1, c.model_id).text(2, c.data_sha).int64(3, c.seq_len).int64(4, c.sequences);
  insert->int64(5, c.seed).int64(6, c.n_tokens).text(7, c.stats_path);
  return impl_->find_or_insert(tx, *find, *insert);
}

std::int64_t Database::ensure_variant(const VariantRecord& v) {
  Transaction tx = transaction();
  auto find = impl_->use(
      "SELECT id FROM variants WHERE model_id = ?1 AND IFNULL(calibration_id, 0) = IFNULL(?2, 0) "
      "AND method = ?3 AND ratio = ?4 AND seed = ?5");
  find->int64(1, v.model_id).opt_int64(2, v.calibration_id).text(3, v.method).real(4, v.ratio).int64(5, v.seed);
  auto insert = impl_->use(
      "INSERT INTO variants(model_id, calibration_id, method, ratio, seed, head_k_dim, selection_json) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  insert->int64(1, v.model_id).opt_int64(2, v.calibration_id).text(3, v.method).real(4, v.ratio);
  insert->int64(5, v.seed).int64(6, v.head_k_dim).text(7, v.selection_json);
  return impl_->find_or_insert(tx, *find, *insert);
}

std::int64_t Database::ensure_job(std::int64_t variant_id, const std::string& task,
                                  const std::string& eval_config_json) {
  Transaction tx = transaction();
  auto find = impl_->use("SELECT id FROM jobs WHERE variant_id = ?1 AND task = ?2 AND eval_config_json = ?3");
  find->int64(1, variant_id).text(2, task).text(3, eval_config_json);
  auto insert = impl_->use("INSERT INTO jobs(variant_id, task, eval_config_json) VALUES(?1, ?2, ?3)");
  insert->int64(1, variant_id).text(2, task).text(3, eval_config_json);
  return impl_->find_or_insert(tx, *find, *insert);
}

std::optional<std::string> Database::find_job_state(const VariantRecord& v, const std::string& task,
                                                    const std::string& eval_config_json) const {
  auto q = impl_->use(
      "SELECT j.state FROM jobs j JOIN variants v ON v.id = j.variant_id "
      "WHERE v.model_id = ?1 AND IFNULL(v.calibration_id, 0) = IFNULL(?2, 0) AND v.method = ?3 "
      "AND v.ratio = ?4 AND v.seed = ?5 AND j.task = ?6 AND j.eval_config_json = ?7");
  q->int64(1, v.model_id).opt_int64(2, v.calibration_id).text(3, v.method).real(4, v.ratio).int64(5, v.seed);
  q->text(6, task).text(7, eval_config_json);
  if (!q->step()) return std::nullopt;
  return q->col_text(0);
}

std::string Database::job_state(std::int64_t job_id) const { return impl_->job_state(job_id); }

void Database::start_job(std::int64_t job_id, const std::string& host, int rank, std::int64_t run_id) {
  auto q = impl_->use(
      "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = " RP_SQL_NOW
      ", finished = NULL, seconds = NULL, host = ?2, rank = ?3, run_id = ?4 "
      "WHERE id = ?1 AND state IN ('pending', 'failed')");
  q->int64(1, job_id).text(2, host).int64(3, rank);
  if (run_id > 0) q->int64(4, run_id);  // 0 = no run: NULL
  q->run();
  impl_->expect_job_changed(job_id, "start");
}

// Inserts the metrics and marks the job done; the caller holds a transaction.
void Database::Impl::mark_done(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds) {
  RP_ASSERT(!metrics.empty(), "job ", job_id, ": no metrics to store");
  RP_ASSERT(std::isfinite(seconds) && seconds >= 0, "job ", job_id, ": seconds ", seconds);
  RP_ASSERT(job_state(job_id) != "done", "job ", job_id, " in results database '", path, "' is already done");
  {
    auto insert = use("INSERT INTO metrics(job_id, name, value, stderr) VALUES(?1, ?2, ?3, ?4)");
    for (const MetricValue& m : metrics) {
      insert->int64(1, job_id).text(2, m.name).real(3, m.value).opt_real(4, m.stderr_value).run();
      insert->reset();
    }
  }
  auto done = use(version >= 3 ? "UPDATE jobs SET state = 'done', finished = " RP_SQL_NOW
                                 ", seconds = ?2, lease_owner = NULL, lease_expires = NULL WHERE id = ?1"
                               : "UPDATE jobs SET state = 'done', finished = " RP_SQL_NOW ", seconds = ?2 WHERE id = ?1");
  done->int64(1, job_id).real(2, seconds).run();
}

void Database::Impl::mark_failed(std::int64_t job_id, const std::string& error) {
  // Before schema 2 there is no error column: preparing this fails with an InternalError.
  auto q = use(version >= 3 ? "UPDATE jobs SET state = 'failed', finished = " RP_SQL_NOW
                              ", error = ?2, lease_owner = NULL, lease_expires = NULL "
                              "WHERE id = ?1 AND state <> 'done'"
                            : "UPDATE jobs SET state = 'failed', finished = " RP_SQL_NOW ", error = ?2 "
                              "WHERE id = ?1 AND state <> 'done'");
  q->int64(1, job_id).text(2, error).run();
  expect_job_changed(job_id, "fail");
}

// The job must still be running under `owner`'s lease; the caller holds a transaction.
void Database::Impl::expect_holder(std::int64_t job_id, const LeaseOwner& owner) {
  require_version(3, "a lease-checked job update");
  auto q = use("SELECT state, IFNULL(lease_owner, '') FROM jobs WHERE id = ?1");
  q->int64(1, job_id);
  RP_ASSERT(q->step(), "no job with id ", job_id, " in results database '", path, "'");
  const std::string state = q->col_text(0), holder = q->col_text(1);
  if (state == "running" && holder == owner.id()) return;
  const std::string by = state == "running" && !holder.empty()
                             ? holder
                             : cat("another run (the job is ", state, " now)");
  throw InputError(cat("results database '", path, "': job ", job_id, " was taken over by ", by,
                       " after this run's lease expired; its result is discarded; raise --lease-seconds"));
}

void Database::complete_job(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds) {
  Transaction tx = transaction();
  impl_->mark_done(job_id, metrics, seconds);
  tx.commit();
}

void Database::complete_job(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds,
                            const LeaseOwner& owner) {
  Transaction tx = transaction();
  impl_->expect_holder(job_id, owner);
  impl_->mark_done(job_id, metrics, seconds);
  tx.commit();
}

void Database::fail_job(std::int64_t job_id, const std::string& error) { impl_->mark_failed(job_id, error); }

void Database::fail_job(std::int64_t job_id, const std::string& error, const LeaseOwner& owner) {
  Transaction tx = transaction();
  impl_->expect_holder(job_id, owner);
  impl_->mark_failed(job_id, error);
  tx.commit();
}

bool Database::claim_job(std::int64_t job_id, const LeaseOwner& owner, double lease_seconds,
                         const std::string& host, int rank, std::int64_t run_id) {
  impl_->require_version(3, "claim_job");
  RP_ASSERT(std::isfinite(lease_seconds) && lease_seconds > 0, "lease of ", lease_seconds, " s");
  const std::string me = owner.id();
  // BEGIN IMMEDIATE takes the write lock first, so no other connection can claim between our
  // read of the lease and our update.
  Transaction tx = transaction();
  std::string state, holder;
  std::optional<double> expires;
  {
    auto q = impl_->use("SELECT state, IFNULL(lease_owner, ''), lease_expires FROM jobs WHERE id = ?1");
    q->int64(1, job_id);
    RP_ASSERT(q->step(), "no job with id ", job_id, " in results database '", impl_->path, "'");
    state = q->col_text(0);
    holder = q->col_text(1);
    expires = q->col_opt_real(2);
  }
  if (state == "done") return false;
  if (state == "running") {
    RP_ASSERT(holder != me, "job ", job_id, " in results database '", impl_->path, "' is already leased to ", me);
    if (!impl_->lease_stale(holder, expires)) return false;
  }
  auto u = impl_->use(
      "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = " RP_SQL_NOW
      ", finished = NULL, seconds = NULL, host = ?2, rank = ?3, run_id = ?4, lease_owner = ?5, "
      "lease_expires = ?6 WHERE id = ?1");
  u->int64(1, job_id).text(2, host).int64(3, rank);
  if (run_id > 0) u->int64(4, run_id);  // 0 = no run: NULL
  u->text(5, me).real(6, impl_->now() + lease_seconds).run();
  tx.commit();
  return true;
}

int Database::renew_leases(const LeaseOwner& owner, double lease_seconds) {
  impl_->require_version(3, "renew_leases");
  RP_ASSERT(std::isfinite(lease_seconds) && lease_seconds > 0, "lease of ", lease_seconds, " s");
  const std::string me = owner.id();
  const double until = impl_->now() + lease_seconds;
  Transaction tx = transaction();
  auto jobs = impl_->use("UPDATE jobs SET lease_expires = ?2 WHERE state = 'running' AND lease_owner = ?1");
  jobs->text(1, me).real(2, until).run();
  const int n = impl_->changes();
  auto runs = impl_->use("UPDATE runs SET lease_expires = ?2 WHERE status = 'running' AND owner = ?1");
  runs->text(1, me).real(2, until).run();
  tx.commit();
  return n;
}

int Database::release_jobs(const LeaseOwner& owner) {
  impl_->require_version(3, "release_jobs");
  auto q = impl_->use(
      "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires = NULL "
      "WHERE state = 'running' AND lease_owner = ?1");
  q->text(1, owner.id()).run();
  return impl_->changes();
}

int Database::reset_interrupted_jobs() {
  if (impl_->version < 3) {
    auto q = impl_->use("UPDATE jobs SET state = 'pending' WHERE state = 'running'");
    q->run();
    return impl_->changes();
  }
  // Liveness needs /proc and the clock, so it is judged here, inside one write transaction.
  Transaction tx = transaction();
  std::vector<std::int64_t> stale_jobs, stale_runs;
  {
    auto q = impl_->use("SELECT id, IFNULL(lease_owner, ''), lease_expires FROM jobs WHERE state = 'running'");
    while (q->step())
      if (impl_->lease_stale(q->col_text(1), q->col_opt_real(2))) stale_jobs.push_back(q->col_int64(0));
  }
  {
    auto q = impl_->use("SELECT id, owner, lease_expires FROM runs WHERE status = 'running' AND owner IS NOT NULL");
    while (q->step())
      if (impl_->lease_stale(q->col_text(1), q->col_opt_real(2))) stale_runs.push_back(q->col_int64(0));
  }
  {
    auto u = impl_->use(
        "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires = NULL WHERE id = ?1");
    for (std::int64_t id : stale_jobs) {
      u->int64(1, id).run();
      u->reset();
    }
  }
  {
    auto u = impl_->use("UPDATE runs SET status = 'interrupted', finished = " RP_SQL_NOW " WHERE id = ?1");
    for (std::int64_t id : stale_runs) {
      u->int64(1, id).run();
      u->reset();
    }
  }
  tx.commit();
  return static_cast<int>(stale_jobs.size());
}

void Database::set_clock(std::function<double()> unix_seconds) {
  impl_->clock = unix_seconds ? std::move(unix_seconds) : std::function<double()>(unix_now);
}

std::vector<ResultRow> Database::results(const ResultFilter& f) const {
  auto q = impl_->use(
      "SELECT m.path, v.method, v.ratio, v.seed, v.head_k_dim, j.task, x.name, x.value, x.stderr "
      "FROM metrics x JOIN jobs j ON j.id = x.job_id JOIN variants v ON v.id = j.variant_id "
      "JOIN models m ON m.id = v.model_id "
      "WHERE j.state = 'done' AND (?1 = '' OR m.path = ?1) AND (?2 = '' OR j.task = ?2) "
      "AND (?3 = '' OR x.name = ?3) AND (?4 = '' OR v.method = ?4) "
      "ORDER BY j.task, x.name, v.method, v.ratio, v.seed, m.path, j.id");
  q->text(1, f.model).text(2, f.task).text(3, f.metric).text(4, f.method);
  std::vector<ResultRow> rows;
  while (q->step()) {
    ResultRow r;
    r.model = q->col_text(0);
    r.method = q->col_text(1);
    r.ratio = q->col_real(2);
    r.seed = q->col_int64(3);
    r.head_k_dim = static_cast<int>(q->col_int64(4));
    r.task = q->col_text(5);
    r.metric = q->col_text(6);
    r.value = q->col_real_or_nan(7);
    r.stderr_value = q->col_opt_real(8);
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<JobRow> Database::jobs(const JobFilter& f) const {
  if (!f.state.empty() && f.state != "pending" && f.state != "running" && f.state != "done" &&
      f.state != "failed")
    throw UsageError(cat("unknown job state '", f.state, "'; expected pending, running, done or failed"));
  // error is reported for failed jobs only; it stays stored after a successful retry.
  auto q = impl_->use(
      impl_->version >= 3
          ? "SELECT j.id, m.path, v.method, v.ratio, v.seed, j.task, j.state, j.attempts, IFNULL(j.host, ''), "
            "IFNULL(j.rank, 0), IFNULL(j.started, ''), IFNULL(j.finished, ''), IFNULL(j.seconds, 0), "
            "CASE WHEN j.state = 'failed' THEN IFNULL(j.error, '') ELSE '' END, "
            "CASE WHEN j.state = 'running' THEN IFNULL(j.lease_owner, '') ELSE '' END "
            "FROM jobs j JOIN variants v ON v.id = j.variant_id JOIN models m ON m.id = v.model_id "
            "WHERE ?1 = '' OR j.state = ?1 ORDER BY j.id"
          : "SELECT j.id, m.path, v.method, v.ratio, v.seed, j.task, j.state, j.attempts, IFNULL(j.host, ''), "
            "IFNULL(j.rank, 0), IFNULL(j.started, ''), IFNULL(j.finished, ''), IFNULL(j.seconds, 0), "
            "CASE WHEN j.state = 'failed' THEN IFNULL(j.error, '') ELSE '' END, '' "
            "FROM jobs j JOIN variants v ON v.id = j.variant_id JOIN models m ON m.id = v.model_id "
            "WHERE ?1 = '' OR j.state = ?1 ORDER BY j.id");
  q->text(1, f.state);
  std::vector<JobRow> rows;
  while (q->step()) {
    JobRow r;
    r.id = q->col_int64(0);
    r.model = q->col_text(1);
    r.method = q->col_text(2);
    r.ratio = q->col_real(3);
    r.seed = q->col_int64(4);
    r.task = q->col_text(5);
    r.state = q->col_text(6);
    r.attempts = static_cast<int>(q->col_int64(7));
    r.host = q->col_text(8);
    r.rank = static_cast<int>(q->col_int64(9));
    r.started = q->col_text(10);
    r.finished = q->col_text(11);
    r.seconds = q->col_real(12);
    r.error = q->col_text(13);
    r.lease_owner = q->col_text(14);
    rows.push_back(std::move(r));
  }
  return rows;
}

std::int64_t Database::count_metrics() const { return impl_->query_int("SELECT count(*) FROM metrics"); }

}  // namespace rankprune::storage
