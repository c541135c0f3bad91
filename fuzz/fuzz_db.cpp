// A results database from arbitrary bytes, the two ways the CLI opens one: Database::open (sweep,
// query, report: checks, migrations, then reads) and as the read-only source of `db merge`
// (merged into a fresh in-memory database). SQLite refuses most inputs (not a database,
// corrupt); what it accepts must read back without an internal error.
#include <unistd.h>

#include "fuzz/fuzz_common.h"
#include "storage/db.h"

using namespace rankprune;

namespace {
void remove_db(const std::string& p) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((p + suffix).c_str());
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("in.db"), src = fuzz::scratch_file("src.db");
  remove_db(path);
  remove_db(src);
  fuzz::put(path, data, size);
  fuzz::put(src, data, size);
  fuzz::expect_clean([&] {
    storage::Database db = storage::Database::open(path);
    const auto rows = db.results();
    (void)db.jobs();
    // Every result row is one stored metric.
    RP_FUZZ_CHECK(static_cast<int64_t>(rows.size()) <= db.count_metrics(), rows.size(), " rows, ",
                  db.count_metrics(), " metrics");
  });
  fuzz::expect_clean([&] {
    storage::Database into = storage::Database::open(":memory:");
    const auto report = into.merge_from(src);
    RP_FUZZ_CHECK(report.metrics_added == into.count_metrics(), "merged metrics ", report.metrics_added, " vs ",
                  into.count_metrics());
  });
  return 0;
}
