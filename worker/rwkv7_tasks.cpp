#include "worker/rwkv7_tasks.h"

#include <algorithm>

#include "common/error.h"
#include "eval/metrics.h"
#include "eval/tasks.h"

namespace rankprune {

CalibrationStats rwkv7_calibrate(const Rwkv7Model& m, const std::string& text, const Rwkv7CalibrationOptions& o) {
  if (o.seq_len < 2) throw UsageError(cat("--seq-len must be >= 2, got ", o.seq_len));
  if (o.sequences < 1) throw UsageError(cat("--calib-sequences must be >= 1, got ", o.sequences));
  if (o.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", o.batch_size));
  const int64_t n = std::min<int64_t>(o.sequences, static_cast<int64_t>(text.size()) / o.seq_len);
  RP_CHECK_INPUT(n >= 1, "rwkv7 calibration: the text has ", text.size(), " bytes, fewer than one ", o.seq_len,
                 "-byte sequence");
  const Rwkv7Config& c = m.config();
  CalibrationStats s;
  s.layers = c.n_layer, s.heads = c.n_heads, s.head_k_dim = c.head_k, s.hidden = c.n_embed;
  const auto f64 = torch::kFloat64;
  s.gram = torch::zeros({c.n_layer, c.n_heads, c.head_k, c.head_k}, f64);
  s.x_sq = torch::zeros({c.n_layer, c.n_embed}, f64);
  s.k_sum = torch::zeros({c.n_layer, c.n_heads, c.head_k}, f64);
  s.q_sum = torch::zeros_like(s.k_sum);
  s.k_outer = torch::zeros_like(s.gram);
  s.q_outer = torch::zeros_like(s.gram);
  // Each batch's Gram is computed in float64 and added in batch order: the sum depends only on
  // the data and the batch size.
  Rwkv7Observer obs = [&](int64_t l, const torch::Tensor& r, const torch::Tensor& k) {
    auto rr = r.to(f64).reshape({-1, c.n_heads, c.head_k}), kk = k.to(f64).reshape({-1, c.n_heads, c.head_k});
    s.gram[l] += torch::einsum("nhi,nhj->hij", {rr, rr}) + torch::einsum("nhi,nhj->hij", {kk, kk});
  };
  for (int64_t b0 = 0; b0 < n; b0 += o.batch_size) {
    const int64_t nb = std::min(o.batch_size, n - b0);
    auto ids = torch::empty({nb, o.seq_len}, torch::kLong);
    auto* p = ids.data_ptr<int64_t>();
    for (int64_t i = 0; i < nb * o.seq_len; ++i)
      p[i] = static_cast<unsigned char>(text[static_cast<std::size_t>(b0 * o.seq_len + i)]);
    m.forward(ids, nullptr, o.dtype, obs);
  }
  s.tokens = n * o.seq_len;
  s.meta["model_type"] = "rwkv7";
  s.meta["sequences"] = std::to_string(n);
  s.meta["seq_len"] = std::to_string(o.seq_len);
  return s;
}

Rwkv7EvalResult rwkv7_eval_wikitext(const Rwkv7Model& m, const std::string& raw_path, const Rwkv7EvalOptions& o) {
  if (o.max_length < 1) throw UsageError(cat("--max-length must be >= 1, got ", o.max_length));
  if (o.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", o.batch_size));
  if (o.max_bytes < 0) throw UsageError(cat("--max-bytes must be >= 0, got ", o.max_bytes));
  auto all = eval::read_wikitext(raw_path);
  RP_CHECK_INPUT(!all.empty(), raw_path, ": no wikitext documents");
  std::vector<eval::WikitextDoc> docs;
  int64_t bytes = 0;
  for (auto& d : all) {
    if (o.max_bytes > 0 && bytes >= o.max_bytes) break;
    bytes += d.bytes;
    docs.push_back(std::move(d));
  }
  // Every window of every document, as (document, input ids, first scored position, targets).
  struct Item {
    std::size_t doc;
    std::vector<int64_t> input;
    std::size_t first;  // input position first + i predicts targets[i]
    std::vector<int> targets;
  };
  std::vector<Item> items;
  Rwkv7EvalResult res;
  for (std::size_t di = 0; di < docs.size(); ++di) {
    const std::string& t = docs[di].text;
    std::vector<int> toks(t.begin(), t.end());
    for (auto& x : toks) x = static_cast<unsigned char>(x);
    res.tokens += static_cast<int64_t>(toks.size());
    for (const auto& w : eval::rolling_windows(toks.size(), static_cast<std::size_t>(o.max_length))) {
      auto wt = eval::window_tokens(w, toks, o.prefix_token);
      Item it;
      it.doc = di;
      // (context + continuation)[:-1]; position context.size() - 1 + i predicts continuation[i].
      it.input.assign(wt.context.begin(), wt.context.end());
      it.input.insert(it.input.end(), wt.continuation.begin(), wt.continuation.end() - 1);
      it.first = wt.context.size() - 1;
      it.targets = wt.continuation;
      items.push_back(std::move(it));
    }
  }
  // Longest first, so each batch pads little; the sums below are per document, in window order.
  std::vector<std::size_t> order(items.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return items[a].input.size() > items[b].input.size(); });
  std::vector<double> window_ll(items.size(), 0.0);
  for (std::size_t b0 = 0; b0 < order.size(); b0 += static_cast<std::size_t>(o.batch_size)) {
    const std::size_t nb = std::min(order.size() - b0, static_cast<std::size_t>(o.batch_size));
    const int64_t T = static_cast<int64_t>(items[order[b0]].input.size());
    auto ids = torch::zeros({static_cast<int64_t>(nb), T}, torch::kLong);  // right padding: causal, never read back
    for (std::size_t i = 0; i < nb; ++i) {
      const auto& in = items[order[b0 + i]].input;
      std::copy(in.begin(), in.end(), ids[static_cast<int64_t>(i)].data_ptr<int64_t>());
    }
    auto lp = torch::log_softmax(m.forward(ids, nullptr, o.dtype).to(torch::kFloat64), -1).contiguous();
    const int64_t V = lp.size(2);
    const double* lpp = lp.data_ptr<double>();
    for (std::size_t i = 0; i < nb; ++i) {
      const Item& it = items[order[b0 + i]];
      double ll = 0;
      for (std::size_t j = 0; j < it.targets.size(); ++j)
        ll += lpp[(static_cast<int64_t>(i) * T + static_cast<int64_t>(it.first + j)) * V + it.targets[j]];
      window_ll[order[b0 + i]] = ll;
    }
  }
  std::vector<double> doc_ll(docs.size(), 0.0);
  for (std::size_t i = 0; i < items.size(); ++i) doc_ll[items[i].doc] += window_ll[i];
  std::vector<int64_t> doc_bytes, doc_words;
  for (const auto& d : docs) doc_bytes.push_back(d.bytes), doc_words.push_back(d.words);
  res.documents = static_cast<int64_t>(docs.size());
  for (std::size_t i = 0; i < docs.size(); ++i) res.bytes += doc_bytes[i], res.words += doc_words[i], res.loglikelihood += doc_ll[i];
  res.word_perplexity = eval::word_perplexity(doc_ll, doc_words);
  res.byte_perplexity = eval::byte_perplexity(doc_ll, doc_bytes);
  res.bits_per_byte = eval::bits_per_byte(doc_ll, doc_bytes);
  return res;
}

}  // namespace rankprune
