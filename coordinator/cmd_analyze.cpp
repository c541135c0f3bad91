// `rankprune analyze`: rank diagnostics of a model (method.md §6; docs/analyze.md).
#include <torch/torch.h>

#include <iostream>
#include <memory>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "model/linear_lm.h"
#include "model/llama2c.h"
#include "model/tokenizer.h"
#include "worker/analyze.h"
#include "worker/calibration.h"

namespace rankprune::cli {
namespace {

void declare_analyze(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(),
                  "fla checkpoint folder (or, with --tucker alone, a llama2.c .bin file)")
      ("data", po::value<std::vector<std::string>>()->multitoken(),
       "text files: .txt, .jsonl (field \"text\"), or .npy int32/int64 [N, L] (required unless --tucker)")
      ("tucker", po::bool_switch(),
       "multilinear singular-value spectra of the attention weights q, k, v, o as [heads, head_dim, hidden] "
       "(weights only; with --data the state and Gram analysis runs too)")
      ("tokenizer", po::value<std::string>(),
       "SentencePiece .model or 'bytes' for text data (default: tokenizer.model in the model folder)")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per sequence")
      ("sequences", po::value<int64_t>()->default_value(16),
       "sequences for the Gram statistics (the state is tracked on the first of them)")
      ("batch-size", po::value<int64_t>()->default_value(1), "sequences per forward pass (Gram statistics)")
      ("every", po::value<int64_t>()->default_value(64), "state sampling interval in tokens")
      ("seed", po::value<uint64_t>()->default_value(0), "seed for choosing the sequences")
      ("stats", po::value<std::string>(),
       "Gram statistics from `rankprune calibrate` (instead of computing them; one sequence is then drawn for "
       "the state)")
      ("out", po::value<std::string>(), "write the full time series as JSON here");
  add_compute_options(d);
}

void write_json(const po::variables_map& vm, const nlohmann::json& j) {
  if (!vm.count("out")) return;
  const std::string out = vm["out"].as<std::string>();
  write_file_atomic(out, j.dump(1) + "\n");
  std::cout << "wrote " << out << "\n";
}

// Weights-only: the Tucker spectra of an fla folder or a llama2.c .bin.
int run_tucker_only(const po::variables_map& vm, const std::string& model) {
  TuckerAnalysis t;
  if (is_directory(model)) {
    t = tucker_analysis(LinearLM::load(model));
  } else {
    if (!file_exists(model)) throw InputError(cat("--model: '", model, "' does not exist"));
    t = tucker_analysis(Llama2cModel::load(model));
  }
  t.model = model;
  std::cout << "multilinear spectra of the attention weights as " << t.layout
            << " (entropy rank of each unfolding's squared singular values)\n"
            << t.table();
  write_json(vm, {{"model", model}, {"tucker", t.to_json()}});
  return kExitOk;
}

int run_analyze(const po::variables_map& vm) {
  const std::string dir = vm["model"].as<std::string>();
  const bool tucker = vm["tucker"].as<bool>();
  if (!vm.count("data")) {
    if (tucker) return run_tucker_only(vm, dir);
    throw UsageError("--data is required (unless --tucker: the weights-only Tucker spectra)");
  }
  if (!is_directory(dir) && file_exists(dir))
    throw UsageError(cat("--model '", dir, "' is a file: the state analysis needs an fla checkpoint folder "
                         "(a llama2.c .bin takes --tucker without --data)"));
  const int64_t every = vm["every"].as<int64_t>(), seq_len = vm["seq-len"].as<int64_t>();
  const int64_t sequences = vm["sequences"].as<int64_t>(), batch = vm["batch-size"].as<int64_t>();
  const uint64_t seed = vm["seed"].as<uint64_t>();
  if (every < 1) throw UsageError(cat("--every must be >= 1 (tokens between state samples), got ", every));
  if (seq_len < 1) throw UsageError(cat("--seq-len must be >= 1, got ", seq_len));
  if (sequences < 1) throw UsageError(cat("--sequences must be >= 1, got ", sequences));
  if (batch < 1) throw UsageError(cat("--batch-size must be >= 1, got ", batch));
  const ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "analyze");
  const auto files = vm["data"].as<std::vector<std::string>>();
  for (const auto& f : files)
    if (!file_exists(f)) throw InputError(cat("--data: '", f, "' does not exist"));
  if (vm.count("stats") && !file_exists(vm["stats"].as<std::string>()))
    throw InputError(cat("--stats: '", vm["stats"].as<std::string>(), "' does not exist"));

  LinearLM model = LinearLM::load(dir);
  std::string tok_path;
  if (vm.count("tokenizer")) {
    tok_path = vm["tokenizer"].as<std::string>();
  } else if (file_exists(path_join(dir, "tokenizer.model"))) {
    tok_path = path_join(dir, "tokenizer.model");
  }
  std::unique_ptr<Tokenizer> tok;
  if (!tok_path.empty()) tok = Tokenizer::load(tok_path);

  CalibrationStats stats;
  CalibrationData data;
  if (vm.count("stats")) {
    const std::string sp = vm["stats"].as<std::string>();
    stats = CalibrationStats::load(sp);
    stats.check_matches(model.config(), model_sha(dir), sp);
    data = load_calibration_data(files, tok.get(), tok_path, seq_len, 1, seed, model.config().vocab_size);
    std::cerr << "analyze: Gram statistics of " << stats.tokens << " tokens from " << sp << "\n";
  } else {
    data = load_calibration_data(files, tok.get(), tok_path, seq_len, sequences, seed, model.config().vocab_size);
    std::cerr << "analyze: Gram statistics over " << data.ids.size(0) << " sequences x " << data.ids.size(1)
              << " tokens\n";
    stats = collect_statistics(model, data.ids, batch, fo);
  }
  AnalysisReport rep = analyze_model(model, data.ids[0], every, stats, fo);
  rep.model = dir;

  std::cout << "state rank over one " << rep.seq_len << "-token sequence (sampled every " << every
            << " tokens; rank cap min(dk, dv) = " << std::min(rep.head_k_dim, rep.head_v_dim)
            << "); Gram spectra over " << rep.gram_tokens << " tokens\n"
            << rep.table();
  nlohmann::json j = rep.to_json();
  j["data_sha"] = data.data_sha;
  if (tucker) {
    TuckerAnalysis t = tucker_analysis(model);
    std::cout << "multilinear spectra of the attention weights as " << t.layout << "\n" << t.table();
    j["tucker"] = t.to_json();
  }
  write_json(vm, j);
  return kExitOk;
}

}  // namespace

void register_analyze_commands(std::vector<Command>& out) {
  out.push_back({"analyze", "rank diagnostics: state stable rank over time, Gram spectrum effective rank",
                 "rankprune analyze --model DIR --data FILE... [--tokenizer T] [--seq-len L] [--sequences N] "
                 "[--every K] [--seed S] [--stats STATS] [--tucker] [--out F.json]\n"
                 "       rankprune analyze --model DIR|FILE.bin --tucker [--out F.json]",
                 declare_analyze, run_analyze});
}

}  // namespace rankprune::cli
