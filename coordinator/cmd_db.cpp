// `rankprune db ACTION`: maintenance of results databases.
//
// `db merge --into OUT.db IN.db...` folds databases written separately (one per Slurm array
// element when the job folders sit on a network filesystem, where a shared SQLite file is not
// safe) into one, with the semantics of Database::merge_from (storage/db.h, storage/README.md).
// All inputs land in OUT in one transaction: a conflict in any of them leaves OUT as it was.
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "storage/db.h"

namespace rankprune::cli {
namespace {

void declare_db(po::options_description& d) {
  d.add_options()
      ("action", po::value<std::string>(), "what to do: merge (given as the first argument: `rankprune db merge ...`)")
      ("into", po::value<std::string>(), "merge: the database to merge into (SQLite; created if absent)")
      ("inputs", po::value<std::vector<std::string>>()->multitoken(),
       "merge: the databases to copy from, read-only (given as the arguments after the action)");
}

void db_positionals(po::positional_options_description& p) { p.add("action", 1).add("inputs", -1); }

int run_merge(const po::variables_map& vm) {
  if (!vm.count("into")) throw UsageError("db merge: --into OUT.db is required (see rankprune db --help)");
  if (!vm.count("inputs")) throw UsageError("db merge: give at least one database to merge (see rankprune db --help)");
  const std::string into_path = vm["into"].as<std::string>();
  const auto inputs = vm["inputs"].as<std::vector<std::string>>();
  // Before OUT is created: a typo in an input should not leave a new empty database behind.
  for (const auto& in : inputs)
    if (!file_exists(in)) throw InputError(cat("db merge: input database '", in, "' does not exist"));

  storage::Database into = storage::Database::open(into_path);
  std::vector<storage::MergeReport> reports;
  {
    auto tx = into.transaction();  // each merge_from nests inside: all inputs or none
    for (const auto& in : inputs) reports.push_back(into.merge_from(in));
    tx.commit();
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto& r = reports[i];
    std::cout << "merged " << inputs[i] << ": jobs " << r.jobs_added << " added, " << r.jobs_updated << " updated, "
              << r.jobs_skipped << " unchanged";
    if (r.jobs_left_running > 0) std::cout << ", " << r.jobs_left_running << " left to a live run";
    std::cout << "; " << r.metrics_added << " metrics, " << r.variants_added << " variants, " << r.models_added
              << " models, " << r.runs_added << " runs added\n";
  }
  std::cout << "db merge: " << inputs.size() << " database(s) into " << into_path << " ("
            << into.jobs({"done"}).size() << " of " << into.jobs().size() << " jobs done)\n";
  return kExitOk;
}

int run_db(const po::variables_map& vm) {
  if (!vm.count("action")) throw UsageError("db: give an action, e.g. `rankprune db merge` (see rankprune db --help)");
  const std::string action = vm["action"].as<std::string>();
  if (action == "merge") return run_merge(vm);
  throw UsageError(cat("db: unknown action '", action, "'; expected merge (see rankprune db --help)"));
}

}  // namespace

void register_db_commands(std::vector<Command>& out) {
  Command db{"db", "maintain results databases: merge per-array-element databases into one",
             "rankprune db merge --into OUT.db IN1.db [IN2.db ...]", declare_db, run_db};
  db.positional = db_positionals;
  out.push_back(std::move(db));
}

}  // namespace rankprune::cli
