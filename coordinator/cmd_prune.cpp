// Calibration and pruning commands: calibrate, prune.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "model/linear_lm.h"
#include "model/safetensors.h"
#include "prune/select.h"
#include "worker/calibration.h"
#include "worker/export.h"

namespace rankprune::cli {
namespace {

namespace fs = std::filesystem;

void add_data_options(po::options_description& d) {
  d.add_options()
      ("data", po::value<std::vector<std::string>>()->multitoken(),
       "calibration files: .txt, .jsonl (field \"text\"), or .npy int32/int64 [N, L]")
      ("tokenizer", po::value<std::string>(),
       "SentencePiece .model or 'bytes' for text data (default: tokenizer.model in the model folder)")
      ("seq-len", po::value<int64_t>(), "tokens per calibration sequence (default: the .npy rows' length, else 2048)")
      ("sequences", po::value<int64_t>()->default_value(128), "number of calibration sequences")
      ("batch-size", po::value<int64_t>()->default_value(1), "sequences per forward pass");
}

// Loads data per the options and collects statistics for `model_dir`.
// Collective over `comm` (each rank reads the same data; blocks are shared out, the sum is the
// same bits on any number of ranks); only rank 0 reports.
CalibrationStats calibrate_from_options(const po::variables_map& vm, const std::string& model_dir,
                                        const LinearLM& model, const ForwardOptions& fo, uint64_t seed,
                                        cluster::Communicator& comm, bool taylor) {
  if (!vm.count("data")) throw UsageError("--data is required (or --stats with prune)");
  const auto files = vm["data"].as<std::vector<std::string>>();
  std::string tok_path;
  if (vm.count("tokenizer")) {
    tok_path = vm["tokenizer"].as<std::string>();
  } else if (file_exists(path_join(model_dir, "tokenizer.model"))) {
    tok_path = path_join(model_dir, "tokenizer.model");
  }
  std::unique_ptr<Tokenizer> tok;
  if (!tok_path.empty()) tok = Tokenizer::load(tok_path);
  const int64_t batch = vm["batch-size"].as<int64_t>();
  if (batch < 1) throw UsageError("--batch-size must be >= 1");
  auto data = load_calibration_data(files, tok.get(), tok_path, calibration_seq_len(vm),
                                    vm["sequences"].as<int64_t>(), seed, model.config().vocab_size);
  if (comm.rank() == 0)
    std::cerr << "calibrate: " << data.ids.size(0) << " sequences x " << data.ids.size(1) << " tokens (of "
              << data.available << " available)"
              << (comm.size() > 1 ? cat(" over ", comm.size(), " ranks") : std::string())
              << (taylor ? ", with taylor gradients (a backward pass per block)" : "") << "\n";
  CalibrationStats s = collect_statistics(model, data.ids, batch, fo, comm, nullptr, taylor);
  s.meta["data_sha"] = data.data_sha;
  s.meta["seq_len"] = std::to_string(data.ids.size(1));
  s.meta["sequences"] = std::to_string(data.ids.size(0));
  s.meta["seed"] = std::to_string(seed);
  return s;
}

// ------------------------------------------------------------------------------------ calibrate

void declare_calibrate(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("out", po::value<std::string>()->required(), "output statistics file (.safetensors)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed for choosing the calibration sequences")
      ("taylor", po::bool_switch(),
       "also accumulate the taylor method's gradients dL/dW_q, dL/dW_k (one backward pass per block)");
  add_data_options(d);
  add_compute_options(d);
  add_cluster_options(d);
}

int calibrate_on(const po::variables_map& vm, cluster::Communicator& comm);

int run_calibrate(const po::variables_map& vm) {
  auto comm = communicator_from(vm);
  return run_collective(*comm, [&] { return calibrate_on(vm, *comm); });
}

int calibrate_on(const po::variables_map& vm, cluster::Communicator& comm) {
  const std::string dir = vm["model"].as<std::string>();
  ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "calibrate");
  LinearLM model = LinearLM::load(dir);
  CalibrationStats s =
      calibrate_from_options(vm, dir, model, fo, vm["seed"].as<uint64_t>(), comm, vm["taylor"].as<bool>());
  if (comm.rank() != 0) return kExitOk;  // rank 0 writes the file
  s.meta["model_sha"] = model_sha(dir);
  s.save(vm["out"].as<std::string>());
  std::cout << "wrote statistics of " << s.tokens << " tokens (" << s.layers << " layers x " << s.heads
            << " heads, dk " << s.head_k_dim << (s.has_taylor() ? ", with taylor gradients" : "") << ") to "
            << vm["out"].as<std::string>() << "\n";
  return kExitOk;
}

// ---------------------------------------------------------------------------------------- prune

void declare_prune(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("stats", po::value<std::string>(), "statistics from `rankprune calibrate` (else calibrate from --data)")
      ("method", po::value<std::string>()->required(), "drrqr, qrcp, l1, wanda, random, pca or taylor")
      ("pca-include-queries", po::bool_switch(), "pca: pool query and key statistics (default: keys only)")
      ("ratio", po::value<double>()->required(), "fraction of query/key channels removed, in [0, 1)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed (random method; calibration sampling)")
      ("out", po::value<std::string>()->required(), "output checkpoint folder (must not exist or be empty)");
  add_data_options(d);
  add_compute_options(d);
}

int run_prune(const po::variables_map& vm) {
  const std::string dir = vm["model"].as<std::string>(), out = vm["out"].as<std::string>();
  const std::string method = vm["method"].as<std::string>();
  const double ratio = vm["ratio"].as<double>();
  const uint64_t seed = vm["seed"].as<uint64_t>();
  ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "prune");
  // Validate everything cheap before any work or output.
  check_method(method);
  kept_channels(1, ratio);  // throws UsageError for a ratio out of range
  if (is_directory(out) && !fs::is_empty(out)) throw InputError(cat("--out '", out, "' exists and is not empty"));
  if (file_exists(out) && !is_directory(out)) throw InputError(cat("--out '", out, "' is a file"));

  LinearLM model = LinearLM::load(dir);
  CalibrationStats stats;
  const CalibrationStats* sp = nullptr;
  if (vm.count("stats")) {
    const std::string sp_path = vm["stats"].as<std::string>();
    stats = CalibrationStats::load(sp_path);
    stats.check_matches(model.config(), model_sha(dir), sp_path);
    RP_CHECK_INPUT(!method_needs_taylor(method) || stats.has_taylor(), "--stats '", sp_path,
                   "' has no taylor gradient sums (method taylor needs them): recompute it with `rankprune "
                   "calibrate --taylor`, or give --data instead of --stats");
    sp = &stats;
  } else if (method_needs_statistics(method)) {
    auto local = cluster::make_local();  // prune is one process; `calibrate` or `sweep` shard over ranks
    stats = calibrate_from_options(vm, dir, model, fo, seed, *local, method_needs_taylor(method));
    sp = &stats;
  }
  Selection sel = select_channels(model, sp, method, ratio, seed, vm["pca-include-queries"].as<bool>());
  LinearLM pruned = apply_selection(model, sel);

  write_pruned_checkpoint(dir, pruned, sel, out);
  const auto& c = model.config();
  std::cout << "pruned " << dir << " with " << method << " at ratio " << ratio << ": head_k_dim " << c.head_k_dim
            << " -> " << sel.head_k_dim << ", state/layer " << c.state_elements_per_layer() * 2 << " -> "
            << pruned.config().state_elements_per_layer() * 2 << " bytes at bf16; wrote " << out << "\n";
  return kExitOk;
}

}  // namespace

void register_prune_commands(std::vector<Command>& out) {
  out.push_back({"calibrate", "accumulate q/k Gram, Wanda and PCA statistics (and with --taylor the taylor gradients) over calibration text",
                 "rankprune calibrate --model DIR --data FILE... [--tokenizer T] --seq-len L --sequences N --seed S "
                 "[--taylor] --out STATS.safetensors",
                 declare_calibrate, run_calibrate});
  out.push_back({"prune", "select query/key channels and write the pruned fla checkpoint",
                 "rankprune prune --model DIR (--stats STATS | --data FILE... [--tokenizer T] --seq-len L --sequences N) "
                 "--method M --ratio R [--seed S] --out OUTDIR",
                 declare_prune, run_prune});
}

}  // namespace rankprune::cli
