// Log-likelihood scoring of token requests on a LinearLM, with lm-eval's semantics
// (HFLM._loglikelihood_tokens): the input is (context + continuation) left-truncated to
// max_length + 1 tokens minus its last token, and a request's score is the sum of the log-softmax
// probabilities of its continuation tokens, plus whether each is the argmax (greedy match).
//
// Two ways in:
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

class Scorer {
 public:
  Scorer(const LinearLM& model, EngineOptions opts);

  std::vector<Score> score(const std::vector<Request>& requests, const ProgressFn& progress = nullptr) const;
  std::vector<std::vector<Score>> score_groups(const std::vector<Group>& groups,
                                               const ProgressFn& progress = nullptr) const;

  const EngineOptions& options() const { return opts_; }

 private:
  // Scores packed hidden states [N, D]: `targets[i][j]` is the token predicted at row
  // `first[i] + j`.
  std::vector<Score> score_positions(const torch::Tensor& hidden, const std::vector<int64_t>& first,
                                     const std::vector<std::vector<int>>& targets) const;
  std::vector<std::vector<Score>> score_group_batch(const std::vector<const Group*>& batch) const;

  const LinearLM& model_;
  EngineOptions opts_;
};

// The (input, scored positions) lm-eval builds for one request: tokens = (context +
// continuation)[-(max_length + 1):][:-1]; the continuation is predicted at the last
// len(continuation) positions. Exposed for tests.
struct TruncatedInput {
  std::vector<int> tokens;
  int64_t first_scored = 0;  // position whose output predicts continuation[0]
};
TruncatedInput truncate_request(const Request& r, int64_t max_length);

}  // namespace rankprune::eval
