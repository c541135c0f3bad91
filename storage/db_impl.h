// Internal to storage/: the SQLite connection behind a Database, its prepared-statement cache and
// the RAII statement wrapper, shared by db.cpp (schema, job life cycle, queries) and merge.cpp.
// Not part of the interface; include storage/db.h instead.
#pragma once

#include <sqlite3.h>

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "storage/db.h"

namespace rankprune::storage::detail {

// A row refused by the schema (CHECK, NOT NULL, UNIQUE): a bug in our SQL when we wrote the row
// ourselves, so an InternalError; `db merge` turns it into an InputError naming the source file,
// whose row it copied.
class ConstraintError : public InternalError {
 public:
  using InternalError::InternalError;
};

// An SQLite error as an exception naming the path and SQLite's message: InputError when the file
// or its surroundings are at fault, InternalError for our SQL or its use (ConstraintError for a
// constraint violation).
[[noreturn]] void throw_sqlite(const std::string& path, sqlite3* db, int rc, const std::string& doing);
// SQLite's error log (SQLITE_CONFIG_LOG), installed before the first connection: it records the
// system call, file and strerror of each failed OS operation, which throw_sqlite appends.
void install_sqlite_log();
std::string take_sqlite_os_error();  // the last one on this thread, cleared
void clear_sqlite_os_error();         // before a statement runs: what it logs is its own

// One prepared sqlite3_stmt; bind by 1-based index, step, read 0-based columns.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& path, const char* sql) : db_(db), path_(&path), sql_(sql) {
    const int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    if (rc != SQLITE_OK) throw_sqlite(path, db, rc, cat("preparing `", sql, "`"));
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& int64(int i, std::int64_t v) { return check(sqlite3_bind_int64(stmt_, i, v)); }
  Statement& real(int i, double v) { return check(sqlite3_bind_double(stmt_, i, v)); }
  Statement& null(int i) { return check(sqlite3_bind_null(stmt_, i)); }
  Statement& text(int i, const std::string& v) {
    return check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  Statement& opt_int64(int i, const std::optional<std::int64_t>& v) { return v ? int64(i, *v) : null(i); }
  Statement& opt_real(int i, const std::optional<double>& v) { return v ? real(i, *v) : null(i); }
  Statement& opt_text(int i, const std::optional<std::string>& v) { return v ? text(i, *v) : null(i); }

  // True while a row is available; false when done. Errors throw (see throw_sqlite).
  bool step() {
    clear_sqlite_os_error();
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw_sqlite(*path_, db_, rc, cat("running `", sql_, "`"));
  }
  void run() {
    while (step()) {
    }
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  bool is_null(int c) const { return sqlite3_column_type(stmt_, c) == SQLITE_NULL; }
  std::int64_t col_int64(int c) const { return sqlite3_column_int64(stmt_, c); }
  double col_real(int c) const { return sqlite3_column_double(stmt_, c); }
  double col_real_or_nan(int c) const {
    return is_null(c) ? std::numeric_limits<double>::quiet_NaN() : col_real(c);
  }
  std::optional<double> col_opt_real(int c) const {
    return is_null(c) ? std::nullopt : std::optional<double>(col_real(c));
  }
  std::optional<std::int64_t> col_opt_int64(int c) const {
    return is_null(c) ? std::nullopt : std::optional<std::int64_t>(col_int64(c));
  }
  std::string col_text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, c));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, c))) : std::string();
  }
  std::optional<std::string> col_opt_text(int c) const {
    return is_null(c) ? std::nullopt : std::optional<std::string>(col_text(c));
  }

 private:
  Statement& check(int rc) {
    if (rc != SQLITE_OK) throw_sqlite(*path_, db_, rc, cat("binding a value to `", sql_, "`"));
    return *this;
  }

  sqlite3* db_;
  const std::string* path_;
  const char* sql_;
  sqlite3_stmt* stmt_ = nullptr;
};

// A cached statement borrowed for one use: reset (and its bindings cleared) when the use ends,
// so no read stays open and the next user starts clean.
class StatementUse {
 public:
  explicit StatementUse(Statement& s) : s_(&s) {}
  ~StatementUse() { s_->reset(); }
  StatementUse(const StatementUse&) = delete;
  StatementUse& operator=(const StatementUse&) = delete;
  Statement* operator->() const { return s_; }
  Statement& operator*() const { return *s_; }

 private:
  Statement* s_;
};

}  // namespace rankprune::storage::detail

namespace rankprune::storage {

// The connection and its statement cache.
struct Database::Impl {
  std::string path;
  sqlite3* db = nullptr;
  int version = 0;                     // user_version after opening (methods pick SQL by it)
  std::function<double()> clock;       // unix seconds; unix_now unless a test set another
  std::string host;                    // this_host(), for lease liveness
  std::unordered_map<const char*, std::unique_ptr<detail::Statement>> cache;  // keyed by the SQL literal

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    cache.clear();  // statements must be finalized before the connection closes
    if (db) sqlite3_close_v2(db);
  }

  [[noreturn]] void fail(int rc, const std::string& doing) const { detail::throw_sqlite(path, db, rc, doing); }

  detail::StatementUse use(const char* sql) {
    auto& slot = cache[sql];
    if (!slot) slot = std::make_unique<detail::Statement>(db, path, sql);
    return detail::StatementUse(*slot);
  }

  // Runs fixed SQL text (possibly several statements) that returns no rows.
  void exec(const char* sql, const std::string& doing) {
    detail::clear_sqlite_os_error();
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) fail(rc, doing);
  }

  // One-row, one-column queries (pragmas, counts), prepared for this call only.
  std::int64_t query_int(const char* sql) {
    detail::Statement s(db, path, sql);
    RP_ASSERT(s.step(), "`", sql, "` returned no row");
    return s.col_int64(0);
  }
  std::string query_text(const char* sql) {
    detail::Statement s(db, path, sql);
    RP_ASSERT(s.step(), "`", sql, "` returned no row");
    return s.col_text(0);
  }

  int changes() const { return sqlite3_changes(db); }
  std::int64_t last_id() const { return sqlite3_last_insert_rowid(db); }
  double now() const { return clock(); }

  // Opens `path` read-write (created if absent), or read-only without creating.
  void connect(bool read_only = false);
  // Refuses non-rankprune files and newer schemas; returns the file's user_version.
  std::int64_t check_identity();
  void choose_journal();
  void migrate(int target);
  void require_version(int needed, const char* what) const;
  std::int64_t find_or_insert(Transaction& tx, detail::Statement& find, detail::Statement& insert);
  std::string job_state(std::int64_t job_id);
  void expect_job_changed(std::int64_t job_id, const char* action);
  bool lease_stale(const std::string& owner_id, std::optional<double> expires) const;
  // Job updates shared by the plain and the lease-checked entry points (caller holds a transaction
  // where noted in db.cpp).
  void mark_done(std::int64_t job_id, const std::vector<MetricValue>& metrics, double seconds);
  void mark_failed(std::int64_t job_id, const std::string& error);
  void expect_holder(std::int64_t job_id, const LeaseOwner& owner);
};

}  // namespace rankprune::storage
