// Rolling-window perplexity of llama2.c models (see llama2c_eval.h).
#include "worker/llama2c_eval.h"

#include "common/error.h"
#include "eval/metrics.h"
#include "eval/tasks.h"

namespace rankprune {

PplResult llama2c_perplexity(const Llama2cModel& m, const std::vector<std::vector<int>>& docs, int64_t max_len,
                             torch::ScalarType dtype) {
  RP_CHECK_INPUT(max_len >= 1 && max_len <= m.config().seq_len, "perplexity window must be in [1, seq_len = ",
                 m.config().seq_len, "], got ", max_len);
  constexpr int kBos = 1;
  std::vector<double> lls, weights;
  PplResult r;
  for (const auto& doc : docs) {
    if (doc.empty()) continue;
    double ll = 0;
    for (const auto& w : eval::rolling_windows(doc.size(), static_cast<std::size_t>(max_len))) {
      const auto wt = eval::window_tokens(w, doc, kBos);
      std::vector<int64_t> input(wt.context.begin(), wt.context.end());
      input.insert(input.end(), wt.continuation.begin(), wt.continuation.end());
      input.pop_back();  // the last token is only predicted
      const auto n = static_cast<int64_t>(input.size()), nc = static_cast<int64_t>(wt.continuation.size());
      auto ids = torch::tensor(input, torch::kLong).view({1, n});
      auto logp = torch::log_softmax(m.logits(ids, dtype)[0].to(torch::kFloat64), -1);  // [n, V]
      auto target = torch::tensor(std::vector<int64_t>(wt.continuation.begin(), wt.continuation.end()), torch::kLong);
      ll += logp.narrow(0, n - nc, nc).gather(1, target.unsqueeze(1)).sum().item<double>();
      ++r.windows;
    }
    lls.push_back(ll);
    weights.push_back(static_cast<double>(doc.size()));
    r.nll -= ll;
    r.tokens += static_cast<int64_t>(doc.size());
  }
  RP_CHECK_INPUT(r.tokens > 0, "perplexity needs at least one non-empty document");
  r.perplexity = eval::weighted_perplexity(lls, weights);
  return r;
}

}  // namespace rankprune
