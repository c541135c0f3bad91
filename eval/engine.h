// Log-likelihood scoring of token requests on a LinearLM, with lm-eval's semantics
// (HFLM._loglikelihood_tokens): the input is (context + continuation) left-truncated to
// max_length + 1 tokens minus its last token, and a request's score is the sum of the log-softmax
// probabilities of its continuation tokens, plus whether each is the argmax (greedy match).
//
// Two ways in (both planned as a Workload of batches, which a distributed run shares out):
//  - score(): independent requests, each from a fresh state, longest first (lm-eval's order),
//    batch_size at a time, packed end to end without padding (LinearLM::hidden_packed).
//  - score_groups(): one shared context and several continuations (multiple choice). With state
//    reuse the contexts of batch_size groups run once (packed), every continuation of the batch
//    then runs in one packed forward from its group's fixed-size state (read in place, never
//    copied), and only the continuations are computed. The scores equal score() on the expanded
//    (context, continuation) requests up to float rounding.
//
// Scores come back in the order of the input. Progress (optional) is ticked per request / group.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/linear_lm.h"

namespace rankprune::eval {

struct EngineOptions {
  ForwardOptions forward;       // compute dtype, scan implementation
  int64_t batch_size = 16;      // requests (score) or groups (score_groups) per forward call
  int64_t max_length = 2048;    // lm-eval's max_length: inputs keep the last max_length + 1 tokens
  bool reuse_state = true;      // score_groups: share the context's state across continuations
};

struct Request {
  std::vector<int> context;       // never empty (lm-eval puts the prefix token there if it would be)
  std::vector<int> continuation;  // never empty
};

struct Group {
  std::vector<int> context;
  std::vector<std::vector<int>> continuations;
};

struct Score {
  double logprob = 0;   // sum of log P(continuation token | everything before it)
  bool greedy = false;  // every continuation token is the argmax of its distribution
};

// Called with (units done, units total) as work completes.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// The truncated input of every request is computed once, when a workload is planned.
struct TruncatedInput {
  std::vector<int> tokens;
  int64_t first_scored = 0;  // position whose output predicts continuation[0]
};

// One packed forward of a workload.
struct Batch {
  enum class Kind { kRequests, kGroups };
  Kind kind = Kind::kRequests;
  std::vector<std::size_t> members;  // kRequests: indices into Workload::requests(); kGroups: group indices
  int64_t tokens = 0;                // positions run through the layers: the batch's cost
  int64_t progress_after = 0;        // items (requests or groups) done once this batch and all before it are
};

// The work of Scorer::score() / score_groups() planned as batches. The cut depends only on the
// token lengths and the options (batch_size, max_length, reuse_state), never on where or in what
// order batches run: any subset of batches can run on any rank, and placing their scores gives
// bitwise what one process computes (docs/distributed.md).
//  - of_requests: longest first (lm-eval's order), batch_size requests per batch.
//  - of_groups: groups that cannot reuse the state (reuse off, or an input longer than
//    max_length + 1) are expanded into (context, continuation) requests and batched as above,
//    first; the rest go longest context first, batch_size groups per batch.
// Scores are laid out flat: one per request, or per (group, choice) in input order.
class Workload {
 public:
  static Workload of_requests(std::vector<Request> requests, const EngineOptions& opts);
  static Workload of_groups(std::vector<Group> groups, const EngineOptions& opts);

  const EngineOptions& options() const { return opts_; }
  const std::vector<Batch>& batches() const { return batches_; }
  std::size_t outputs() const { return outputs_; }  // flat scores
  int64_t items() const { return items_; }          // progress units: requests or groups
  const std::vector<Request>& requests() const { return requests_; }
  const std::vector<Group>& groups() const { return groups_; }
  const TruncatedInput& truncated(std::size_t request) const { return truncated_[request]; }

  // Writes the scores of batch `b` (as Scorer::run returns them) to their flat slots in `out`.
  void place(std::size_t b, const std::vector<Score>& scores, std::vector<Score>& out) const;
  // Flat scores -> one vector of choice scores per group (group workloads).
  std::vector<std::vector<Score>> by_group(const std::vector<Score>& flat) const;

 private:
  EngineOptions opts_;
  std::vector<Request> requests_;          // requests, or the expanded groups that run alone
  std::vector<TruncatedInput> truncated_;  // per request
  std::vector<std::size_t> request_slot_;  // flat slot of requests_[i]
  std::vector<Group> groups_;
  std::vector<std::size_t> group_slot_;    // flat slot of group g's first choice
  std::vector<Batch> batches_;
  std::size_t outputs_ = 0;
  int64_t items_ = 0;
};

class Scorer {
 public:
  Scorer(const LinearLM& model, EngineOptions opts);

  std::vector<Score> score(const std::vector<Request>& requests, const ProgressFn& progress = nullptr) const;
  std::vector<std::vector<Score>> score_groups(const std::vector<Group>& groups,
                                               const ProgressFn& progress = nullptr) const;
  // One batch of a workload planned with this scorer's options: its members' scores in member
  // order (for kGroups, each group's choices in order).
  std::vector<Score> run(const Workload& w, std::size_t batch) const;
  // Every batch in order, placed: the flat scores.
  std::vector<Score> run_all(const Workload& w, const ProgressFn& progress = nullptr) const;

  const EngineOptions& options() const { return opts_; }

 private:
  // Scores packed hidden states [N, D]: `targets[i][j]` is the token predicted at row
  // `first[i] + j`.
  std::vector<Score> score_positions(const torch::Tensor& hidden, const std::vector<int64_t>& first,
                                     const std::vector<std::vector<int>>& targets) const;
  std::vector<Score> score_request_batch(const Workload& w, const Batch& b) const;
  std::vector<std::vector<Score>> score_group_batch(const std::vector<const Group*>& batch) const;

  const LinearLM& model_;
  EngineOptions opts_;
};

// The (input, scored positions) lm-eval builds for one request: tokens = (context +
// continuation)[-(max_length + 1):][:-1]; the continuation is predicted at the last
// len(continuation) positions. Exposed for tests.
TruncatedInput truncate_request(const Request& r, int64_t max_length);

}  // namespace rankprune::eval
