#include "eval/runner.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/random.h"
#include "eval/metrics.h"
#include "eval/tasks.h"

namespace rankprune::eval {

namespace {

using Clock = std::chrono::steady_clock;

// The whole file is read (so a malformed row anywhere is reported and n-samples.original is
// known); then the first `limit` items are kept (all when limit <= 0). Returns the original count.
template <typename T>
int64_t keep_first(std::vector<T>& items, long limit) {
  const auto all = static_cast<int64_t>(items.size());
  if (limit > 0 && static_cast<std::size_t>(limit) < items.size()) items.resize(static_cast<std::size_t>(limit));
  return all;
}

std::string task_path(const EvalSettings& s, const std::string& rel) { return path_join(s.data_dir, rel); }

// Python's str.rstrip() whitespace for the characters the task files contain.
bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

MetricResult with_stderr(const std::string& name, const std::vector<double>& per_item) {
  const auto m = mean_stderr(per_item);
  MetricResult r{name, m.mean, std::nullopt};
  if (std::isfinite(m.std_err)) r.stderr_value = m.std_err;
  return r;
}

// lm-eval's bootstrap_stderr for perplexity: the sample std of the metric over resamples. Own
// seeded RNG (splitmix64), so the figure is statistically, not bitwise, lm-eval's.
double bootstrap_perplexity_stderr(const std::vector<double>& lls, int iters = 10000) {
  if (lls.size() < 2) return std::nan("");
  std::uint64_t state = 1234;
  auto next = [&state] { return splitmix64(state); };
  std::vector<double> stats;
  stats.reserve(static_cast<std::size_t>(iters));
  for (int it = 0; it < iters; ++it) {
    double sum = 0;
    for (std::size_t i = 0; i < lls.size(); ++i) sum += lls[next() % lls.size()];
    stats.push_back(std::exp(-sum / static_cast<double>(lls.size())));
  }
  return mean_stderr(stats).std_err * std::sqrt(static_cast<double>(iters));
}

using Scores = std::vector<std::vector<Score>>;  // flat scores per workload of a task

PreparedTask multiple_choice(const std::string& task, std::vector<McItem> items, int64_t original,
                             const Tokenizer& tok, const EvalSettings& s) {
  std::vector<Group> groups;
  groups.reserve(items.size());
  for (const auto& it : items) {
    Group g;
    for (std::size_t c = 0; c < it.continuations.size(); ++c) {
      Request r = encode_pair(tok, it.context, it.continuations[c], s.add_bos);
      if (c == 0) g.context = r.context;
      RP_ASSERT(r.context == g.context, "choices of one item share their context");
      g.continuations.push_back(std::move(r.continuation));
    }
    groups.push_back(std::move(g));
  }
  PreparedTask p;
  p.task = task;
  p.parts.push_back(Workload::of_groups(std::move(groups), s.engine));
  p.finish = [task, items = std::move(items), original](const PreparedTask& self, const Scores& flat) {
    const auto scores = self.parts[0].by_group(flat[0]);
    std::vector<double> acc, acc_norm;
    for (std::size_t i = 0; i < items.size(); ++i) {
      std::vector<double> lls;
      for (const auto& sc : scores[i]) lls.push_back(sc.logprob);
      const auto r = score_multiple_choice(lls, items[i].continuations, items[i].gold);
      acc.push_back(r.acc);
      acc_norm.push_back(r.acc_norm);
    }
    TaskResult out;
    out.task = task;
    out.samples = static_cast<int64_t>(items.size());
    out.original_samples = original;
    out.metrics = {with_stderr("acc", acc), with_stderr("acc_norm", acc_norm)};
    return out;
  };
  return p;
}

PreparedTask winogrande(std::vector<PartialItem> items, int64_t original, const Tokenizer& tok,
                        const EvalSettings& s) {
  std::vector<Request> reqs;
  for (const auto& it : items)
    for (const auto& ctx : it.contexts) reqs.push_back(encode_pair(tok, ctx, it.continuation, s.add_bos));
  PreparedTask p;
  p.task = "winogrande";
  p.parts.push_back(Workload::of_requests(std::move(reqs), s.engine));
  p.finish = [items = std::move(items), original](const PreparedTask&, const Scores& flat) {
    const auto& scores = flat[0];
    std::vector<double> acc;
    std::size_t r = 0;
    for (const auto& it : items) {
      std::vector<double> lls;
      for (std::size_t c = 0; c < it.contexts.size(); ++c) lls.push_back(scores[r++].logprob);
      acc.push_back(static_cast<int>(argmax_first(lls)) == it.gold ? 1.0 : 0.0);
    }
    TaskResult out;
    out.task = "winogrande";
    out.samples = static_cast<int64_t>(items.size());
    out.original_samples = original;
    out.metrics = {with_stderr("acc", acc)};
    return out;
  };
  return p;
}

PreparedTask lambada(const std::vector<LambadaItem>& items, int64_t original, const Tokenizer& tok,
                     const EvalSettings& s) {
  std::vector<Request> reqs;
  for (const auto& it : items) reqs.push_back(encode_pair(tok, it.context, it.target, s.add_bos));
  PreparedTask p;
  p.task = "lambada_openai";
  p.parts.push_back(Workload::of_requests(std::move(reqs), s.engine));
  p.finish = [n = static_cast<int64_t>(items.size()), original](const PreparedTask&, const Scores& flat) {
    std::vector<double> lls, acc;
    for (const auto& sc : flat[0]) lls.push_back(sc.logprob), acc.push_back(sc.greedy ? 1.0 : 0.0);
    TaskResult out;
    out.task = "lambada_openai";
    out.samples = n;
    out.original_samples = original;
    MetricResult ppl{"perplexity", perplexity(lls), std::nullopt};
    const double se = bootstrap_perplexity_stderr(lls);
    if (std::isfinite(se)) ppl.stderr_value = se;
    out.metrics = {with_stderr("acc", acc), ppl};
    out.extra["perplexity_stderr"] = "bootstrap, 10000 resamples (lm-eval: 100000, its own RNG)";
    return out;
  };
  return p;
}

PreparedTask wikitext(const Tokenizer& tok, const EvalSettings& s) {
  const std::string path = task_path(s, "text/wikitext2/wiki.test.raw");
  auto docs = read_wikitext(path);
  const int64_t all_docs = keep_first(docs, s.limit);
  const int prefix = prefix_token(tok);
  const auto L = static_cast<std::size_t>(s.engine.max_length);
  // Rolling windows of every document, each from a fresh state (lm-eval's loglikelihood_rolling).
  std::vector<Request> reqs;
  std::vector<std::size_t> doc_of;
  int64_t doc_tokens = 0;
  for (std::size_t d = 0; d < docs.size(); ++d) {
    const auto ids = encode(tok, docs[d].text, s.add_bos);
    doc_tokens += static_cast<int64_t>(ids.size());
    for (const auto& w : rolling_windows(ids.size(), L)) {
      auto wt = window_tokens(w, ids, prefix);
      reqs.push_back({std::move(wt.context), std::move(wt.continuation)});
      doc_of.push_back(d);
    }
  }
  // token_perplexity: the papers' "\n\n".join(rows), tokenized once, --seq-len chunks from a fresh state.
  const auto text_ids = encode(tok, wikitext_token_text(read_file(path), s.limit), s.add_bos);
  const auto S = static_cast<std::size_t>(s.seq_len);
  RP_CHECK_INPUT(s.seq_len >= 2, "--seq-len must be at least 2 for token_perplexity, got ", s.seq_len);
  const std::size_t chunks = text_ids.size() / S;
  RP_CHECK_INPUT(chunks >= 1, "token_perplexity: the WikiText-2 test text (", text_ids.size(),
                 " tokens with this --limit) is shorter than one --seq-len chunk of ", s.seq_len, " tokens");
  std::vector<Request> chunk_reqs;
  for (std::size_t c = 0; c < chunks; ++c) {
    const auto b = text_ids.begin() + static_cast<std::ptrdiff_t>(c * S);
    chunk_reqs.push_back({std::vector<int>(b, b + 1), std::vector<int>(b + 1, b + static_cast<std::ptrdiff_t>(S))});
  }
  EngineOptions chunk_opts = s.engine;
  chunk_opts.max_length = std::max<int64_t>(chunk_opts.max_length, s.seq_len);
  const std::size_t windows = reqs.size();
  PreparedTask p;
  p.task = "wikitext";
  p.parts.push_back(Workload::of_requests(std::move(reqs), s.engine));
  p.parts.push_back(Workload::of_requests(std::move(chunk_reqs), chunk_opts));
  std::vector<int64_t> words, bytes;
  for (const auto& d : docs) words.push_back(d.words), bytes.push_back(d.bytes);
  p.finish = [n_docs = docs.size(), all_docs, doc_of = std::move(doc_of), words = std::move(words),
              bytes = std::move(bytes), chunks, S, windows, doc_tokens,
              seq_len = s.seq_len](const PreparedTask&, const Scores& flat) {
    std::vector<double> lls(n_docs, 0.0);
    for (std::size_t i = 0; i < flat[0].size(); ++i) lls[doc_of[i]] += flat[0][i].logprob;
    double nll = 0;
    for (const auto& c : flat[1]) nll -= c.logprob;
    const double predicted = static_cast<double>(chunks * (S - 1));
    TaskResult out;
    out.task = "wikitext";
    out.samples = static_cast<int64_t>(n_docs);
    out.original_samples = all_docs;
    out.metrics = {{"word_perplexity", word_perplexity(lls, words), std::nullopt},
                   {"byte_perplexity", byte_perplexity(lls, bytes), std::nullopt},
                   {"bits_per_byte", bits_per_byte(lls, bytes), std::nullopt},
                   {"token_perplexity", std::exp(nll / predicted), std::nullopt}};
    out.extra = {{"rolling_windows", windows},
                 {"document_tokens", doc_tokens},
                 {"token_perplexity_seq_len", seq_len},
                 {"token_perplexity_chunks", chunks},
                 {"token_perplexity_predicted_tokens", chunks * (S - 1)}};
    return out;
  };
  return p;
}

}  // namespace

const std::vector<std::string>& known_tasks() {
  static const std::vector<std::string> k = {"wikitext", "lambada_openai", "piqa",      "hellaswag",
                                             "arc_easy", "arc_challenge",  "winogrande"};
  return k;
}

std::vector<std::string> parse_task_list(const std::string& csv) {
  std::vector<std::string> out;
  std::stringstream ss(csv);
  std::string t;
  while (std::getline(ss, t, ',')) {
    if (t.empty()) continue;
    bool ok = false;
    for (const auto& k : known_tasks()) ok = ok || k == t;
    if (!ok) {
      std::string list;
      for (const auto& k : known_tasks()) list += (list.empty() ? "" : ", ") + k;
      throw UsageError(cat("--tasks: unknown task '", t, "' (known: ", list, ")"));
    }
    bool dup = false;
    for (const auto& o : out) dup = dup || o == t;
    if (!dup) out.push_back(t);
  }
  if (out.empty()) throw UsageError("--tasks: no task given");
  return out;
}

std::vector<int> encode(const Tokenizer& tok, const std::string& text, bool add_bos) {
  std::vector<int> ids;
  if (add_bos && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  const auto body = tok.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

int prefix_token(const Tokenizer& tok) {
  if (tok.bos_id() >= 0) return tok.bos_id();
  if (tok.eos_id() >= 0) return tok.eos_id();
  return 0;
}

Request encode_pair(const Tokenizer& tok, const std::string& context, const std::string& continuation,
                    bool add_bos) {
  if (context.empty()) return {{prefix_token(tok)}, encode(tok, continuation, add_bos)};
  std::size_t cut = context.size();
  while (cut > 0 && is_py_space(context[cut - 1])) --cut;
  const std::string ctx = context.substr(0, cut);
  const std::string cont = context.substr(cut) + continuation;
  Request r;
  r.context = encode(tok, ctx, add_bos);
  const auto whole = encode(tok, ctx + cont, add_bos);
  RP_CHECK_INPUT(whole.size() > r.context.size(), "the continuation '", continuation,
                 "' encodes to no tokens of its own after its context");
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(r.context.size()), whole.end());
  if (r.context.empty()) r.context = {prefix_token(tok)};  // whitespace-only context, no BOS
  return r;
}

PreparedTask prepare_task(const std::string& task, const Tokenizer& tok, const EvalSettings& s) {
  if (task == "piqa") {
    auto items = read_piqa(task_path(s, "tasks/piqa/valid.jsonl"), task_path(s, "tasks/piqa/valid-labels.lst"));
    const int64_t all = keep_first(items, s.limit);
    return multiple_choice(task, std::move(items), all, tok, s);
  }
  if (task == "hellaswag") {
    auto items = read_hellaswag(task_path(s, "tasks/hellaswag/hellaswag_val_full.txt"));
    const int64_t all = keep_first(items, s.limit);
    return multiple_choice(task, std::move(items), all, tok, s);
  }
  if (task == "arc_easy" || task == "arc_challenge") {
    auto items = read_arc(task_path(s, "tasks/llmfoundry/" + task + ".jsonl"));
    const int64_t all = keep_first(items, s.limit);
    return multiple_choice(task, std::move(items), all, tok, s);
  }
  if (task == "winogrande") {
    auto items = read_winogrande(task_path(s, "tasks/llmfoundry/winogrande.jsonl"));
    const int64_t all = keep_first(items, s.limit);
    return winogrande(std::move(items), all, tok, s);
  }
  if (task == "lambada_openai") {
    auto items = read_lambada(task_path(s, "tasks/lambada_openai/lambada_test.jsonl"));
    const int64_t all = keep_first(items, s.limit);
    return lambada(items, all, tok, s);
  }
  if (task == "wikitext") return wikitext(tok, s);
  throw UsageError(cat("unknown task '", task, "'"));
}

std::vector<Unit> PreparedTask::units() const {
  std::vector<Unit> out;
  for (std::size_t p = 0; p < parts.size(); ++p)
    for (std::size_t b = 0; b < parts[p].batches().size(); ++b) out.push_back({p, b, parts[p].batches()[b].tokens});
  return out;
}

int64_t PreparedTask::items() const {
  int64_t n = 0;
  for (const auto& w : parts) n += w.items();
  return n;
}

std::vector<std::vector<Score>> score_units(const LinearLM& model, const PreparedTask& t, std::size_t lo,
                                            std::size_t hi, const ProgressFn& progress) {
  const auto units = t.units();
  RP_ASSERT(lo <= hi && hi <= units.size(), "units [", lo, ", ", hi, ") of ", units.size());
  std::vector<std::vector<Score>> out;
  std::vector<int64_t> items_before(t.parts.size(), 0);
  for (std::size_t p = 1; p < t.parts.size(); ++p) items_before[p] = items_before[p - 1] + t.parts[p - 1].items();
  std::optional<Scorer> scorer;
  std::size_t scorer_part = 0;
  for (std::size_t u = lo; u < hi; ++u) {
    const Unit& unit = units[u];
    if (!scorer || scorer_part != unit.part) scorer.emplace(model, t.parts[unit.part].options()), scorer_part = unit.part;
    out.push_back(scorer->run(t.parts[unit.part], unit.batch));
    if (progress)
      progress(items_before[unit.part] + t.parts[unit.part].batches()[unit.batch].progress_after, t.items());
  }
  return out;
}

TaskResult finish_task(const PreparedTask& t, const std::vector<std::vector<Score>>& unit_scores) {
  const auto units = t.units();
  RP_ASSERT(unit_scores.size() == units.size(), t.task, ": scores of ", unit_scores.size(), " units, expected ",
            units.size());
  std::vector<std::vector<Score>> flat;
  for (const auto& w : t.parts) flat.emplace_back(w.outputs());
  for (std::size_t u = 0; u < units.size(); ++u) t.parts[units[u].part].place(units[u].batch, unit_scores[u], flat[units[u].part]);
  return t.finish(t, flat);
}

TaskResult run_task(const std::string& task, const LinearLM& model, const Tokenizer& tok, const EvalSettings& s,
                    const ProgressFn& progress) {
  const auto t0 = Clock::now();
  const PreparedTask t = prepare_task(task, tok, s);
  TaskResult r = finish_task(t, score_units(model, t, 0, t.units().size(), progress));
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

nlohmann::json task_results_json(const TaskResult& r) {
  nlohmann::json j;
  j["alias"] = r.task;
  for (const auto& m : r.metrics) {
    j[m.name + ",none"] = m.value;
    if (m.stderr_value)
      j[m.name + "_stderr,none"] = *m.stderr_value;
    else
      j[m.name + "_stderr,none"] = "N/A";
  }
  return j;
}

}  // namespace rankprune::eval
