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

void check_options(const EngineOptions& o) {
  RP_CHECK_INPUT(o.batch_size >= 1, "--batch-size must be at least 1, got ", o.batch_size);
  RP_CHECK_INPUT(o.max_length >= 1, "--max-length must be at least 1, got ", o.max_length);
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
  check_options(opts_);
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

// ---------------------------------------------------------------------------------- Workload

namespace {

// Cuts `order` into batch_size pieces of kind `kind`; `cost(i)` is member i's token count.
template <typename Cost>
void cut_batches(const std::vector<std::size_t>& order, std::size_t B, Batch::Kind kind, Cost cost,
                 std::vector<Batch>& out) {
  for (std::size_t lo = 0; lo < order.size(); lo += B) {
    Batch b;
    b.kind = kind;
    for (std::size_t k = lo; k < std::min(order.size(), lo + B); ++k) {
      b.members.push_back(order[k]);
      b.tokens += cost(order[k]);
    }
    out.push_back(std::move(b));
  }
}

}  // namespace

Workload Workload::of_requests(std::vector<Request> requests, const EngineOptions& opts) {
  check_options(opts);
  Workload w;
  w.opts_ = opts;
  w.requests_ = std::move(requests);
  for (std::size_t i = 0; i < w.requests_.size(); ++i) {
    w.truncated_.push_back(truncate_request(w.requests_[i], opts.max_length));
    w.request_slot_.push_back(i);
  }
  const auto order = longest_first(w.truncated_.size(), [&](std::size_t i) { return w.truncated_[i].tokens.size(); });
  cut_batches(order, static_cast<std::size_t>(opts.batch_size), Batch::Kind::kRequests,
              [&](std::size_t i) { return static_cast<int64_t>(w.truncated_[i].tokens.size()); }, w.batches_);
  int64_t done = 0;
  for (auto& b : w.batches_) b.progress_after = done += static_cast<int64_t>(b.members.size());
  w.outputs_ = w.requests_.size();
  w.items_ = static_cast<int64_t>(w.requests_.size());
  return w;
}

Workload Workload::of_groups(std::vector<Group> groups, const EngineOptions& opts) {
  check_options(opts);
  Workload w;
  w.opts_ = opts;
  w.groups_ = std::move(groups);
  // Groups that reuse the state: no input of theirs is truncated (truncation would cut each
  // choice's context differently). The rest are scored as independent requests.
  std::vector<std::size_t> shared;
  std::size_t n_alone = 0;
  for (std::size_t i = 0; i < w.groups_.size(); ++i) {
    const auto& g = w.groups_[i];
    RP_ASSERT(!g.context.empty() && !g.continuations.empty(), "empty group ", i);
    w.group_slot_.push_back(w.outputs_);
    bool fits = opts.reuse_state;
    for (const auto& c : g.continuations) {
      RP_ASSERT(!c.empty(), "empty continuation in group ", i);
      fits = fits && static_cast<int64_t>(g.context.size() + c.size()) <= opts.max_length + 1;
    }
    if (fits) {
      shared.push_back(i);
    } else {
      ++n_alone;
      for (std::size_t j = 0; j < g.continuations.size(); ++j) {
        w.requests_.push_back({g.context, g.continuations[j]});
        w.truncated_.push_back(truncate_request(w.requests_.back(), opts.max_length));
        w.request_slot_.push_back(w.outputs_ + j);
      }
    }
    w.outputs_ += g.continuations.size();
  }
  const auto B = static_cast<std::size_t>(opts.batch_size);
  const auto alone_order =
      longest_first(w.truncated_.size(), [&](std::size_t i) { return w.truncated_[i].tokens.size(); });
  cut_batches(alone_order, B, Batch::Kind::kRequests,
              [&](std::size_t i) { return static_cast<int64_t>(w.truncated_[i].tokens.size()); }, w.batches_);
  // Progress of the expanded part in groups: proportional to the requests done.
  std::size_t reqs_done = 0;
  for (auto& b : w.batches_) {
    reqs_done += b.members.size();
    b.progress_after = static_cast<int64_t>(reqs_done * n_alone / std::max<std::size_t>(w.truncated_.size(), 1));
  }
  const std::size_t first_group_batch = w.batches_.size();
  std::vector<std::size_t> order;
  for (auto k : longest_first(shared.size(), [&](std::size_t k) { return w.groups_[shared[k]].context.size(); }))
    order.push_back(shared[k]);
  cut_batches(order, B, Batch::Kind::kGroups,
              [&](std::size_t g) {
                int64_t t = static_cast<int64_t>(w.groups_[g].context.size());
                for (const auto& c : w.groups_[g].continuations) t += static_cast<int64_t>(c.size()) - 1;
                return t;
              },
              w.batches_);
  auto done = static_cast<int64_t>(n_alone);
  for (std::size_t b = first_group_batch; b < w.batches_.size(); ++b)
    w.batches_[b].progress_after = done += static_cast<int64_t>(w.batches_[b].members.size());
  w.items_ = static_cast<int64_t>(w.groups_.size());
  return w;
}

void Workload::place(std::size_t b, const std::vector<Score>& scores, std::vector<Score>& out) const {
  RP_ASSERT(b < batches_.size() && out.size() == outputs_, "batch ", b, " of ", batches_.size());
  const Batch& batch = batches_[b];
  std::size_t k = 0;
  for (auto m : batch.members) {
    if (batch.kind == Batch::Kind::kRequests) {
      RP_ASSERT(k < scores.size(), "batch ", b, ": too few scores");
      out[request_slot_[m]] = scores[k++];
    } else {
      for (std::size_t j = 0; j < groups_[m].continuations.size(); ++j) {
        RP_ASSERT(k < scores.size(), "batch ", b, ": too few scores");
        out[group_slot_[m] + j] = scores[k++];
      }
    }
  }
  RP_ASSERT(k == scores.size(), "batch ", b, ": ", scores.size(), " scores for ", k, " slots");
}

std::vector<std::vector<Score>> Workload::by_group(const std::vector<Score>& flat) const {
  RP_ASSERT(flat.size() == outputs_);
  std::vector<std::vector<Score>> out(groups_.size());
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const auto b = flat.begin() + static_cast<std::ptrdiff_t>(group_slot_[g]);
    out[g].assign(b, b + static_cast<std::ptrdiff_t>(groups_[g].continuations.size()));
  }
  return out;
}

// ------------------------------------------------------------------------------------ Scorer

std::vector<Score> Scorer::score_request_batch(const Workload& w, const Batch& b) const {
  std::vector<const std::vector<int>*> rows;
  std::vector<std::vector<int>> targets;
  for (auto i : b.members) {
    rows.push_back(&w.truncated(i).tokens);
    targets.push_back(w.requests()[i].continuation);
  }
  std::vector<int64_t> lens, first;
  auto h = model_.hidden_packed(packed(rows, &lens, &first), lens, nullptr, opts_.forward);
  for (std::size_t k = 0; k < b.members.size(); ++k) first[k] += w.truncated(b.members[k]).first_scored;
  return score_positions(h, first, targets);
}

std::vector<Score> Scorer::run(const Workload& w, std::size_t b) const {
  RP_ASSERT(b < w.batches().size(), "batch ", b, " of ", w.batches().size());
  RP_ASSERT(w.options().batch_size == opts_.batch_size && w.options().max_length == opts_.max_length &&
                w.options().reuse_state == opts_.reuse_state,
            "workload planned with other engine options");
  torch::NoGradGuard no_grad;
  const Batch& batch = w.batches()[b];
  if (batch.kind == Batch::Kind::kRequests) return score_request_batch(w, batch);
  std::vector<const Group*> groups;
  for (auto g : batch.members) groups.push_back(&w.groups()[g]);
  std::vector<Score> flat;
  for (auto& choices : score_group_batch(groups)) flat.insert(flat.end(), choices.begin(), choices.end());
  return flat;
}

std::vector<Score> Scorer::run_all(const Workload& w, const ProgressFn& progress) const {
  std::vector<Score> out(w.outputs());
  for (std::size_t b = 0; b < w.batches().size(); ++b) {
    w.place(b, run(w, b), out);
    if (progress) progress(w.batches()[b].progress_after, w.items());
  }
  return out;
}

std::vector<Score> Scorer::score(const std::vector<Request>& requests, const ProgressFn& progress) const {
  return run_all(Workload::of_requests(requests, opts_), progress);
}

std::vector<std::vector<Score>> Scorer::score_groups(const std::vector<Group>& groups,
                                                     const ProgressFn& progress) const {
  const Workload w = Workload::of_groups(groups, opts_);
  return w.by_group(run_all(w, progress));
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

}  // namespace rankprune::eval
