// `rankprune db merge` end to end: per-element databases (built through the storage API, no model
// needed) merge into one with a line per input, all or nothing, and usage errors exit with 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/fs.h"
#include "storage/db.h"
#include "tests/testing/testing.h"

namespace rankprune::testing {
namespace {

namespace fs = std::filesystem;

// One model, two variants x two tasks; the element completes the jobs i with i % n == k, with
// metric acc = 0.5 + i / 100 (or `acc_bump` more for job 0, to make a conflict).
void write_element(const std::string& path, int k, int n, double acc_bump = 0) {
  auto db = storage::Database::open(path);
  const auto m = db.ensure_model({"models/m", "sha", "delta_net", "{}"});
  std::vector<std::int64_t> jobs;
  for (const char* method : {"none", "l1"}) {
    const auto v = db.ensure_variant({m, std::nullopt, method, method[0] == 'n' ? 0.0 : 0.5, 0, 8, "{}"});
    for (const char* task : {"piqa", "arc_easy"}) jobs.push_back(db.ensure_job(v, task, "{}"));
  }
  const auto owner = storage::this_process();
  const auto run = db.begin_run("[\"element " + std::to_string(k) + "\"]", "sha", "node", owner, 60);
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (static_cast<int>(i % n) != k) continue;
    EXPECT_TRUE(db.claim_job(jobs[i], owner, 60, "node", 0, run));
    db.complete_job(jobs[i], {{"acc", 0.5 + static_cast<double>(i) / 100 + (i == 0 ? acc_bump : 0), std::nullopt}},
                    1.0, owner);
  }
  db.end_run(run, "ok");
}

TEST(DbCli, MergeFoldsElementsIntoOneDatabase) {
  TempDir tmp;
  const std::string a = tmp.file("a.db"), b = tmp.file("b.db"), out = tmp.file("out.db");
  write_element(a, 0, 2);
  write_element(b, 1, 2);
  auto r = run_rankprune({"db", "merge", "--into", out, a, b});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("merged " + a + ": jobs 4 added, 0 updated, 0 unchanged; 2 metrics"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("merged " + b + ": jobs 0 added, 2 updated, 2 unchanged; 2 metrics"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(4 of 4 jobs done)"), std::string::npos) << r.out;
  {
    auto db = storage::Database::open(out);
    const auto rows = db.results();
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(db.jobs({"done"}).size(), 4u);
  }
  // Again: nothing new.
  r = run_rankprune({"db", "merge", "--into", out, a, b});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("merged " + b + ": jobs 0 added, 0 updated, 4 unchanged; 0 metrics"), std::string::npos) << r.out;
}

TEST(DbCli, ConflictsAndBadInputsExitWithOneAndChangeNothing) {
  TempDir tmp;
  const std::string a = tmp.file("a.db"), clash = tmp.file("clash.db"), out = tmp.file("out.db");
  write_element(a, 0, 2);
  write_element(clash, 0, 2, /*acc_bump=*/0.25);
  // All inputs in one transaction: the clash in the second rolls back the first too.
  auto r = run_rankprune({"db", "merge", "--into", out, a, clash});
  EXPECT_EQ(r.exit_code, kExitInput) << r.out;
  EXPECT_NE(r.out.find("done in both with different metrics"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(clash), std::string::npos) << r.out;
  EXPECT_TRUE(storage::Database::open(out).jobs().empty());
  const std::string missing = tmp.file("missing.db"), fresh = tmp.file("fresh.db");
  r = run_rankprune({"db", "merge", "--into", fresh, a, missing});
  EXPECT_EQ(r.exit_code, kExitInput) << r.out;
  EXPECT_NE(r.out.find(missing), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(fresh));  // checked before the output is created
  const std::string text = tmp.file("notes.txt");
  write_file_atomic(text, std::string(4096, 'x'));
  r = run_rankprune({"db", "merge", "--into", fresh, text});
  EXPECT_EQ(r.exit_code, kExitInput) << r.out;
  EXPECT_NE(r.out.find(text), std::string::npos) << r.out;
}

TEST(DbCli, HelpAndUsageErrors) {
  auto r = run_rankprune({"db", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("usage: rankprune db merge --into OUT.db IN1.db"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--into"), std::string::npos) << r.out;
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"db"}, {"db", "frobnicate"}, {"db", "merge", "x.db"}, {"db", "merge", "--into", "out.db"}}) {
    r = run_rankprune(args);
    EXPECT_EQ(r.exit_code, kExitUsage) << args.size() << "\n" << r.out;
    EXPECT_NE(r.out.find("usage error"), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace rankprune::testing
