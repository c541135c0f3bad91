#include "eval/engine.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace rankprune::eval {

namespace {

// Rows of logits computed at once: a [rows, vocab] buffer of ~16 MiB stays cache-friendly and
// bounds memory whatever the batch.
int64_t logit_rows_per_chunk(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 22) / vocab); }

// Sequences packed end to end (LinearLM::hidden_packed); `starts` receives each one's offset.
torch::Tensor packed(const std::vector<const std::vector<int>*>& rows, std::vector<int64_t>* lens,
                     std::vector<int64_t>* starts) {
  int64_t n = 0;
  for (const auto* r : rows) {
    starts->push_back(n);
    lens->push_back(static_cast<int64_t>(r->size()));
    n += static_cast<int64_t>(r->size());
  }
  auto ids = torch::empty({n}, torch::kLong);
  int64_t* p = ids.data_ptr<int64_t>();
  for (const auto* r : rows) p = std::copy(r->begin(), r->end(), p);
  return ids;
}

// Indices 0..n-1 sorted by key descending, ties by index: lm-eval's longest-first order, stable.
template <typename Key>
std::vector<std::size_t> longest_first(std::size_t n, Key key) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
  return order;
}

}  // namespace

TruncatedInput truncate_request(const Request& r, int64_t max_length) {
  RP_ASSERT(!r.context.empty() && !r.continuation.empty(), "empty context or continuation");
  const auto cont = static_cast<int64_t>(r.continuation.size());
  RP_CHECK_INPUT(cont <= max_length, "a continuation of ", cont, " tokens does not fit --max-length ", max_length);
  std::vector<int> whole(r.context);
  whole.insert(whole.end(), r.continuation.begin(), r.continuation.end());
  const auto keep = std::min<int64_t>(static_cast<int64_t>(whole.size()), max_length + 1);
  TruncatedInput out;
  out.tokens.assign(whole.end() - keep, whole.end() - 1);
  out.first_scored = static_cast<int64_t>(out.tokens.size()) - cont;
  return out;
}

Scorer::Scorer(const LinearLM& model, EngineOptions opts) : model_(model), opts_(std::move(opts)) {
  RP_CHECK_INPUT(opts_.batch_size >= 1, "--batch-size must be at least 1, got ", opts_.batch_size);
  RP_CHECK_INPUT(opts_.max_length >= 1, "--max-length must be at least 1, got ", opts_.max_length);
}

std::vector<Score> Scorer::score_positions(const torch::Tensor& hidden, const std::vector<int64_t>& first,
                                           const std::vector<std::vector<int>>& targets) const {
  std::vector<int64_t> pos, tgt;
  for (std::size_t i = 0; i < targets.size(); ++i)
    for (std::size_t j = 0; j < targets[i].size(); ++j) {
      pos.push_back(first[i] + static_cast<int64_t>(j));
      tgt.push_back(targets[i][j]);
    }
  std::vector<Score> out(targets.size());
  for (auto& s : out) s.greedy = true;
  const auto n = static_cast<int64_t>(tgt.size());
  const int64_t step = logit_rows_per_chunk(model_.config().vocab_size);
  const auto pt = torch::tensor(pos), yt = torch::tensor(tgt);
  std::size_t cursor = 0;  // which request the next scored token belongs to
  std::size_t used = 0;
  for (int64_t lo = 0; lo < n; lo += step) {
    const int64_t len = std::min(step, n - lo);
    auto rows = hidden.index_select(0, pt.narrow(0, lo, len));  // [len, D]
    // log-softmax in float32 (float64 when computing in float64); sums accumulate in double.
    const auto lt = rows.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    auto logp = torch::log_softmax(model_.logits_from_hidden(rows).to(lt), -1);
    auto y = yt.narrow(0, lo, len);
    auto lp = logp.gather(1, y.unsqueeze(1)).squeeze(1).to(torch::kFloat64).contiguous();
    auto hit = logp.argmax(1).eq(y).contiguous();
    const double* lpp = lp.data_ptr<double>();
    const bool* hp = hit.data_ptr<bool>();
    for (int64_t k = 0; k < len; ++k) {
      while (used == targets[cursor].size()) ++cursor, used = 0;
      out[cursor].logprob += lpp[k];
      out[cursor].greedy = out[cursor].greedy && hp[k];
      ++used;
    }
  }
  return out;
}

std::vector<Score> Scorer::score(const std::vector<Request>& requests, const ProgressFn& progress) const {
  torch::NoGradGuard no_grad;
  std::vector<TruncatedInput> in;
  in.reserve(requests.size());
  for (const auto& r : requests) in.push_back(truncate_request(r, opts_.max_length));
  const auto order = longest_first(in.size(), [&](std::size_t i) { return in[i].tokens.size(); });
  std::vector<Score> out(requests.size());
  const auto B = static_cast<std::size_t>(opts_.batch_size);
  for (std::size_t lo = 0; lo < order.size(); lo += B) {
    const std::size_t hi = std::min(order.size(), lo + B);
    std::vector<const std::vector<int>*> rows;
    std::vector<std::vector<int>> targets;
    for (std::size_t k = lo; k < hi; ++k) {
      const std::size_t i = order[k];
      rows.push_back(&in[i].tokens);
      targets.push_back(requests[i].continuation);
    }
    std::vector<int64_t> lens, first;
    auto h = model_.hidden_packed(packed(rows, &lens, &first), lens, nullptr, opts_.forward);
    for (std::size_t k = lo; k < hi; ++k) first[k - lo] += in[order[k]].first_scored;
    auto s = score_positions(h, first, targets);
    for (std::size_t k = lo; k < hi; ++k) out[order[k]] = s[k - lo];
    if (progress) progress(static_cast<int64_t>(hi), static_cast<int64_t>(order.size()));
  }
  return out;
}

std::vector<std::vector<Score>> Scorer::score_group_batch(const std::vector<const Group*>& batch) const {
  const auto G = static_cast<int64_t>(batch.size());
  // Continuation rows r = (group, choice) in input order.
  std::vector<int64_t> group_of;
  std::vector<int> first_tok;
  std::vector<std::vector<int>> cont_inputs, cont_targets;
  for (int64_t g = 0; g < G; ++g)
    for (const auto& c : batch[static_cast<std::size_t>(g)]->continuations) {
      group_of.push_back(g);
      first_tok.push_back(c.front());
      cont_inputs.emplace_back(c.begin(), c.end() - 1);  // each continuation minus its last token
      cont_targets.emplace_back(c.begin() + 1, c.end());
    }
  const auto R = group_of.size();
  // One packed forward: the batch's contexts, then every continuation with something left to
  // score, each continuing its group's context (LinearLM::hidden_packed's parents): the context
  // runs once and its state never leaves the scan. Single-token continuations have nothing left:
  // log P = 0 and (vacuously) greedy.
  std::vector<const std::vector<int>*> seqs;
  std::vector<int64_t> parents;
  for (const auto* g : batch) {
    seqs.push_back(&g->context);
    parents.push_back(-1);
  }
  std::vector<std::size_t> todo;
  std::vector<std::vector<int>> targets;
  for (std::size_t r = 0; r < R; ++r) {
    if (cont_inputs[r].empty()) continue;
    todo.push_back(r);
    seqs.push_back(&cont_inputs[r]);
    parents.push_back(group_of[r]);
    targets.push_back(cont_targets[r]);
  }
  std::vector<int64_t> lens, starts;
  const auto h = model_.hidden_packed(packed(seqs, &lens, &starts), lens, nullptr, opts_.forward, nullptr, {}, &parents);
  // The last context position predicts every continuation's first token: its logits are computed
  // once per group (not once per choice) and read for each choice.
  std::vector<Score> s0(R);
  {
    std::vector<int64_t> last_pos;
    for (int64_t g = 0; g < G; ++g) last_pos.push_back(starts[static_cast<std::size_t>(g)] + lens[static_cast<std::size_t>(g)] - 1);
    const auto last = h.index_select(0, torch::tensor(last_pos));  // [G, D]
    const auto lt = last.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    const int64_t step = logit_rows_per_chunk(model_.config().vocab_size);
    for (int64_t lo = 0; lo < G; lo += step) {
      const int64_t len = std::min(step, G - lo);
      auto logp = torch::log_softmax(model_.logits_from_hidden(last.narrow(0, lo, len)).to(lt), -1);
      auto lp = logp.to(torch::kFloat64).contiguous();
      auto best = logp.argmax(1).contiguous();
      auto lpa = lp.accessor<double, 2>();
      auto ba = best.accessor<int64_t, 1>();
      for (std::size_t r = 0; r < R; ++r) {
        const int64_t g = group_of[r];
        if (g < lo || g >= lo + len) continue;
        s0[r] = {lpa[g - lo][first_tok[r]], ba[g - lo] == first_tok[r]};
      }
    }
  }
  std::vector<Score> s1(R, Score{0.0, true});
  if (!todo.empty()) {
    const std::vector<int64_t> first(starts.begin() + G, starts.end());
    auto s = score_positions(h, first, targets);
    for (std::size_t k = 0; k < todo.size(); ++k) s1[todo[k]] = s[k];
  }
  std::vector<std::vector<Score>> out(batch.size());
  std::size_t r = 0;
  for (std::size_t g = 0; g < batch.size(); ++g)
    for (std::size_t j = 0; j < batch[g]->continuations.size(); ++j, ++r)
      out[g].push_back({s0[r].logprob + s1[r].logprob, s0[r].greedy && s1[r].greedy});
  return out;
}

std::vector<std::vector<Score>> Scorer::score_groups(const std::vector<Group>& groups,
                                                     const ProgressFn& progress) const {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<Score>> out(groups.size());
  // Groups that reuse the state: no input of theirs is truncated (truncation would cut each
  // choice's context differently). The rest are scored as independent requests.
  std::vector<std::size_t> shared, alone;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    RP_ASSERT(!g.context.empty() && !g.continuations.empty(), "empty group ", i);
    bool fits = opts_.reuse_state;
    for (const auto& c : g.continuations) {
      RP_ASSERT(!c.empty(), "empty continuation in group ", i);
      fits = fits && static_cast<int64_t>(g.context.size() + c.size()) <= opts_.max_length + 1;
    }
    (fits ? shared : alone).push_back(i);
  }
  const auto total = static_cast<int64_t>(groups.size());
  int64_t done = 0;
  if (!alone.empty()) {
    std::vector<Request> reqs;
    for (auto i : alone)
      for (const auto& c : groups[i].continuations) reqs.push_back({groups[i].context, c});
    const auto n_alone = static_cast<int64_t>(alone.size());
    ProgressFn sub = nullptr;
    if (progress) sub = [&](int64_t d, int64_t t) { progress(d * n_alone / std::max<int64_t>(t, 1), total); };
    auto s = score(reqs, sub);
    std::size_t r = 0;
    for (auto i : alone)
      for (std::size_t j = 0; j < groups[i].continuations.size(); ++j) out[i].push_back(s[r++]);
    done = n_alone;
  }
  const auto order = longest_first(shared.size(), [&](std::size_t k) { return groups[shared[k]].context.size(); });
  const auto B = static_cast<std::size_t>(opts_.batch_size);
  for (std::size_t lo = 0; lo < order.size(); lo += B) {
    const std::size_t hi = std::min(order.size(), lo + B);
    std::vector<const Group*> batch;
    for (std::size_t k = lo; k < hi; ++k) batch.push_back(&groups[shared[order[k]]]);
    auto s = score_group_batch(batch);
    for (std::size_t k = lo; k < hi; ++k) out[shared[order[k]]] = std::move(s[k - lo]);
    done += static_cast<int64_t>(hi - lo);
    if (progress) progress(done, total);
  }
  return out;
}

}  // namespace rankprune::eval
