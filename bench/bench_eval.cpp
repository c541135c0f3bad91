// Evaluation throughput on one random model of realistic small shape:
//  - hellaswag items/s through run_task with state reuse on and off (same items), and the ratio;
//  - where the reuse path spends its time (the packed forward of contexts and their continuations,
//    lm_head + log-softmax), timed with the public LinearLM calls the engine makes;
//  - wikitext tokens/s: lm-eval's rolling windows of the first documents through Scorer::score.
//
//   build/bench/bench_eval [--arch delta_net] [--hidden 512] [--layers 4] [--heads 8]
//                          [--tokenizer PATH|bytes] [--limit 200] [--docs 2 (0: no wikitext)] [--batch 16]
//                          [--max-length 2048] [--threads 0] [--elementwise-threads 1]
//                          [--data-dir DIR] [--impl auto]
//
// --threads sizes OpenBLAS; --elementwise-threads LibTorch's own pool (kernels/threads.h).
//
// Task data: --data-dir, else $RANKPRUNE_DATA_DIR, else <source>/../shared/data. Prints figures;
// asserts nothing.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "common/fs.h"
#include "eval/engine.h"
#include "eval/runner.h"
#include "eval/tasks.h"
#include "kernels/threads.h"
#include "model/linear_lm.h"
#include "model/tokenizer.h"

using namespace rankprune;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double metric(const eval::TaskResult& r, const std::string& name) {
  for (const auto& m : r.metrics)
    if (m.name == name) return m.value;
  return NAN;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt = {{"arch", "delta_net"}, {"hidden", "512"},   {"layers", "4"},
                                            {"heads", "8"},        {"limit", "200"},    {"docs", "2"},
                                            {"batch", "16"},       {"max-length", "2048"}, {"threads", "0"},
                                            {"tokenizer", ""},     {"data-dir", ""},        {"impl", "auto"},        {"elementwise-threads", "1"}};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << "bench_eval [--arch delta_net|gated_deltanet] [--hidden 512] [--layers 4] [--heads 8]\n"
                   "           [--tokenizer PATH|bytes] [--limit 200] [--docs 2] [--batch 16] [--max-length 2048]\n"
                   "           [--threads 0] [--elementwise-threads 1] [--data-dir DIR] [--impl auto|chunked|recurrent]\n";
      return 0;
    }
    if (a.rfind("--", 0) != 0 || !opt.count(a.substr(2)) || i + 1 >= argc) {
      std::cerr << "bench_eval: bad argument '" << a << "' (see --help)\n";
      return 2;
    }
    opt[a.substr(2)] = argv[++i];
  }
  std::string data = opt["data-dir"];
  if (data.empty()) {
    const char* env = std::getenv("RANKPRUNE_DATA_DIR");
    data = env && *env ? env : path_join(RANKPRUNE_SOURCE_DIR, "../shared/data");
  }
  const std::string tok_path =
      opt["tokenizer"].empty() ? path_join(data, "tokenizers/mistral_v1.model") : opt["tokenizer"];
  const auto ct = set_cpu_threads(std::stoi(opt["threads"]), std::stoi(opt["elementwise-threads"]));

  const auto tok = Tokenizer::load(tok_path);
  ModelConfig c = ModelConfig::defaults(opt["arch"] == "gated_deltanet" ? Arch::GatedDeltaNet : Arch::DeltaNet);
  c.hidden_size = std::stoll(opt["hidden"]);
  c.num_heads = std::stoll(opt["heads"]);
  c.num_hidden_layers = std::stoll(opt["layers"]);
  c.vocab_size = tok->vocab_size();
  c.intermediate_size = 0;
  if (c.arch == Arch::GatedDeltaNet) {
    c.head_dim = c.hidden_size / c.num_heads;
    c.expand_v = 1.0;
  }
  c.finalize();
  const LinearLM model(c, init_random_weights(c, 0, torch::kFloat32));

  eval::EvalSettings s;
  s.data_dir = data;
  s.limit = std::stol(opt["limit"]);
  s.engine.batch_size = std::stoll(opt["batch"]);
  s.engine.max_length = std::stoll(opt["max-length"]);
  // auto = fla's dispatch (recurrent for T <= 64); chunked is the same computation up to rounding.
  s.engine.forward.impl = opt["impl"] == "chunked"     ? DeltaRuleImpl::Chunked
                          : opt["impl"] == "recurrent" ? DeltaRuleImpl::Recurrent
                                                       : DeltaRuleImpl::Auto;
  std::printf("bench_eval: %s hidden %lld, %lld layers, %lld heads (dk %lld, dv %lld), vocab %lld (%s), %.1fM params, "
              "f32, %d BLAS + %d element-wise threads, batch %lld\n",
              arch_name(c.arch), static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_hidden_layers),
              static_cast<long long>(c.num_heads), static_cast<long long>(c.head_k_dim),
              static_cast<long long>(c.head_v_dim), static_cast<long long>(c.vocab_size), tok->name().c_str(),
              static_cast<double>(c.num_parameters()) / 1e6, ct.blas, ct.elementwise, static_cast<long long>(s.engine.batch_size));

  // ---- hellaswag, reuse on vs off.
  const auto items = eval::read_hellaswag(path_join(data, "tasks/hellaswag/hellaswag_val_full.txt"), s.limit);
  int64_t ctx_tok = 0, cont_tok = 0, n_cont = 0;
  for (const auto& it : items)
    for (std::size_t k = 0; k < it.continuations.size(); ++k) {
      const auto r = eval::encode_pair(*tok, it.context, it.continuations[k], s.add_bos);
      if (k == 0) ctx_tok += static_cast<int64_t>(r.context.size());
      cont_tok += static_cast<int64_t>(r.continuation.size());
      ++n_cont;
    }
  std::printf("hellaswag: %zu items, %lld choices; mean context %.1f tokens, mean continuation %.1f tokens\n",
              items.size(), static_cast<long long>(n_cont), static_cast<double>(ctx_tok) / static_cast<double>(items.size()),
              static_cast<double>(cont_tok) / static_cast<double>(n_cont));
  // Token positions through the layers (no padding: both modes pack): without reuse every choice
  // runs context + continuation minus its last token; with reuse each context once, then each
  // continuation minus its last token. The scored positions (lm_head) are the same in both.
  {
    const double off = static_cast<double>(n_cont) / static_cast<double>(items.size()) * static_cast<double>(ctx_tok) +
                       static_cast<double>(cont_tok - n_cont);
    const double on = static_cast<double>(ctx_tok + cont_tok - n_cont);
    std::printf("  token positions through the layers: %.0f without reuse, %.0f with (ratio %.2f)\n", off, on,
                off / on);
  }
  // Warm-up on a few items, then both modes alternately, twice; the best time of each is reported.
  {
    auto w = s;
    w.limit = std::min<long>(s.limit, 8);
    (void)eval::run_task("hellaswag", model, *tok, w);
  }
  double secs[2] = {1e300, 1e300}, acc[2] = {0, 0};
  for (int rep = 0; rep < 2; ++rep)
    for (int reuse = 0; reuse <= 1; ++reuse) {
      s.engine.reuse_state = reuse == 1;
      const auto r = eval::run_task("hellaswag", model, *tok, s);
      secs[reuse] = std::min(secs[reuse], r.seconds);
      acc[reuse] = metric(r, "acc_norm");
    }
  for (int reuse = 1; reuse >= 0; --reuse)
    std::printf("  reuse_state=%-5s %7.2f s  %8.2f items/s  (acc_norm %.4f; best of 2)\n", reuse ? "true" : "false",
                secs[reuse], static_cast<double>(items.size()) / secs[reuse], acc[reuse]);
  std::printf("  speed-up from reuse: %.2fx%s\n", secs[0] / secs[1],
              acc[0] == acc[1] ? "" : "  (WARNING: metrics differ)");

  // ---- Where the reuse path spends its time, one batch of groups at a time, as the engine runs it:
  // the contexts and every continuation of the batch in one packed forward (each continuation
  // continuing its context), then lm_head + log-softmax on the scored rows.
  {
    torch::NoGradGuard ng;
    ForwardOptions fo = s.engine.forward;
    double t_fwd = 0, t_head = 0;
    const auto B = static_cast<std::size_t>(s.engine.batch_size);
    for (std::size_t lo = 0; lo < items.size(); lo += B) {
      const std::size_t hi = std::min(items.size(), lo + B);
      std::vector<std::vector<int>> seqs, conts;
      std::vector<int64_t> parents, conts_parent;
      for (std::size_t i = lo; i < hi; ++i)
        for (std::size_t k = 0; k < items[i].continuations.size(); ++k) {
          auto r = eval::encode_pair(*tok, items[i].context, items[i].continuations[k], s.add_bos);
          if (k == 0) seqs.push_back(r.context), parents.push_back(-1);
          if (r.continuation.size() < 2) continue;
          conts.emplace_back(r.continuation.begin(), r.continuation.end() - 1);
          conts_parent.push_back(static_cast<int64_t>(i - lo));
        }
      const auto n_ctx = static_cast<int64_t>(seqs.size());
      seqs.insert(seqs.end(), conts.begin(), conts.end());
      parents.insert(parents.end(), conts_parent.begin(), conts_parent.end());
      std::vector<int64_t> lens, flat;
      for (const auto& x : seqs) {
        lens.push_back(static_cast<int64_t>(x.size()));
        flat.insert(flat.end(), x.begin(), x.end());
      }
      auto t0 = Clock::now();
      auto h = model.hidden_packed(torch::tensor(flat, torch::kLong), lens, nullptr, fo, nullptr, {}, &parents);
      t_fwd += since(t0);
      // lm_head + log-softmax: one row per group for the first tokens, one per later token.
      t0 = Clock::now();
      std::vector<int64_t> rows;
      int64_t at = 0;
      for (std::size_t j = 0; j < lens.size(); ++j) {
        if (static_cast<int64_t>(j) < n_ctx) {
          rows.push_back(at + lens[j] - 1);
        } else {
          for (int64_t u = 0; u < lens[j]; ++u) rows.push_back(at + u);
        }
        at += lens[j];
      }
      auto flat_h = h.index_select(0, torch::tensor(rows));
      for (int64_t a = 0; a < flat_h.size(0); a += 128) {
        auto lp = torch::log_softmax(model.logits_from_hidden(flat_h.narrow(0, a, std::min<int64_t>(128, flat_h.size(0) - a))), -1);
        (void)lp.max();
      }
      t_head += since(t0);
    }
    const double tot = t_fwd + t_head;
    std::printf("  reuse path breakdown: packed forward (contexts + continuations) %.2f s (%.0f%%), "
                "lm_head + log_softmax %.2f s (%.0f%%)\n",
                t_fwd, 100 * t_fwd / tot, t_head, 100 * t_head / tot);
  }

  // ---- wikitext rolling windows (--docs 0: skipped).
  if (std::stol(opt["docs"]) > 0) {
    const auto docs = eval::read_wikitext(path_join(data, "text/wikitext2/wiki.test.raw"), std::stol(opt["docs"]));
    std::vector<eval::Request> reqs;
    int64_t tokens = 0;
    for (const auto& d : docs) {
      const auto ids = eval::encode(*tok, d.text, s.add_bos);
      tokens += static_cast<int64_t>(ids.size());
      for (const auto& w : eval::rolling_windows(ids.size(), static_cast<std::size_t>(s.engine.max_length))) {
        auto wt = eval::window_tokens(w, ids, eval::prefix_token(*tok));
        reqs.push_back({std::move(wt.context), std::move(wt.continuation)});
      }
    }
    const eval::Scorer scorer(model, s.engine);
    const auto t0 = Clock::now();
    const auto sc = scorer.score(reqs);
    const double t = since(t0);
    double ll = 0;
    for (const auto& x : sc) ll += x.logprob;
    std::printf("wikitext: %zu documents, %lld tokens, %zu rolling windows of max %lld: %.2f s, %.0f tokens/s "
                "(token ppl %.1f)\n",
                docs.size(), static_cast<long long>(tokens), reqs.size(), static_cast<long long>(s.engine.max_length), t,
                static_cast<double>(tokens) / t, std::exp(-ll / static_cast<double>(tokens)));
  }
  return 0;
}
