// A results database from arbitrary bytes, the two ways the CLI opens one: Database::open (sweep,
// query, report: checks, migrations, then reads) and as the read-only source of `db merge`
// (merged into a fresh results file). SQLite refuses most inputs (not a database,
// corrupt); what it accepts must read back without an internal error.
//
// The merge target is a new, empty results file, as for `db merge` into a fresh path; creating
// one runs every schema migration (70% of a run's time), so it is made once and its bytes are
// copied to a fresh path for each input.
#include <unistd.h>

#include "common/fs.h"
#include "fuzz/fuzz_common.h"
#include "storage/db.h"

using namespace rankprune;

namespace {
void remove_db(const std::string& p) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((p + suffix).c_str());
}

// The bytes of a results file just created by Database::open (schema at the current version).
const std::string& empty_results_file() {
  static const std::string bytes = [] {
    const std::string p = fuzz::scratch_file("empty.db");
    remove_db(p);
    { storage::Database::open(p); }  // closing checkpoints the WAL into the main file
    std::string b = read_file(p);
    remove_db(p);
    return b;
  }();
  return bytes;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)empty_results_file();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.db"), src = fuzz::scratch_file("src.db"),
                           into_path = fuzz::scratch_file("into.db");
  remove_db(path);
  remove_db(src);
  remove_db(into_path);
  fuzz::put(path, data, size);
  fuzz::put(src, data, size);
  fuzz::put(into_path, empty_results_file());
  fuzz::expect_clean([&] {
    storage::Database db = storage::Database::open(path);
    const auto rows = db.results();
    (void)db.jobs();
    // Every result row is one stored metric.
    RP_FUZZ_CHECK(static_cast<int64_t>(rows.size()) <= db.count_metrics(), rows.size(), " rows, ",
                  db.count_metrics(), " metrics");
  });
  fuzz::expect_clean([&] {
    storage::Database into = storage::Database::open(into_path);
    const auto report = into.merge_from(src);
    RP_FUZZ_CHECK(report.metrics_added == into.count_metrics(), "merged metrics ", report.metrics_added, " vs ",
                  into.count_metrics());
  });
  return 0;
}
