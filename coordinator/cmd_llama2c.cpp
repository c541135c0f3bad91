// `rankprune llama2c info|generate|ppl|compare`: llama2.c legacy .bin models (stories260K) and the
// compression of their softmax attention (issue 14; docs/results.md "Tucker attention").
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "eval/tasks.h"
#include "model/llama2c.h"
#include "model/tokenizer.h"
#include "prune/llama2c_compress.h"
#include "worker/llama2c_eval.h"

namespace rankprune::cli {
namespace {

void declare_llama2c(po::options_description& d) {
  d.add_options()
      ("action", po::value<std::string>(), "info, generate, ppl or compare (the first argument)")
      ("model", po::value<std::string>(), "llama2.c legacy .bin (e.g. stories260K.bin)")
      ("tokenizer", po::value<std::string>(), "SentencePiece .model (default: tok512.model beside the model)")
      ("json", po::bool_switch(), "info: print JSON")
      ("compress", po::value<std::string>()->default_value("dense"),
       "attention compression applied first: dense, tucker, svd (at --fraction) or merge (to --groups KV heads)")
      ("fraction", po::value<double>()->default_value(0.5),
       "tucker/svd: each projection keeps at most this share of its dense parameters")
      ("groups", po::value<int64_t>()->default_value(1), "merge: KV head groups")
      ("steps", po::value<int>()->default_value(200), "generate: tokens")
      ("temperature", po::value<double>()->default_value(0.0), "generate: 0 = greedy (argmax), else sampling")
      ("seed", po::value<uint64_t>()->default_value(0), "generate: sampling seed")
      ("eval", po::value<std::string>()->default_value("stories"),
       "ppl/compare: comma list of stories (sampled from the unpruned model) and wikitext")
      ("stories", po::value<int>()->default_value(64), "sampled stories")
      ("story-tokens", po::value<int>()->default_value(256), "tokens sampled per story (ends early at BOS)")
      ("story-seed", po::value<uint64_t>()->default_value(1234), "seed of the sampled stories")
      ("wikitext", po::value<std::string>(), "WikiText-2 raw test file (default: <data>/text/wikitext2/wiki.test.raw)")
      ("wikitext-docs", po::value<long>()->default_value(0), "first N WikiText-2 documents (0 = all)")
      ("data-dir", po::value<std::string>(), "shared data folder (default $RANKPRUNE_DATA_DIR, else ../shared/data)")
      ("window", po::value<int64_t>()->default_value(256), "rolling-window length of the perplexity")
      ("fractions", po::value<std::string>(),
       "compare: extra budget fractions for tucker and svd (the head-merging budgets are always included)")
      ("out", po::value<std::string>(), "compare: write the Markdown table here");
  add_compute_options(d);
}

void llama2c_positionals(po::positional_options_description& p) { p.add("action", 1); }

struct Setup {
  std::string model_path;
  torch::ScalarType dtype = torch::kFloat32;
};

Setup setup_from(const po::variables_map& vm) {
  Setup s;
  if (!vm.count("model")) throw UsageError("llama2c: --model FILE.bin is required");
  s.model_path = vm["model"].as<std::string>();
  const ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "llama2c");
  if (fo.dtype != torch::kFloat32 && fo.dtype != torch::kFloat64)
    throw UsageError("llama2c: --dtype must be f32 or f64");
  s.dtype = fo.dtype;
  if (!file_exists(s.model_path)) throw InputError(cat("--model: '", s.model_path, "' does not exist"));
  return s;
}

std::unique_ptr<Tokenizer> tokenizer_for(const po::variables_map& vm, const std::string& model_path) {
  const std::string t =
      vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : path_join(parent_dir(model_path), "tok512.model");
  if (!file_exists(t)) throw InputError(cat("--tokenizer: '", t, "' does not exist"));
  return Tokenizer::load(t);
}

AttnCompressionPlan plan_from(const po::variables_map& vm, const Llama2cModel& m) {
  const std::string c = vm["compress"].as<std::string>();
  const double f = vm["fraction"].as<double>();
  if (c == "tucker" || c == "svd") {
    if (!(f > 0 && f <= 1)) throw UsageError(cat("--fraction must be in (0, 1], got ", f));
    return c == "tucker" ? plan_tucker(m, f) : plan_svd(m, f);
  }
  AttnCompressionPlan p;
  p.method = c;
  if (c == "merge") {
    p.groups = vm["groups"].as<int64_t>();
    if (p.groups < 1 || m.config().n_kv_heads % p.groups != 0)
      throw UsageError(cat("--groups must divide n_kv_heads = ", m.config().n_kv_heads, ", got ", p.groups));
  } else if (c != "dense") {
    throw UsageError(cat("--compress: expected dense, tucker, svd or merge, got '", c, "'"));
  }
  return p;
}

// ------------------------------------------------------------------------------------ evaluation

struct EvalSets {
  std::vector<std::string> names;
  std::vector<std::vector<std::vector<int>>> docs;
  std::vector<std::string> notes;
};

EvalSets eval_sets(const po::variables_map& vm, const Llama2cModel& original, const Tokenizer& tok,
                   torch::ScalarType dt) {
  EvalSets e;
  const int n = vm["stories"].as<int>(), len = vm["story-tokens"].as<int>();
  const uint64_t seed = vm["story-seed"].as<uint64_t>();
  for (const auto& name : split_list(vm["eval"].as<std::string>())) {
    if (name == "stories") {
      if (n < 1) throw UsageError(cat("--stories must be >= 1, got ", n));
      if (len < 1 || len > original.config().seq_len)
        throw UsageError(cat("--story-tokens must be in [1, ", original.config().seq_len, "], got ", len));
      e.docs.push_back(llama2c_sample(original, n, len, 1.0, seed, dt));
      int64_t tokens = 0;
      for (const auto& d : e.docs.back()) tokens += static_cast<int64_t>(d.size());
      e.notes.push_back(cat("stories: ", n, " stories sampled at temperature 1 from the unpruned model (seed ", seed,
                            ", up to ", len, " tokens each, ", tokens, " tokens)"));
    } else if (name == "wikitext") {
      const std::string path = vm.count("wikitext") ? vm["wikitext"].as<std::string>()
                                                    : path_join(default_data_dir(vm), "text/wikitext2/wiki.test.raw");
      if (!file_exists(path)) throw InputError(cat("--wikitext: '", path, "' does not exist"));
      const long limit = vm["wikitext-docs"].as<long>();
      if (limit < 0) throw UsageError(cat("--wikitext-docs must be >= 0, got ", limit));
      std::vector<std::vector<int>> docs;
      int64_t tokens = 0;
      for (const auto& d : eval::read_wikitext(path, limit)) {
        docs.push_back(tok.encode(d.text));
        tokens += static_cast<int64_t>(docs.back().size());
      }
      e.docs.push_back(std::move(docs));
      e.notes.push_back(cat("wikitext: WikiText-2 test, ", e.docs.back().size(), " documents (detokenised as lm-eval), ",
                            tokens, " tok512 tokens"));
    } else {
      throw UsageError(cat("--eval: expected stories or wikitext, got '", name, "'"));
    }
    e.names.push_back(name);
  }
  if (e.names.empty()) throw UsageError("--eval: give stories and/or wikitext");
  return e;
}

// ------------------------------------------------------------------------------------------ actions

int run_info(const po::variables_map& vm, const Setup& s) {
  const auto base = Llama2cModel::load(s.model_path);
  const auto plan = plan_from(vm, base);
  const auto m = apply_plan(base, plan);
  const auto& c = m.config();
  nlohmann::json j = {{"model", s.model_path},       {"dim", c.dim},
                      {"hidden_dim", c.hidden_dim},  {"n_layers", c.n_layers},
                      {"n_heads", c.n_heads},        {"n_kv_heads", c.n_kv_heads},
                      {"vocab_size", c.vocab_size},  {"seq_len", c.seq_len},
                      {"head_size", c.head_size()},  {"shared_classifier", c.shared_classifier},
                      {"compress", plan.method},     {"ranks", plan.describe()},
                      {"attention_parameters", m.attention_parameters()},
                      {"parameters", m.num_parameters()}};
  if (vm["json"].as<bool>()) {
    std::cout << j.dump(1) << "\n";
    return kExitOk;
  }
  std::cout << "llama2.c model " << s.model_path << "\n"
            << "  dim " << c.dim << ", hidden_dim " << c.hidden_dim << ", layers " << c.n_layers << ", heads "
            << c.n_heads << " (KV " << c.n_kv_heads << ", head size " << c.head_size() << "), vocab "
            << c.vocab_size << (c.shared_classifier ? " (shared classifier)" : " (unshared classifier)")
            << ", seq_len " << c.seq_len << "\n"
            << "  attention " << plan.method << (plan.method == "dense" ? "" : " (" + plan.describe() + ")") << ": "
            << m.attention_parameters() << " parameters; total " << m.num_parameters() << "\n";
  return kExitOk;
}

int run_generate(const po::variables_map& vm, const Setup& s) {
  const int steps = vm["steps"].as<int>();
  const double temp = vm["temperature"].as<double>();
  const auto base = Llama2cModel::load(s.model_path);
  if (steps < 1 || steps > base.config().seq_len)
    throw UsageError(cat("--steps must be in [1, ", base.config().seq_len, "], got ", steps));
  if (!(temp >= 0) || !std::isfinite(temp)) throw UsageError(cat("--temperature must be >= 0, got ", temp));
  const auto tok = tokenizer_for(vm, s.model_path);
  const auto m = apply_plan(base, plan_from(vm, base));
  std::vector<std::string> pieces;
  for (int i = 0; i < tok->vocab_size(); ++i) pieces.push_back(tok->decode_piece(i));
  const auto ids = temp == 0 ? llama2c_greedy(m, steps, s.dtype)
                             : llama2c_sample(m, 1, steps, temp, vm["seed"].as<uint64_t>(), s.dtype)[0];
  std::cout << llama2c_decode(ids, pieces) << "\n";
  return kExitOk;
}

int run_ppl(const po::variables_map& vm, const Setup& s) {
  const auto base = Llama2cModel::load(s.model_path);
  const auto tok = tokenizer_for(vm, s.model_path);
  const int64_t window = vm["window"].as<int64_t>();
  if (window < 1 || window > base.config().seq_len)
    throw UsageError(cat("--window must be in [1, ", base.config().seq_len, "], got ", window));
  const auto plan = plan_from(vm, base);
  const auto sets = eval_sets(vm, base, *tok, s.dtype);
  const auto m = apply_plan(base, plan);
  for (const auto& n : sets.notes) std::cerr << "llama2c ppl: " << n << "\n";
  std::cout << "attention " << plan.method << (plan.method == "dense" ? "" : " (" + plan.describe() + ")") << ": "
            << m.attention_parameters() << " parameters; total " << m.num_parameters() << "\n";
  for (std::size_t i = 0; i < sets.names.size(); ++i) {
    const auto r = llama2c_perplexity(m, sets.docs[i], window, s.dtype);
    std::printf("%s: perplexity %.4f (%lld tokens, %lld windows of <= %lld)\n", sets.names[i].c_str(), r.perplexity,
                static_cast<long long>(r.tokens), static_cast<long long>(r.windows), static_cast<long long>(window));
  }
  return kExitOk;
}

// The table of docs/results/tucker_stories260K.md: dense, head merging at every group count, and
// tucker and svd at the same attention budgets (plus --fractions).
int run_compare(const po::variables_map& vm, const Setup& s) {
  const auto base = Llama2cModel::load(s.model_path);
  const auto tok = tokenizer_for(vm, s.model_path);
  const int64_t window = vm["window"].as<int64_t>();
  if (window < 1 || window > base.config().seq_len)
    throw UsageError(cat("--window must be in [1, ", base.config().seq_len, "], got ", window));
  std::vector<double> extra;
  if (vm.count("fractions")) extra = parse_double_list(vm["fractions"].as<std::string>(), "--fractions");
  for (double f : extra)
    if (!(f > 0 && f <= 1)) throw UsageError(cat("--fractions: each must be in (0, 1], got ", f));
  const auto sets = eval_sets(vm, base, *tok, s.dtype);

  struct Row {
    std::string method, ranks;
    int64_t attn, total;
    std::vector<double> ppl;
  };
  std::vector<Row> rows;
  auto evaluate = [&](const AttnCompressionPlan& plan) {
    const auto m = apply_plan(base, plan);
    Row r{plan.method, plan.describe(), m.attention_parameters(), m.num_parameters(), {}};
    for (const auto& docs : sets.docs) r.ppl.push_back(llama2c_perplexity(m, docs, window, s.dtype).perplexity);
    std::cerr << "llama2c compare: " << r.method << " " << r.ranks << ": attention " << r.attn;
    for (double p : r.ppl) std::cerr << " ppl " << p;
    std::cerr << "\n";
    rows.push_back(std::move(r));
  };
  AttnCompressionPlan dense;
  dense.method = "dense";
  evaluate(dense);
  const int64_t dense_attn = base.attention_parameters();
  std::vector<double> fractions;
  for (int64_t g = base.config().n_kv_heads / 2; g >= 1; --g) {
    if (base.config().n_kv_heads % g != 0) continue;
    AttnCompressionPlan mp;
    mp.method = "merge";
    mp.groups = g;
    evaluate(mp);
    const double f = static_cast<double>(rows.back().attn) / static_cast<double>(dense_attn);
    fractions.push_back(f);
    evaluate(plan_tucker(base, f));
    evaluate(plan_svd(base, f));
  }
  for (double f : extra) {
    evaluate(plan_tucker(base, f));
    evaluate(plan_svd(base, f));
  }

  std::string md = "| method | multilinear ranks / rank | attention params | total params |";
  for (const auto& n : sets.names) md += " ppl " + n + " |";
  md += "\n|---|---|---:|---:|";
  for (std::size_t i = 0; i < sets.names.size(); ++i) md += "---:|";
  md += "\n";
  for (const auto& r : rows) {
    md += cat("| ", r.method, " | ", r.ranks, " | ", r.attn, " (", static_cast<int>(std::lround(100.0 * r.attn / dense_attn)),
              "%) | ", r.total, " |");
    for (double p : r.ppl) {
      char b[32];
      std::snprintf(b, sizeof b, " %.3f |", p);
      md += b;
    }
    md += "\n";
  }
  std::string notes;
  for (const auto& n : sets.notes) notes += "- " + n + "\n";
  notes += cat("- perplexity: token level, lm-eval disjoint rolling windows of ", window,
               " tokens, the first after BOS; compute ", s.dtype == torch::kFloat64 ? "f64" : "f32", "\n");
  std::cout << md << "\n" << notes;
  if (vm.count("out")) {
    write_file_atomic(vm["out"].as<std::string>(), md + "\n" + notes);
    std::cout << "wrote " << vm["out"].as<std::string>() << "\n";
  }
  return kExitOk;
}

int run_llama2c(const po::variables_map& vm) {
  if (!vm.count("action"))
    throw UsageError("llama2c: give an action: info, generate, ppl or compare (see rankprune llama2c --help)");
  const std::string action = vm["action"].as<std::string>();
  if (action != "info" && action != "generate" && action != "ppl" && action != "compare")
    throw UsageError(cat("llama2c: unknown action '", action, "'; expected info, generate, ppl or compare"));
  const Setup s = setup_from(vm);
  if (action == "info") return run_info(vm, s);
  if (action == "generate") return run_generate(vm, s);
  if (action == "ppl") return run_ppl(vm, s);
  return run_compare(vm, s);
}

}  // namespace

void register_llama2c_commands(std::vector<Command>& out) {
  Command c{"llama2c", "llama2.c .bin models (stories260K): info, generate, perplexity, attention compression table",
            "rankprune llama2c info|generate|ppl|compare --model FILE.bin [--tokenizer T] [--compress dense|tucker|svd|merge "
            "--fraction F --groups G] [--steps N --temperature T --seed S] [--eval stories,wikitext --window W] "
            "[--fractions F,... --out TABLE.md]",
            declare_llama2c, run_llama2c};
  c.positional = llama2c_positionals;
  out.push_back(std::move(c));
}

}  // namespace rankprune::cli
