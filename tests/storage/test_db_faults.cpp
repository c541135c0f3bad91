// SQLite's own I/O errors in the middle of a transaction (docs/reliability.md): a VFS wrapped
// around the default one fails the Nth write or sync with SQLITE_FULL, SQLITE_IOERR_WRITE or
// SQLITE_IOERR_FSYNC, and can make sleeps instant so that a lock held past the 10 s busy timeout
// fails at once. Each error must surface as an InputError naming the database, the transaction
// must roll back (the job stays running, no metric is stored), and the file must stay loadable.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>

#include "common/error.h"
#include "storage/db.h"

namespace rankprune::storage {
namespace {

// --- a fault-injecting VFS -------------------------------------------------------------------

struct Faults {
  std::atomic<int> fail_write_at{0};  // fail the Nth xWrite from now (1-based); 0: none
  std::atomic<int> fail_sync_at{0};
  int write_rc = SQLITE_IOERR_WRITE;
  std::atomic<int> writes{0}, syncs{0};
  std::atomic<bool> instant_sleep{false};
};
Faults g_faults;
sqlite3_vfs* g_base = nullptr;

struct FaultFile {
  sqlite3_file hdr;     // must come first: SQLite sees this
  sqlite3_file* real;   // the base VFS's file, stored right after this struct
};

sqlite3_file* real_of(sqlite3_file* f) { return reinterpret_cast<FaultFile*>(f)->real; }

int f_close(sqlite3_file* f) { return real_of(f)->pMethods->xClose(real_of(f)); }
int f_read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) { return real_of(f)->pMethods->xRead(real_of(f), b, n, o); }
int f_write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
  const int at = g_faults.fail_write_at.load();
  if (at > 0 && ++g_faults.writes == at) return g_faults.write_rc;
  return real_of(f)->pMethods->xWrite(real_of(f), b, n, o);
}
int f_truncate(sqlite3_file* f, sqlite3_int64 n) { return real_of(f)->pMethods->xTruncate(real_of(f), n); }
int f_sync(sqlite3_file* f, int flags) {
  const int at = g_faults.fail_sync_at.load();
  if (at > 0 && ++g_faults.syncs == at) return SQLITE_IOERR_FSYNC;
  return real_of(f)->pMethods->xSync(real_of(f), flags);
}
int f_size(sqlite3_file* f, sqlite3_int64* n) { return real_of(f)->pMethods->xFileSize(real_of(f), n); }
int f_lock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xLock(real_of(f), l); }
int f_unlock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xUnlock(real_of(f), l); }
int f_check(sqlite3_file* f, int* r) { return real_of(f)->pMethods->xCheckReservedLock(real_of(f), r); }
int f_fcntl(sqlite3_file* f, int op, void* a) { return real_of(f)->pMethods->xFileControl(real_of(f), op, a); }
int f_sector(sqlite3_file* f) { return real_of(f)->pMethods->xSectorSize(real_of(f)); }
int f_chars(sqlite3_file* f) { return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f)); }
int f_shm_map(sqlite3_file* f, int pg, int sz, int ext, void volatile** p) {
  return real_of(f)->pMethods->xShmMap(real_of(f), pg, sz, ext, p);
}
int f_shm_lock(sqlite3_file* f, int off, int n, int flags) {
  return real_of(f)->pMethods->xShmLock(real_of(f), off, n, flags);
}
void f_shm_barrier(sqlite3_file* f) { real_of(f)->pMethods->xShmBarrier(real_of(f)); }
int f_shm_unmap(sqlite3_file* f, int del) { return real_of(f)->pMethods->xShmUnmap(real_of(f), del); }
int f_fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** p) { return real_of(f)->pMethods->xFetch(real_of(f), o, n, p); }
int f_unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) { return real_of(f)->pMethods->xUnfetch(real_of(f), o, p); }

const sqlite3_io_methods kMethods = {3,         f_close,     f_read,      f_write,       f_truncate, f_sync,
                                     f_size,    f_lock,      f_unlock,    f_check,       f_fcntl,    f_sector,
                                     f_chars,   f_shm_map,   f_shm_lock,  f_shm_barrier, f_shm_unmap, f_fetch,
                                     f_unfetch};

int v_open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  auto* ff = reinterpret_cast<FaultFile*>(f);
  ff->real = reinterpret_cast<sqlite3_file*>(ff + 1);
  ff->hdr.pMethods = nullptr;
  const int rc = g_base->xOpen(g_base, name, ff->real, flags, out_flags);
  if (ff->real->pMethods) ff->hdr.pMethods = &kMethods;  // then SQLite closes it, through us
  return rc;
}
int v_delete(sqlite3_vfs*, const char* n, int sync) { return g_base->xDelete(g_base, n, sync); }
int v_access(sqlite3_vfs*, const char* n, int f, int* r) { return g_base->xAccess(g_base, n, f, r); }
int v_full(sqlite3_vfs*, const char* n, int k, char* out) { return g_base->xFullPathname(g_base, n, k, out); }
void* v_dlopen(sqlite3_vfs*, const char* n) { return g_base->xDlOpen(g_base, n); }
void v_dlerror(sqlite3_vfs*, int n, char* m) { g_base->xDlError(g_base, n, m); }
void (*v_dlsym(sqlite3_vfs*, void* h, const char* s))(void) { return g_base->xDlSym(g_base, h, s); }
void v_dlclose(sqlite3_vfs*, void* h) { g_base->xDlClose(g_base, h); }
int v_random(sqlite3_vfs*, int n, char* out) { return g_base->xRandomness(g_base, n, out); }
int v_sleep(sqlite3_vfs*, int us) {
  // SQLite's busy handler counts the time it asked for, not the clock: instant sleeps run the
  // whole 10 s busy timeout through in microseconds.
  if (g_faults.instant_sleep) return us;
  return g_base->xSleep(g_base, us);
}
int v_time(sqlite3_vfs*, double* t) { return g_base->xCurrentTime(g_base, t); }
int v_lasterr(sqlite3_vfs*, int n, char* m) { return g_base->xGetLastError(g_base, n, m); }
int v_time64(sqlite3_vfs*, sqlite3_int64* t) { return g_base->xCurrentTimeInt64(g_base, t); }

sqlite3_vfs g_vfs;

// Makes the fault VFS SQLite's default for the life of the object (Database::open uses the
// default VFS).
class FaultVfs {
 public:
  FaultVfs() {
    g_base = sqlite3_vfs_find(nullptr);
    g_vfs = *g_base;
    g_vfs.szOsFile = static_cast<int>(sizeof(FaultFile)) + g_base->szOsFile;
    g_vfs.zName = "rp-fault";
    g_vfs.pNext = nullptr;
    g_vfs.xOpen = v_open, g_vfs.xDelete = v_delete, g_vfs.xAccess = v_access, g_vfs.xFullPathname = v_full;
    g_vfs.xDlOpen = v_dlopen, g_vfs.xDlError = v_dlerror, g_vfs.xDlSym = v_dlsym, g_vfs.xDlClose = v_dlclose;
    g_vfs.xRandomness = v_random, g_vfs.xSleep = v_sleep, g_vfs.xCurrentTime = v_time;
    g_vfs.xGetLastError = v_lasterr, g_vfs.xCurrentTimeInt64 = v_time64;
    g_vfs.xSetSystemCall = nullptr, g_vfs.xGetSystemCall = nullptr, g_vfs.xNextSystemCall = nullptr;
    g_vfs.iVersion = 2;
    disarm();
    sqlite3_vfs_register(&g_vfs, 1);
  }
  ~FaultVfs() {
    disarm();
    sqlite3_vfs_unregister(&g_vfs);
    sqlite3_vfs_register(g_base, 1);
  }
  static void disarm() {
    g_faults.fail_write_at = 0, g_faults.fail_sync_at = 0, g_faults.writes = 0, g_faults.syncs = 0;
    g_faults.instant_sleep = false;
  }
};

// --- fixtures --------------------------------------------------------------------------------

class DbFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rp-test-dbfault-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/results.db";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // A database with one running job, leased to this process.
  std::int64_t running_job(Database& db) {
    const auto m = db.ensure_model({"models/m", "sha", "delta_net", "{}"});
    const auto v = db.ensure_variant({m, std::nullopt, "l1", 0.5, 0, 8, "{}"});
    const auto job = db.ensure_job(v, "piqa", "{}");
    EXPECT_TRUE(db.claim_job(job, this_process(), 60, "node", 0, 0));
    return job;
  }

  // complete_job under the armed fault: an InputError naming the file, and nothing stored.
  void expect_rolled_back(const std::function<void()>& arm, std::initializer_list<std::string> needles) {
    FaultVfs vfs;
    std::int64_t job = 0;
    {
      auto setup = Database::open(path_);
      job = running_job(setup);
    }
    {
      // A fresh connection: the last one's close checkpointed the WAL away, so this commit starts
      // a new WAL (header written and synced) before its frames.
      auto db = Database::open(path_);
      arm();
      try {
        db.complete_job(job, {{"acc", 0.75, std::nullopt}, {"acc_norm", 0.5, 0.01}}, 1.0, this_process());
        ADD_FAILURE() << "complete_job succeeded under the fault";
      } catch (const InputError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(path_), std::string::npos) << msg;
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
      }
      FaultVfs::disarm();
      // The same connection carries on: the job is still running, no metric landed.
      EXPECT_EQ(db.job_state(job), "running");
      EXPECT_EQ(db.count_metrics(), 0);
    }
    // The file reopens and the job completes now.
    auto db = Database::open(path_);
    EXPECT_EQ(db.job_state(job), "running");
    EXPECT_EQ(db.count_metrics(), 0);
    db.complete_job(job, {{"acc", 0.75, std::nullopt}}, 1.0, this_process());
    EXPECT_EQ(db.job_state(job), "done");
    EXPECT_EQ(db.count_metrics(), 1);
  }

  std::string dir_, path_;
};

TEST_F(DbFaults, IoErrorWritingTheTransaction) {
  expect_rolled_back([] { g_faults.write_rc = SQLITE_IOERR_WRITE, g_faults.fail_write_at = 1; },
                     {"disk I/O error"});
}

TEST_F(DbFaults, DiskFullWritingTheTransaction) {
  // A later write of the same commit (the WAL frames after the first).
  expect_rolled_back([] { g_faults.write_rc = SQLITE_FULL, g_faults.fail_write_at = 2; }, {"disk is full"});
}

TEST_F(DbFaults, SyncFailureAtCommit) {
  expect_rolled_back([] { g_faults.fail_sync_at = 1; }, {"disk I/O error"});
}

TEST_F(DbFaults, BusyBeyondTheTimeout) {
  // Another connection holds the write lock; the busy handler's 10 s pass in an instant.
  FaultVfs vfs;
  std::int64_t job = 0;
  {
    auto db = Database::open(path_);
    job = running_job(db);
  }
  auto db = Database::open(path_);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  g_faults.instant_sleep = true;
  try {
    db.complete_job(job, {{"acc", 0.75, std::nullopt}}, 1.0, this_process());
    ADD_FAILURE() << "complete_job succeeded while another connection held the lock";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path_), std::string::npos) << msg;
    EXPECT_NE(msg.find("10 s busy timeout"), std::string::npos) << msg;
  }
  g_faults.instant_sleep = false;
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  EXPECT_EQ(db.job_state(job), "running");
  db.complete_job(job, {{"acc", 0.75, std::nullopt}}, 1.0, this_process());
  EXPECT_EQ(db.count_metrics(), 1);
}

}  // namespace
}  // namespace rankprune::storage
