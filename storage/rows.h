// Plain result rows shared by the database layer (storage/db.h), the query formatter
// (storage/format.h) and the HTML report (storage/report.h). Torch-free, SQL-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rankprune::storage {

// One metric of one evaluated variant. The unpruned baseline has method "none" and ratio 0.
struct ResultRow {
  std::string model;        // model path as given to the sweep
  std::string method;       // drrqr, qrcp, l1, wanda, random, pca, taylor, or "none"
  double ratio = 0.0;       // prune ratio in [0, 1)
  std::int64_t seed = 0;
  int head_k_dim = 0;       // key channels per head after pruning
  std::string task;         // wikitext, lambada_openai, piqa, ...
  std::string metric;       // lm-eval metric name: acc, acc_norm, word_perplexity, ...
  double value = 0.0;
  std::optional<double> stderr_value;  // lm-eval's "<metric>_stderr" when defined
};

// One evaluation job (variant x task) and where it stands.
struct JobRow {
  std::int64_t id = 0;
  std::string model;
  std::string method;
  double ratio = 0.0;
  std::int64_t seed = 0;
  std::string task;
  std::string state;        // pending, running, done, failed
  int attempts = 0;
  std::string host;
  int rank = 0;
  std::string started;      // ISO-8601 UTC, empty when not started
  std::string finished;     // ISO-8601 UTC, empty when not finished
  double seconds = 0.0;     // wall time of the last attempt
  std::string error;        // last failure message, empty otherwise
  std::string lease_owner;  // running jobs: the LeaseOwner id holding it (storage/lease.h), else empty
};

// Metrics where lower is better (perplexities, bits per byte); everything else is higher-is-better.
inline bool lower_is_better(const std::string& metric) {
  return metric.find("perplexity") != std::string::npos || metric == "bits_per_byte";
}

}  // namespace rankprune::storage
