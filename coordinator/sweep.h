// A sweep on every rank of a run: the same call on 1 rank or on P (mpirun / srun), with the same
// results. Rank 0 plans against the results DB (the only rank that opens it), all ranks
// calibrate (worker/calibration.h: bitwise the same statistics for any P) and select
// (worker/selection.h), then rank 0 schedules evaluation (coordinator/scheduler.h) while the
// others run the worker loop. docs/distributed.md tells the whole story.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cluster/communicator.h"
#include "coordinator/sweep_plan.h"
#include "eval/runner.h"
#include "model/linear_lm.h"
#include "model/tokenizer.h"

namespace rankprune::coord {

// Exit code of a run that lost a rank (a peer died or stopped answering).
constexpr int kExitLostRank = 4;

// Thrown on ranks other than 0 when rank 0 failed a step they were waiting on (its own error
// says why; these ranks end quietly).
class RootFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SweepRequest {
  // The model as every rank loaded it (memory-mapped), and its identity.
  std::string model_dir;
  std::string model_sha;  // read on rank 0 only
  const LinearLM* model = nullptr;
  const Tokenizer* tokenizer = nullptr;
  std::string tokenizer_path;  // or "bytes"
  // What to run.
  std::vector<plan::VariantKey> variants;  // plan::plan_variants
  std::vector<std::string> tasks;
  eval::EvalSettings eval;
  // Calibration (when a variant needs statistics).
  std::vector<std::string> data;
  int64_t seq_len = 0;  // 0 = from the .npy rows, else 2048
  int64_t sequences = 128;
  uint64_t seed = 0;
  int64_t batch_size = 1;
  ForwardOptions forward;
  // Where results go (rank 0).
  std::string db_path;
  std::string stats_cache;                 // folder; empty = <db>.cache
  std::optional<std::string> save_pruned;  // folder for every pruned variant's checkpoint
  double lease_seconds = 120;
  double stop_margin = 0;  // seconds from a warning signal to the hard limit; 0 = unknown
  std::string argv_json = "{}";
  std::string git_sha = "unknown";
};

// Collective. Returns the process exit code: 0 done (or nothing to do), 128 + signal when a signal
// stopped it (re-run to finish). Throws InputError / InternalError on rank 0 when a job failed
// (after recording it), cluster::CommError when a rank was lost (after recording its jobs as
// failed and giving the others back). Ranks other than 0 print nothing but errors; when rank 0
// fails a step before evaluation they throw RootFailed, so the whole run ends.
int run_sweep(const SweepRequest& req, cluster::Communicator& comm, const std::atomic<int>* stop_signal,
              std::ostream& out, std::ostream& err);

}  // namespace rankprune::coord
