// Perplexity of llama2.c models (issue 14): lm-eval's disjoint rolling windows (eval/tasks.h) over
// token documents, the first window conditioned on BOS; token perplexity exp(sum nll / tokens)
// (eval/metrics.h weighted_perplexity with token counts as weights).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama2c.h"

namespace rankprune {

struct PplResult {
  double perplexity = 0;  // exp(-sum ll / tokens)
  double nll = 0;         // -sum ll (nats)
  int64_t tokens = 0;     // scored tokens
  int64_t windows = 0;    // forward passes
};

// Up to `max_len` tokens are scored per window, in [1, seq_len]: a window's input is its context
// plus continuation minus the last token, at most max_len positions. Empty documents are skipped.
PplResult llama2c_perplexity(const Llama2cModel& m, const std::vector<std::vector<int>>& docs, int64_t max_len,
                             torch::ScalarType dtype = torch::kFloat32);

}  // namespace rankprune
