// Runs lm-eval tasks on a LinearLM: reads the task files (eval/tasks.h), encodes requests as lm-eval's
// HFLM does (BOS handling, _encode_pair), scores them (eval/engine.h) and aggregates the metrics
// (eval/metrics.h). Also the pruning papers' token_perplexity on WikiText-2. docs: eval/README.md.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "eval/engine.h"
#include "model/tokenizer.h"

namespace rankprune::eval {

struct EvalSettings {
  std::string data_dir;        // shared/data layout: tasks/..., text/wikitext2/...
  long limit = 0;              // first N items (documents for wikitext) per task; 0 = all
  int64_t seq_len = 2048;      // token_perplexity chunk length
  bool add_bos = true;         // lm-eval's add_bos_token (see encode())
  EngineOptions engine;
};

struct MetricResult {
  std::string name;                    // lm-eval's metric name: acc, acc_norm, word_perplexity, ...
  double value = 0;
  std::optional<double> stderr_value;  // absent: lm-eval writes "N/A"
};

struct TaskResult {
  std::string task;
  std::vector<MetricResult> metrics;
  int64_t samples = 0;           // items (documents) scored
  int64_t original_samples = 0;  // items in the file
  double seconds = 0;
  nlohmann::json extra;          // task facts worth recording (e.g. token counts)
};

// Every task `rankprune eval` knows, in the order the docs list them.
const std::vector<std::string>& known_tasks();
// "wikitext,piqa" -> names; UsageError naming an unknown task and listing the known ones.
std::vector<std::string> parse_task_list(const std::string& csv);

// lm-eval's tok_encode: the tokenizer's ids, with BOS first when add_bos and the tokenizer has one.
std::vector<int> encode(const Tokenizer& tok, const std::string& text, bool add_bos);
// The token lm-eval puts before an empty context and the first rolling window: BOS, else EOS
// (else 0 for tokenizers with neither, such as the byte tokenizer).
int prefix_token(const Tokenizer& tok);
// lm-eval's _encode_pair: trailing whitespace of the context moves to the continuation; the
// continuation is encode(context + continuation) after encode(context)'s length. An empty context
// becomes [prefix token] with the continuation encoded alone.
Request encode_pair(const Tokenizer& tok, const std::string& context, const std::string& continuation,
                    bool add_bos);

// A task read, encoded and planned, ready to be scored anywhere: its workloads (one per scorer
// the task needs; wikitext has two: rolling windows and token-perplexity chunks) and the metric
// arithmetic that turns their flat scores into the task's result. Does not need the model, so a
// coordinator can plan shards of a task without loading weights.
struct Unit {
  std::size_t part = 0, batch = 0;  // workload and batch
  int64_t tokens = 0;               // cost
};
struct PreparedTask {
  std::string task;
  std::vector<Workload> parts;
  std::function<TaskResult(const PreparedTask&, const std::vector<std::vector<Score>>&)> finish;

  // Every batch of every part, in order: the units a (variant, task) job is sharded by.
  std::vector<Unit> units() const;
  int64_t items() const;  // progress units over all parts
};
PreparedTask prepare_task(const std::string& task, const Tokenizer& tok, const EvalSettings& s);
// Scores units [lo, hi): one score vector per unit, as Scorer::run returns it.
std::vector<std::vector<Score>> score_units(const LinearLM& model, const PreparedTask& t, std::size_t lo,
                                            std::size_t hi, const ProgressFn& progress = nullptr);
// Every unit's scores (from any ranks, in unit order) -> the task's metrics; seconds stays 0.
TaskResult finish_task(const PreparedTask& t, const std::vector<std::vector<Score>>& unit_scores);

// Runs one task (prepare_task + score_units over all units + finish_task); progress (items done /
// total) goes to `progress` when given.
TaskResult run_task(const std::string& task, const LinearLM& model, const Tokenizer& tok, const EvalSettings& s,
                    const ProgressFn& progress = nullptr);

// lm-eval's "results" entry of one task: {"alias": task, "acc,none": .., "acc_stderr,none": .., ...}.
nlohmann::json task_results_json(const TaskResult& r);

}  // namespace rankprune::eval
