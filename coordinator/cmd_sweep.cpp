// `rankprune sweep` (the command line of coordinator/sweep.h: 1 rank, or P under mpirun / srun),
// and `query` / `report`, which read the results database back.
//
// A sweep is planned as variants (the unpruned baseline, then method x ratio x seed) times tasks.
// Each (variant, task) is one job row; its metrics land in the same transaction that marks it
// done, so a kill at any point loses at most the jobs that were running, and a re-run (which
// takes over jobs whose lease went stale) does exactly the jobs that are not done.
#include <torch/torch.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "coordinator/sweep.h"
#include "coordinator/sweep_plan.h"
#include "eval/runner.h"
#include "storage/db.h"
#include "storage/format.h"
#include "storage/report.h"
#include "worker/calibration.h"

#ifndef RANKPRUNE_GIT_SHA
#define RANKPRUNE_GIT_SHA "unknown"
#endif

namespace rankprune::cli {
namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// ------------------------------------------------------------------------------------- sweep

void declare_sweep(po::options_description& d) {
  d.add_options()
      ("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("data", po::value<std::vector<std::string>>()->multitoken(),
       "calibration files (.txt, .jsonl, .npy); required when a method needs statistics")
      ("tokenizer", po::value<std::string>(), "SentencePiece .model (default: tokenizer.model in the model folder)")
      ("methods", po::value<std::string>()->default_value("drrqr,l1,random"),
       "comma-separated selection methods: drrqr, qrcp, l1, wanda, random, pca, taylor (taylor: a backward "
       "pass per calibration block, cached with the statistics)")
      ("ratios", po::value<std::string>()->default_value("0.25,0.5,0.75"), "comma-separated prune ratios in (0, 1)")
      ("random-seeds", po::value<std::string>()->default_value("0"), "seeds of the random method, e.g. 0,1,2")
      ("db", po::value<std::string>()->default_value("results.db"), "results database (SQLite; created if absent)")
      ("stats-cache", po::value<std::string>(),
       "folder of cached calibration statistics, keyed by model + data hash (default: <db>.cache)")
      ("seq-len", po::value<int64_t>(), "tokens per calibration sequence (default: the .npy rows' length, else 2048)")
      ("sequences", po::value<int64_t>()->default_value(128), "number of calibration sequences")
      ("seed", po::value<uint64_t>()->default_value(0), "seed for choosing the calibration sequences")
      ("batch-size", po::value<int64_t>()->default_value(1),
       "calibration sequences per forward pass (and per block of the rank-independent reduction)")
      ("save-pruned", po::value<std::string>(),
       "also write every pruned variant as an fla checkpoint under this folder, one subfolder per method-ratio-seed")
      ("stop-margin", po::value<double>(),
       "seconds between a pre-timeout warning signal and the hard limit (default: $RANKPRUNE_STOP_MARGIN, else "
       "unknown); the sweep warns when a job takes longer than this, since a warned sweep finishes its running job")
      ("lease-seconds", po::value<double>()->default_value(120),
       "a claimed job's lease in the DB, renewed every quarter of it; another run may take the job over only once "
       "it has expired (or its process is gone)")
      ("config", po::value<std::string>(), "read options from this file (name = value lines); the command line wins");
  add_eval_options(d, "eval-batch-size", "eval-seq-len");
  add_compute_options(d);
  add_cluster_options(d);
}

std::string argv_json(const po::variables_map& vm) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : vm) {
    if (v.defaulted()) continue;
    const auto& a = v.value();
    if (const auto* s = boost::any_cast<std::string>(&a)) j[k] = *s;
    else if (const auto* l = boost::any_cast<std::vector<std::string>>(&a)) j[k] = *l;
    else if (const auto* i = boost::any_cast<int64_t>(&a)) j[k] = *i;
    else if (const auto* u = boost::any_cast<uint64_t>(&a)) j[k] = *u;
    else if (const auto* n = boost::any_cast<long>(&a)) j[k] = *n;
    else if (const auto* t = boost::any_cast<int>(&a)) j[k] = *t;
    else if (const auto* f = boost::any_cast<double>(&a)) j[k] = *f;
    else j[k] = "?";
  }
  return j.dump();
}

int run_sweep(const po::variables_map& vm) {
  // Signals from the first instruction: a TERM during loading or calibration stops the sweep at
  // the next step boundary (statistics already computed are kept), not mid-write.
  // USR1/USR2 are the usual Slurm pre-timeout warnings (--signal=B:USR1@N); they stop the sweep
  // the same way, and the exit code (128 + the last signal) tells the batch script which it was.
  for (int sig : {SIGINT, SIGTERM, SIGUSR1, SIGUSR2}) std::signal(sig, on_stop_signal);
  auto comm = communicator_from(vm);
  return run_collective(*comm, [&] {
    coord::SweepRequest req;
    req.variants = plan::plan_variants(split_list(vm["methods"].as<std::string>()),
                                       parse_double_list(vm["ratios"].as<std::string>(), "ratios"),
                                       parse_int_list(vm["random-seeds"].as<std::string>(), "random-seeds"));
    req.tasks = eval::parse_task_list(vm["tasks"].as<std::string>());
    bool any_stats = false;
    for (const auto& v : req.variants) any_stats = any_stats || v.needs_stats;
    if (any_stats && !vm.count("data"))
      throw UsageError("--data is required: a method in --methods needs calibration statistics");
    req.lease_seconds = vm["lease-seconds"].as<double>();
    if (!(req.lease_seconds >= 1)) throw UsageError(cat("--lease-seconds must be at least 1, got ", req.lease_seconds));
    req.forward = forward_options_from(vm);
    require_cpu_until_wired(req.forward, "sweep");
    req.model_dir = vm["model"].as<std::string>();
    const LinearLM model = LinearLM::load(req.model_dir);
    req.model = &model;
    req.tokenizer_path =
        vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : path_join(req.model_dir, "tokenizer.model");
    const auto tok = Tokenizer::load(req.tokenizer_path);
    req.tokenizer = tok.get();
    req.eval = eval_settings_from(vm, "eval-batch-size", "eval-seq-len", model.config(), req.forward);
    if (comm->rank() == 0) req.model_sha = model_sha(req.model_dir);  // the DB's key; only rank 0 needs it
    if (vm.count("data")) req.data = vm["data"].as<std::vector<std::string>>();
    req.seq_len = calibration_seq_len(vm);
    req.sequences = vm["sequences"].as<int64_t>();
    req.seed = vm["seed"].as<uint64_t>();
    req.batch_size = vm["batch-size"].as<int64_t>();
    if (req.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", req.batch_size));
    req.db_path = vm["db"].as<std::string>();
    if (vm.count("stats-cache")) req.stats_cache = vm["stats-cache"].as<std::string>();
    if (vm.count("save-pruned")) req.save_pruned = vm["save-pruned"].as<std::string>();
    if (vm.count("stop-margin")) {
      req.stop_margin = vm["stop-margin"].as<double>();
    } else if (const char* env = std::getenv("RANKPRUNE_STOP_MARGIN"); env && *env) {
      try {
        req.stop_margin = std::stod(env);
      } catch (const std::exception&) {
        throw UsageError(cat("RANKPRUNE_STOP_MARGIN: expected seconds, got '", env, "'"));
      }
    }
    if (req.stop_margin < 0) throw UsageError(cat("--stop-margin must be >= 0, got ", req.stop_margin));
    req.argv_json = argv_json(vm);
    req.git_sha = RANKPRUNE_GIT_SHA;
    return coord::run_sweep(req, *comm, &g_stop_signal, std::cout, std::cerr);
  });
}

// ------------------------------------------------------------------------------- query, report

storage::Database open_existing(const std::string& path) {
  if (!file_exists(path)) throw InputError(cat("--db: results database '", path, "' does not exist"));
  return storage::Database::open(path);
}

void declare_query(po::options_description& d) {
  d.add_options()("db", po::value<std::string>()->default_value("results.db"), "results database")
      ("task", po::value<std::string>()->default_value(""), "only this task")
      ("metric", po::value<std::string>()->default_value(""), "only this metric")
      ("method", po::value<std::string>()->default_value(""), "only this method (the baseline stays)")
      ("format", po::value<std::string>()->default_value("table"), "table, csv, json or markdown")
      ("best", po::bool_switch(), "the best method per ratio instead of the method x ratio table")
      ("jobs", po::bool_switch(), "the jobs and their states instead of results");
}

int run_query(const po::variables_map& vm) {
  const auto format = storage::parse_format(vm["format"].as<std::string>());
  storage::Database db = open_existing(vm["db"].as<std::string>());
  if (vm["jobs"].as<bool>()) {
    std::cout << storage::format_jobs(db.jobs(), format);
    return kExitOk;
  }
  storage::QueryOptions q;
  q.task = vm["task"].as<std::string>();
  q.metric = vm["metric"].as<std::string>();
  q.method = vm["method"].as<std::string>();
  q.best = vm["best"].as<bool>();
  std::cout << storage::format_results(db.results(), q, format);
  return kExitOk;
}

void declare_report(po::options_description& d) {
  d.add_options()("db", po::value<std::string>()->default_value("results.db"),
                  "results database (when not given and results.db does not exist, --analysis files alone make "
                  "the report)")
      ("analysis", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "`rankprune analyze --out` JSON file(s) for the rank diagnostics section (repeatable)")
      ("out", po::value<std::string>()->required(), "output HTML file (self-contained, works offline)")
      ("title", po::value<std::string>(), "page title (default: rankprune sweep: <models>)");
}

int run_report(const po::variables_map& vm) {
  storage::ReportInput in;
  if (vm.count("analysis"))
    for (const auto& f : vm["analysis"].as<std::vector<std::string>>()) {
      const std::string text = read_file(f);  // InputError naming the file when unreadable
      try {
        in.analyses.push_back(nlohmann::json::parse(text));
      } catch (const nlohmann::json::exception& e) {  // parse errors and numbers beyond double
        throw InputError(cat("--analysis: '", f, "' is not valid JSON: ", e.what()));
      }
      in.analysis_files.push_back(f);
    }
  const std::string db_path = vm["db"].as<std::string>();
  // Without an explicit --db, a missing default database is fine when there are analyses to show.
  const bool use_db = !(vm["db"].defaulted() && !file_exists(db_path) && !in.analyses.empty());
  if (use_db) {
    storage::Database db = open_existing(db_path);
    in.results = db.results();
    in.jobs = db.jobs();
  }
  std::vector<std::string> models;
  for (const auto& r : in.results)
    if (std::find(models.begin(), models.end(), r.model) == models.end()) models.push_back(r.model);
  std::vector<std::string> analysed;
  for (const auto& a : in.analyses)
    if (a.is_object() && a.contains("model") && a["model"].is_string()) {
      const std::string m = a["model"].get<std::string>();
      if (std::find(analysed.begin(), analysed.end(), m) == analysed.end()) analysed.push_back(m);
    }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  const std::string model_list = join(models);
  if (vm.count("title")) in.title = vm["title"].as<std::string>();
  else if (use_db) in.title = "rankprune sweep: " + (model_list.empty() ? std::string("(no results yet)") : model_list);
  else in.title = "rankprune rank diagnostics: " + (analysed.empty() ? std::string("(model not recorded)") : join(analysed));
  in.generated_at = utc_now();
  if (use_db) in.facts = {{"database", db_path}, {"models", model_list}};
  if (!in.analysis_files.empty()) {
    in.facts.push_back({"analysis", join(in.analysis_files)});
    if (!use_db) in.facts.push_back({"models", join(analysed)});
  }
  in.facts.push_back({"rankprune", RANKPRUNE_GIT_SHA});
  const std::string out = vm["out"].as<std::string>();
  write_file_atomic(out, storage::render_report_html(in));  // InputError naming file and field when malformed
  std::cout << "wrote " << out << " (" << in.results.size() << " results, " << in.jobs.size() << " jobs, "
            << in.analyses.size() << " analyses)\n";
  return kExitOk;
}

}  // namespace

void register_sweep_commands(std::vector<Command>& out) {
  out.push_back({"sweep", "prune with several methods and ratios, evaluate every variant, store results in SQLite",
                 "rankprune sweep --model DIR --data FILE... --methods drrqr,l1,random --ratios 0.25,0.5,0.75 "
                 "--tasks wikitext,piqa --db results.db [--limit N] [--save-pruned DIR] [--config sweep.ini]",
                 declare_sweep, run_sweep});
  out.push_back({"query", "print results from a sweep database (method x ratio tables, best per ratio, jobs)",
                 "rankprune query --db F [--task T] [--metric M] [--method M] [--format table|csv|json|markdown] "
                 "[--best] [--jobs]",
                 declare_query, run_query});
  out.push_back({"report", "write a self-contained HTML report (plots and tables) of a sweep database",
                 "rankprune report --db F [--analysis F.json ...] --out report.html", declare_report, run_report});
}

}  // namespace rankprune::cli
