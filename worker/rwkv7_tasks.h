// RWKV-7 calibration and evaluation (the RWKV-7 counterparts of worker/calibration and the
// wikitext task; one process, no ranks: the model is 0.8M parameters).
//
// Calibration: the first `sequences` disjoint `seq_len`-byte pieces of a text file, in batches,
// forwarded in float64 or float32; per (layer, head) the float64 Gram sum_t r r^T + k k^T of the
// receptance and of the key that enters the state (Rwkv7Observer).
// Evaluation: lm-eval's wikitext task on the raw test file (eval/tasks.h): each document's
// detokenised text as bytes, split into lm-eval's disjoint rolling windows (max_length), the
// first conditioned on a prefix token (byte 0: RWKV's end-of-text id), log-likelihoods summed per
// document, then word_perplexity / byte_perplexity / bits_per_byte (eval/metrics.h).
#pragma once

#include <cstdint>
#include <string>

#include "model/calibration_stats.h"
#include "model/rwkv7.h"

namespace rankprune {

struct Rwkv7CalibrationOptions {
  int64_t seq_len = 512;
  int64_t sequences = 16;
  int64_t batch_size = 16;
  torch::ScalarType dtype = torch::kFloat32;
};

// InputError when the text is shorter than one sequence; UsageError for non-positive options.
CalibrationStats rwkv7_calibrate(const Rwkv7Model& m, const std::string& text, const Rwkv7CalibrationOptions& o);

struct Rwkv7EvalOptions {
  int64_t max_bytes = 0;      // documents in file order until their page bytes reach this; 0 = all
  int64_t max_length = 1024;  // rolling window length (tokens = bytes)
  int64_t batch_size = 32;    // windows per forward
  int prefix_token = 0;
  torch::ScalarType dtype = torch::kFloat32;
};

struct Rwkv7EvalResult {
  int64_t documents = 0, bytes = 0, words = 0, tokens = 0;  // bytes/words: of the original pages
  double loglikelihood = 0;
  double word_perplexity = 0, byte_perplexity = 0, bits_per_byte = 0;
};

Rwkv7EvalResult rwkv7_eval_wikitext(const Rwkv7Model& m, const std::string& raw_path, const Rwkv7EvalOptions& o);

}  // namespace rankprune
