// `rankprune sweep`: prune-ratio sweeps into the results database, resumable; `query` and
// `report` read it back. The coordinator is the database's only writer.
//
// A sweep is planned as variants (the unpruned baseline, then method x ratio x seed) times tasks.
// Each (variant, task) is one job row; its metrics land in the same transaction that marks it
// done, so a kill at any point loses at most the job that was running, and a re-run (which first
// returns jobs left "running" to "pending") does exactly the jobs that are not done.
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "coordinator/cli.h"
#include "eval/runner.h"
#include "prune/select.h"
#include "storage/db.h"
#include "storage/format.h"
#include "storage/report.h"
#include "worker/calibration.h"

#ifndef RANKPRUNE_GIT_SHA
#define RANKPRUNE_GIT_SHA "unknown"
#endif

namespace rankprune::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

struct PlannedVariant {
  std::string method;  // "none" = the unpruned baseline
  double ratio = 0;
  int64_t seed = 0;
  bool needs_stats = false;
  std::vector<std::string> missing_tasks;  // jobs not done yet
};

// ------------------------------------------------------------------------------------- sweep

void declare_sweep(po::options_description& d) {
  d.add_options()
      ("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("data", po::value<std::vector<std::string>>()->multitoken(),
       "calibration files (.txt, .jsonl, .npy); required when a method needs statistics")
      ("tokenizer", po::value<std::string>(), "SentencePiece .model (default: tokenizer.model in the model folder)")
      ("methods", po::value<std::string>()->default_value("drrqr,l1,random"),
       "comma-separated selection methods: drrqr, qrcp, l1, wanda, random, pca")
      ("ratios", po::value<std::string>()->default_value("0.25,0.5,0.75"), "comma-separated prune ratios in (0, 1)")
      ("random-seeds", po::value<std::string>()->default_value("0"), "seeds of the random method, e.g. 0,1,2")
      ("db", po::value<std::string>()->default_value("results.db"), "results database (SQLite; created if absent)")
      ("stats-cache", po::value<std::string>(),
       "folder of cached calibration statistics, keyed by model + data hash (default: <db>.cache)")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per calibration sequence")
      ("sequences", po::value<int64_t>()->default_value(128), "number of calibration sequences")
      ("seed", po::value<uint64_t>()->default_value(0), "seed for choosing the calibration sequences")
      ("batch-size", po::value<int64_t>()->default_value(1), "calibration sequences per forward pass")
      ("save-pruned", po::value<std::string>(),
       "also write every pruned variant as an fla checkpoint under this folder, one subfolder per method-ratio-seed")
      ("config", po::value<std::string>(), "read options from this file (name = value lines); the command line wins");
  add_eval_options(d, "eval-batch-size", "eval-seq-len");
  add_compute_options(d);
}

// What changes a score, as canonical JSON: part of each job's identity, so a sweep with other
// settings makes new jobs instead of mixing numbers.
std::string eval_identity(const eval::EvalSettings& s, const std::string& tokenizer_sha) {
  nlohmann::json j = {{"add_bos_token", s.add_bos},
                      {"limit", s.limit > 0 ? nlohmann::json(s.limit) : nlohmann::json(nullptr)},
                      {"max_length", s.engine.max_length},
                      {"token_perplexity_seq_len", s.seq_len},
                      {"dtype", std::string(c10::toString(s.engine.forward.dtype))},
                      {"tokenizer_sha256", tokenizer_sha}};
  return j.dump();
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
    else j[k] = "?";
  }
  return j.dump();
}

int run_sweep(const po::variables_map& vm) {
  const std::string dir = vm["model"].as<std::string>();
  const std::string db_path = vm["db"].as<std::string>();
  // Validate the whole plan before any work.
  std::vector<std::string> methods = split_list(vm["methods"].as<std::string>());
  if (methods.empty()) throw UsageError("--methods: no method given");
  for (const auto& m : methods) check_method(m);
  std::vector<double> ratios = parse_double_list(vm["ratios"].as<std::string>(), "ratios");
  for (double r : ratios)
    if (!(r > 0 && r < 1)) throw UsageError(cat("--ratios: every ratio must be in (0, 1), got ", r));
  const auto seeds = parse_int_list(vm["random-seeds"].as<std::string>(), "random-seeds");
  const auto tasks = eval::parse_task_list(vm["tasks"].as<std::string>());
  bool any_stats = false;
  for (const auto& m : methods) any_stats = any_stats || method_needs_statistics(m);
  if (any_stats && !vm.count("data"))
    throw UsageError("--data is required: a method in --methods needs calibration statistics");

  const ForwardOptions fo = forward_options_from(vm);
  const LinearLM model = LinearLM::load(dir);
  const std::string tok_path =
      vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : path_join(dir, "tokenizer.model");
  const auto tok = Tokenizer::load(tok_path);
  const eval::EvalSettings es = eval_settings_from(vm, "eval-batch-size", "eval-seq-len", model.config(), fo);
  const std::string eval_config = eval_identity(es, tok_path == "bytes" ? "bytes" : sha256_file(tok_path));
  const std::string msha = model_sha(dir);

  storage::Database db = storage::Database::open(db_path);
  if (int n = db.reset_interrupted_jobs(); n > 0)
    std::cerr << "sweep: " << n << " job(s) left running by an interrupted run go back to pending\n";
  const int64_t run_id = db.begin_run(argv_json(vm), RANKPRUNE_GIT_SHA, hostname());
  try {
    const int64_t model_id =
        db.ensure_model({dir, msha, arch_name(model.config().arch), model.config().to_json().dump()});

    // Calibration identity (tokenizing the data is cheap next to the forward passes).
    CalibrationData cdata;
    std::optional<int64_t> cal_id;
    std::string stats_path;
    const uint64_t cal_seed = vm["seed"].as<uint64_t>();
    if (any_stats) {
      cdata = load_calibration_data(vm["data"].as<std::vector<std::string>>(), tok.get(), tok_path,
                                    vm["seq-len"].as<int64_t>(), vm["sequences"].as<int64_t>(), cal_seed,
                                    model.config().vocab_size);
      const std::string cache = vm.count("stats-cache") ? vm["stats-cache"].as<std::string>() : db_path + ".cache";
      stats_path = path_join(cache, sha256_hex(msha + "|" + cdata.data_sha).substr(0, 32) + ".stats.safetensors");
      cal_id = db.ensure_calibration({model_id, cdata.data_sha, cdata.ids.size(1), cdata.ids.size(0),
                                      static_cast<int64_t>(cal_seed), cdata.ids.numel(), stats_path});
    }

    // The plan, and what of it is not done yet.
    std::vector<PlannedVariant> plan;
    plan.push_back({"none", 0.0, 0, false, {}});
    for (const auto& m : methods)
      for (double r : ratios)
        for (int64_t s : (m == "random" ? seeds : std::vector<int64_t>{0}))
          plan.push_back({m, r, s, method_needs_statistics(m), {}});
    int64_t total_jobs = 0, missing = 0;
    bool stats_needed = false;
    for (auto& v : plan) {
      storage::VariantRecord key{model_id, v.needs_stats ? cal_id : std::nullopt, v.method, v.ratio, v.seed, 0, ""};
      for (const auto& t : tasks) {
        ++total_jobs;
        if (db.find_job_state(key, t, eval_config) != std::optional<std::string>("done")) v.missing_tasks.push_back(t);
      }
      missing += static_cast<int64_t>(v.missing_tasks.size());
      stats_needed = stats_needed || (v.needs_stats && !v.missing_tasks.empty());
    }
    if (missing == 0) {
      std::cout << "sweep: nothing to do: all " << total_jobs << " jobs are done in " << db_path << "\n";
      db.end_run(run_id, "ok");
      return kExitOk;
    }
    std::cerr << "sweep: " << missing << " of " << total_jobs << " jobs to run (" << plan.size() << " variants x "
              << tasks.size() << " tasks)\n";

    // One statistics pass for every method and ratio, cached on disk by model + data hash.
    CalibrationStats stats;
    if (stats_needed) {
      if (file_exists(stats_path)) {
        stats = CalibrationStats::load(stats_path);
        stats.check_matches(model.config(), msha, stats_path);
        std::cerr << "sweep: statistics from cache " << stats_path << "\n";
      } else {
        std::cerr << "sweep: calibrating on " << cdata.ids.size(0) << " sequences x " << cdata.ids.size(1)
                  << " tokens\n";
        stats = collect_statistics(model, cdata.ids, vm["batch-size"].as<int64_t>(), fo);
        stats.meta["model_sha"] = msha;
        stats.meta["data_sha"] = cdata.data_sha;
        stats.meta["seq_len"] = std::to_string(cdata.ids.size(1));
        stats.meta["sequences"] = std::to_string(cdata.ids.size(0));
        stats.meta["seed"] = std::to_string(cal_seed);
        fs::create_directories(parent_dir(stats_path));
        stats.save(stats_path);
      }
    }

    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    const std::string host = hostname();
    int64_t done = 0;
    for (const auto& v : plan) {
      if (v.missing_tasks.empty()) continue;
      const Selection sel = v.method == "none" ? Selection{} : select_channels(model, v.needs_stats ? &stats : nullptr,
                                                                                v.method, v.ratio, static_cast<uint64_t>(v.seed));
      const LinearLM pruned = v.method == "none" ? model : apply_selection(model, sel);
      const std::string sel_json = v.method == "none" ? std::string("{}") : sel.to_json().dump();
      const int64_t variant_id = db.ensure_variant({model_id, v.needs_stats ? cal_id : std::nullopt, v.method, v.ratio,
                                                    v.seed, static_cast<int>(pruned.config().head_k_dim), sel_json});
      if (vm.count("save-pruned") && v.method != "none") {
        const std::string out = path_join(vm["save-pruned"].as<std::string>(),
                                          cat(v.method, "-", storage::format_ratio(v.ratio), "-seed", v.seed));
        if (!is_directory(out)) {
          fs::create_directories(vm["save-pruned"].as<std::string>());
          write_pruned_checkpoint(dir, pruned, sel, out);
        }
      }
      for (const auto& t : v.missing_tasks) {
        if (g_stop_signal) break;
        const int64_t job = db.ensure_job(variant_id, t, eval_config);
        db.start_job(job, host, 0, run_id);
        const auto t0 = Clock::now();
        eval::TaskResult r;
        try {
          Progress progress(cat("  ", v.method, " ", storage::format_ratio(v.ratio), " ", t), "units", std::cerr, 10.0, false);
          r = eval::run_task(t, pruned, *tok, es, [&](int64_t d, int64_t n) { progress.update(d, n); });
        } catch (const std::exception& e) {
          db.fail_job(job, e.what());
          throw;
        }
        std::vector<storage::MetricValue> mv;
        for (const auto& m : r.metrics) mv.push_back({m.name, m.value, m.stderr_value});
        db.complete_job(job, mv, std::chrono::duration<double>(Clock::now() - t0).count());
        ++done;
        std::ostringstream line;
        line << "[" << done << "/" << missing << "] " << v.method << " ratio " << storage::format_ratio(v.ratio);
        if (v.method == "random") line << " seed " << v.seed;
        line << " " << t << ":";
        for (const auto& m : r.metrics) line << " " << m.name << " " << m.value;
        std::cout << line.str() << "\n" << std::flush;
      }
      if (g_stop_signal) break;
    }
    if (g_stop_signal) {
      std::cerr << "sweep: stopped by signal " << g_stop_signal << " after " << done
                << " job(s); re-run the same command to finish\n";
      db.end_run(run_id, "interrupted");
      return 128 + g_stop_signal;
    }
    db.end_run(run_id, "ok");
    std::cout << "sweep: " << done << " job(s) done; results in " << db_path << "\n";
    return kExitOk;
  } catch (...) {
    db.end_run(run_id, "failed");
    throw;
  }
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
      } catch (const nlohmann::json::parse_error& e) {
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
