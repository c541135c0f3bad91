// lm-evaluation-harness metrics over per-request log-likelihoods (lm_eval/api/metrics.py and the
// multiple-choice branch of ConfigurableTask.process_results).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rankprune::eval {

// numpy.argmax: the index of the first maximum. NaN entries are not special-cased (the scores fed
// here are finite sums of log-probs). Empty input is an internal error.
std::size_t argmax_first(const std::vector<double>& values);

// The length lm-eval divides by for acc_norm: len(choice) in Python characters, where the choice
// is the string *without* the " " target delimiter. `continuation` is the delimited form our
// readers produce, so one leading space is dropped before counting code points.
double acc_norm_length(const std::string& continuation);

// acc and acc_norm (each 0 or 1) of one multiple-choice item: argmax of the summed
// log-likelihoods, and of each sum divided by acc_norm_length of its continuation.
struct McResult {
  double acc = 0;
  double acc_norm = 0;
  std::size_t pred = 0, pred_norm = 0;
};
McResult score_multiple_choice(const std::vector<double>& lls,
                               const std::vector<std::string>& continuations, int gold);

// Mean and lm-eval's mean_stderr: sample standard deviation (n - 1) / sqrt(n). The stderr is NaN
// for fewer than two values, where lm-eval's formula divides by zero.
struct MeanStderr {
  double mean = 0;
  double std_err = 0;
};
MeanStderr mean_stderr(const std::vector<double>& values);

// perplexity aggregation (lambada_openai): exp(-mean(ll)).
double perplexity(const std::vector<double>& lls);

// weighted_perplexity: exp(-sum(ll) / sum(weight)); word_perplexity weighs by words,
// byte_perplexity by UTF-8 bytes of the original document.
double weighted_perplexity(const std::vector<double>& lls, const std::vector<double>& weights);
double word_perplexity(const std::vector<double>& lls, const std::vector<std::int64_t>& words);
double byte_perplexity(const std::vector<double>& lls, const std::vector<std::int64_t>& bytes);

// bits_per_byte: -sum(ll) / sum(bytes) / ln 2.
double bits_per_byte(const std::vector<double>& lls, const std::vector<std::int64_t>& bytes);

}  // namespace rankprune::eval
