// `rankprune eval`: lm-eval tasks on one checkpoint, results in lm-eval's JSON shape.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"
#include "coordinator/cli.h"
#include "eval/runner.h"

namespace rankprune::cli {

void add_eval_options(po::options_description& d, const std::string& batch_option,
                      const std::string& seq_len_option) {
  d.add_options()
      ("tasks", po::value<std::string>()->required(),
       "comma-separated: wikitext, lambada_openai, piqa, hellaswag, arc_easy, arc_challenge, winogrande")
      ("limit", po::value<long>(), "score only the first N items (documents for wikitext) of each task")
      ("max-length", po::value<int64_t>(),
       "lm-eval max_length: inputs keep their last max-length + 1 tokens; rolling windows are this long "
       "(default: the config's max_position_embeddings, else 2048)")
      (seq_len_option.c_str(), po::value<int64_t>()->default_value(2048), "chunk length of wikitext's token_perplexity")
      ("add-bos-token", po::value<std::string>()->default_value("true"),
       "BOS before every encoded string as lm-eval with the fla tokenizers; false = lm-eval <= 0.4.9.1")
      (batch_option.c_str(), po::value<int64_t>()->default_value(16), "evaluation requests (multiple choice: items, all their choices at once) per packed forward pass")
      ("reuse-state", po::value<std::string>()->default_value("true"),
       "multiple choice: run the shared context once and copy its state for every choice")
      ("data-dir", po::value<std::string>(),
       "task data folder (default: $RANKPRUNE_DATA_DIR, else ../shared/data)");
}

std::string default_data_dir(const po::variables_map& vm) {
  if (vm.count("data-dir")) return vm["data-dir"].as<std::string>();
  if (const char* env = std::getenv("RANKPRUNE_DATA_DIR"); env && *env) return env;
  if (is_directory("../shared/data")) return "../shared/data";
  return path_join(RANKPRUNE_SOURCE_DIR, "../shared/data");
}

eval::EvalSettings eval_settings_from(const po::variables_map& vm, const std::string& batch_option,
                                      const std::string& seq_len_option, const ModelConfig& cfg,
                                      const ForwardOptions& fo) {
  eval::EvalSettings s;
  s.data_dir = default_data_dir(vm);
  if (!is_directory(s.data_dir))
    throw InputError(cat("task data folder '", s.data_dir, "' does not exist (give --data-dir or set RANKPRUNE_DATA_DIR)"));
  if (vm.count("limit")) {
    s.limit = vm["limit"].as<long>();
    if (s.limit < 1) throw UsageError(cat("--limit must be at least 1, got ", s.limit, " (omit it to score every item)"));
  }
  s.seq_len = vm[seq_len_option].as<int64_t>();
  if (s.seq_len < 2) throw UsageError(cat("--", seq_len_option, " must be at least 2, got ", s.seq_len));
  s.add_bos = parse_bool(vm["add-bos-token"].as<std::string>(), "add-bos-token");
  s.engine.forward = fo;
  s.engine.batch_size = vm[batch_option].as<int64_t>();
  if (s.engine.batch_size < 1) throw UsageError(cat("--", batch_option, " must be at least 1, got ", s.engine.batch_size));
  s.engine.reuse_state = parse_bool(vm["reuse-state"].as<std::string>(), "reuse-state");
  int64_t max_len = 2048;
  if (cfg.raw.contains("max_position_embeddings") && cfg.raw["max_position_embeddings"].is_number_integer())
    max_len = cfg.raw["max_position_embeddings"].get<int64_t>();
  if (vm.count("max-length")) max_len = vm["max-length"].as<int64_t>();
  if (max_len < 1) throw UsageError(cat("--max-length must be at least 1, got ", max_len));
  s.engine.max_length = max_len;
  return s;
}

nlohmann::json eval_settings_json(const eval::EvalSettings& s) {
  return {{"limit", s.limit > 0 ? nlohmann::json(s.limit) : nlohmann::json(nullptr)},
          {"max_length", s.engine.max_length},
          {"token_perplexity_seq_len", s.seq_len},
          {"add_bos_token", s.add_bos},
          {"batch_size", s.engine.batch_size},
          {"reuse_state", s.engine.reuse_state},
          {"dtype", std::string(c10::toString(s.engine.forward.dtype))}};
}

namespace {

void print_table(const std::vector<eval::TaskResult>& rs, std::ostream& os) {
  os << "| Task           | Metric           |      Value |     Stderr |     n |\n"
     << "|----------------|------------------|-----------:|-----------:|------:|\n";
  char line[256];
  for (const auto& r : rs)
    for (const auto& m : r.metrics) {
      char se[32] = "N/A";
      if (m.stderr_value) std::snprintf(se, sizeof se, "%.4f", *m.stderr_value);
      std::snprintf(line, sizeof line, "| %-14s | %-16s | %10.4f | %10s | %5lld |\n", r.task.c_str(),
                    m.name.c_str(), m.value, se, static_cast<long long>(r.samples));
      os << line;
    }
}

void declare_eval(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("tokenizer", po::value<std::string>(), "SentencePiece .model (default: tokenizer.model in the model folder)")
      ("out", po::value<std::string>(), "write the results JSON (lm-eval's shape) here");
  add_eval_options(d, "batch-size", "seq-len");
  add_compute_options(d);
}

int run_eval(const po::variables_map& vm) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto tasks = eval::parse_task_list(vm["tasks"].as<std::string>());
  const std::string dir = vm["model"].as<std::string>();
  const std::string tok_path =
      vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : path_join(dir, "tokenizer.model");
  const ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "eval");
  const LinearLM model = LinearLM::load(dir);
  const auto tok = Tokenizer::load(tok_path);
  const eval::EvalSettings s = eval_settings_from(vm, "batch-size", "seq-len", model.config(), fo);

  std::vector<eval::TaskResult> results;
  for (const auto& t : tasks) {
    Progress progress(t, t == "wikitext" ? "windows" : "items", std::cerr);
    results.push_back(eval::run_task(t, model, *tok, s, [&](int64_t d, int64_t n) { progress.update(d, n); }));
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  nlohmann::json j;
  for (const auto& r : results) {
    j["results"][r.task] = eval::task_results_json(r);
    j["n-samples"][r.task] = {{"original", r.original_samples}, {"effective", r.samples}};
    j["task_seconds"][r.task] = r.seconds;
    if (!r.extra.is_null()) j["task_details"][r.task] = r.extra;
  }
  j["config"] = eval_settings_json(s);
  j["config"]["model"] = "rankprune";
  j["config"]["model_args"] = "pretrained=" + dir;
  j["config"]["tokenizer"] = tok_path;
  j["config"]["data_dir"] = s.data_dir;
  j["date"] = utc_now();
  j["total_evaluation_time_seconds"] = std::to_string(total);
  if (vm.count("out")) write_file_atomic(vm["out"].as<std::string>(), j.dump(2) + "\n");
  print_table(results, std::cout);
  return kExitOk;
}

}  // namespace

void register_eval_commands(std::vector<Command>& out) {
  out.push_back({"eval", "score a checkpoint on lm-eval tasks (wikitext, lambada_openai, piqa, ...)",
                 "rankprune eval --model DIR --tasks T1,T2 [--limit N] [--out results.json]", declare_eval,
                 run_eval});
}

}  // namespace rankprune::cli
