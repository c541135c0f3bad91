#include "eval/metrics.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "eval/tasks.h"

namespace rankprune::eval {
namespace {

double sum_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

std::vector<double> to_double(const std::vector<std::int64_t>& v) { return {v.begin(), v.end()}; }

}  // namespace

std::size_t argmax_first(const std::vector<double>& values) {
  RP_ASSERT(!values.empty(), "argmax of no values");
  std::size_t best = 0;
  // Strict '>' keeps the first of equal maxima, as numpy does.
  for (std::size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[best]) best = i;
  return best;
}

double acc_norm_length(const std::string& continuation) {
  const bool delimited = !continuation.empty() && continuation[0] == ' ';
  return static_cast<double>(utf8_length(delimited ? continuation.substr(1) : continuation));
}

McResult score_multiple_choice(const std::vector<double>& lls,
                               const std::vector<std::string>& continuations, int gold) {
  RP_ASSERT(lls.size() == continuations.size() && !lls.empty(), "one log-likelihood per choice");
  RP_ASSERT(gold >= 0 && static_cast<std::size_t>(gold) < lls.size(), "gold index in range");
  std::vector<double> normed(lls.size());
  // An empty choice gives ll / 0 = -inf (or NaN for ll = 0) in numpy too; it is kept as is.
  for (std::size_t i = 0; i < lls.size(); ++i) normed[i] = lls[i] / acc_norm_length(continuations[i]);
  McResult r;
  r.pred = argmax_first(lls);
  r.pred_norm = argmax_first(normed);
  r.acc = r.pred == static_cast<std::size_t>(gold) ? 1.0 : 0.0;
  r.acc_norm = r.pred_norm == static_cast<std::size_t>(gold) ? 1.0 : 0.0;
  return r;
}

MeanStderr mean_stderr(const std::vector<double>& values) {
  RP_ASSERT(!values.empty(), "mean of no values");
  const double n = static_cast<double>(values.size());
  MeanStderr r;
  r.mean = sum_of(values) / n;
  if (values.size() < 2) {
    r.std_err = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  double ss = 0;
  for (double x : values) ss += (x - r.mean) * (x - r.mean);
  r.std_err = std::sqrt(ss / (n - 1)) / std::sqrt(n);
  return r;
}

double perplexity(const std::vector<double>& lls) {
  RP_ASSERT(!lls.empty(), "perplexity of no values");
  return std::exp(-sum_of(lls) / static_cast<double>(lls.size()));
}

double weighted_perplexity(const std::vector<double>& lls, const std::vector<double>& weights) {
  RP_ASSERT(lls.size() == weights.size() && !lls.empty(), "one weight per log-likelihood");
  return std::exp(-sum_of(lls) / sum_of(weights));
}

double word_perplexity(const std::vector<double>& lls, const std::vector<std::int64_t>& words) {
  return weighted_perplexity(lls, to_double(words));
}

double byte_perplexity(const std::vector<double>& lls, const std::vector<std::int64_t>& bytes) {
  return weighted_perplexity(lls, to_double(bytes));
}

double bits_per_byte(const std::vector<double>& lls, const std::vector<std::int64_t>& bytes) {
  RP_ASSERT(lls.size() == bytes.size() && !lls.empty(), "one byte count per log-likelihood");
  return -sum_of(lls) / sum_of(to_double(bytes)) / std::log(2.0);
}

}  // namespace rankprune::eval
