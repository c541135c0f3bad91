// Planning a sweep: pure functions, no I/O, no database, no tensors.
//
// A sweep is variants (the unpruned baseline, then method x ratio x seed, seeds only for
// random) times tasks. Each (variant, task) is one job, identified in the results DB by the
// variant's key, the task and the evaluation settings (eval_identity). A job is cut into shards
// of its task's units (eval::PreparedTask::units, one packed forward each) so that several ranks
// can share one long task; shard boundaries never change a score (docs/distributed.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/runner.h"

namespace rankprune::plan {

struct VariantKey {
  std::string method;  // "none" = the unpruned baseline
  double ratio = 0;
  int64_t seed = 0;
  bool needs_stats = false;

  // "drrqr 0.5", "random 0.25 seed 1", "baseline" (for messages).
  std::string label() const;
  // The --save-pruned folder name: "drrqr-0.5-seed0".
  std::string folder() const;
};

// The baseline first, then methods in the order given, ratios in the order given, seeds (random
// only; other methods get seed 0). UsageError for an unknown method, a ratio outside (0, 1), or
// empty lists.
std::vector<VariantKey> plan_variants(const std::vector<std::string>& methods, const std::vector<double>& ratios,
                                      const std::vector<int64_t>& random_seeds);

struct JobRef {
  std::size_t variant = 0;  // index into the variant list
  std::string task;
};
// Variant-major: every task of variant 0, then of variant 1, ...
std::vector<JobRef> plan_jobs(const std::vector<VariantKey>& variants, const std::vector<std::string>& tasks);

// What changes a score, as canonical JSON: part of each job's identity, so a sweep with other
// settings makes new jobs instead of mixing numbers.
std::string eval_identity(const eval::EvalSettings& s, const std::string& tokenizer_sha);

struct Shard {
  std::size_t job = 0;        // index into the job list
  std::size_t lo = 0, hi = 0;  // units [lo, hi)
  int64_t tokens = 0;         // cost
};
// Cuts every job into contiguous shards of about total_tokens / (4 * world) tokens (a whole unit
// at least), so the work divides well over `world` ranks and no tail is longer than about a
// quarter of a rank's share; with world 1 every job is one shard. `units[j]` are job j's units.
// Shards come out in job order.
std::vector<Shard> plan_shards(const std::vector<std::vector<eval::Unit>>& units, int world);

}  // namespace rankprune::plan
