// A worker's side of evaluation: a work item (variant, task, units) in, its scores out. Holds the
// base model (memory-mapped once per rank), the tokenizer and the evaluation settings; prepares
// each task once (eval::prepare_task: reading, encoding and planning its batches) and keeps the
// last pruned variant, so consecutive shards of one variant prune once. No SQL, no scheduling.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "eval/runner.h"
#include "model/linear_lm.h"
#include "model/tokenizer.h"
#include "prune/select.h"
#include "worker/protocol.h"

namespace rankprune {

// One variant of a sweep, as every rank holds it once selection is done.
struct Variant {
  std::string method;   // "none" = the unpruned baseline
  double ratio = 0;
  int64_t seed = 0;
  Selection selection;  // empty for the baseline
};

class Executor {
 public:
  Executor(const LinearLM& base, const Tokenizer& tok, eval::EvalSettings settings);

  void set_variants(std::vector<Variant> variants);
  const std::vector<Variant>& variants() const { return variants_; }
  const eval::EvalSettings& settings() const { return settings_; }

  // The task read, encoded and planned (cached).
  const eval::PreparedTask& task(const std::string& name);
  // The variant's model (the base for "none"; cached for the last variant asked for).
  const LinearLM& model(int64_t variant);

  // Scores units [lo, hi) of the item's task on its variant. `between` runs after every batch
  // (a worker answers messages there; rank 0 schedules there).
  proto::ShardResult run(const proto::WorkItem& item, const std::function<void()>& between = nullptr);

 private:
  const LinearLM& base_;
  const Tokenizer& tok_;
  eval::EvalSettings settings_;
  std::vector<Variant> variants_;
  std::map<std::string, eval::PreparedTask> tasks_;
  int64_t loaded_ = -1;
  std::optional<LinearLM> pruned_;
};

}  // namespace rankprune
