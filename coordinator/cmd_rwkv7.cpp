// `rankprune rwkv7 info|logits|prune|eval`: RWKV-7 models in rwkv.cpp's file format (docs/rwkv7.md).
#include <torch/torch.h>

#include <iomanip>
#include <iostream>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "model/npy.h"
#include "model/rwkv7.h"
#include "prune/rwkv7_select.h"
#include "worker/rwkv7_tasks.h"

namespace rankprune::cli {
namespace {

void declare_rwkv7(po::options_description& d) {
  d.add_options()
      ("action", po::value<std::string>(), "info | logits | prune | eval (the first argument: `rankprune rwkv7 info ...`)")
      ("model", po::value<std::string>(), "RWKV-7 model file (rwkv.cpp format, FP32 or FP16)")
      ("json", po::bool_switch(), "info, eval: print JSON")
      ("text", po::value<std::string>(), "logits: input text, fed as bytes")
      ("ids", po::value<std::string>(), "logits: comma-separated byte ids instead of --text")
      ("out", po::value<std::string>(), "logits: .npy float32 [T, vocab]; prune: the pruned model file")
      ("method", po::value<std::string>()->default_value("drrqr"), "prune: drrqr, qrcp, l1 or random")
      ("ratio", po::value<double>()->default_value(0.5), "prune: fraction of key channels removed per head, [0, 1)")
      ("seed", po::value<uint64_t>()->default_value(0), "prune: seed of random")
      ("calib-data", po::value<std::string>(),
       "prune: calibration text, read as bytes (default <data-dir>/text/wikitext2/wiki.valid.tokens)")
      ("seq-len", po::value<int64_t>()->default_value(512), "prune: bytes per calibration sequence")
      ("calib-sequences", po::value<int64_t>()->default_value(16), "prune: calibration sequences (the first ones of the text)")
      ("selection-out", po::value<std::string>(), "prune: also write the selection JSON here")
      ("data", po::value<std::string>(), "eval: WikiText-2 raw test file (default <data-dir>/text/wikitext2/wiki.test.raw)")
      ("max-bytes", po::value<int64_t>()->default_value(0),
       "eval: whole documents in file order until their bytes reach this (0 = the whole file)")
      ("max-length", po::value<int64_t>()->default_value(1024), "eval: rolling window length in bytes")
      ("batch-size", po::value<int64_t>()->default_value(16), "prune: calibration sequences per forward; eval: windows per forward")
      ("dtype", po::value<std::string>()->default_value("f32"), "compute dtype: f32 or f64")
      ("threads", po::value<int>()->default_value(0), "CPU threads for matrix products; 0 = $OPENBLAS_NUM_THREADS, else $OMP_NUM_THREADS, else all cores")
      ("data-dir", po::value<std::string>(), "data folder (default: $RANKPRUNE_DATA_DIR, else ../shared/data)");
}

void rwkv7_positionals(po::positional_options_description& p) { p.add("action", 1); }

torch::ScalarType dtype_from(const po::variables_map& vm) {
  const std::string d = vm["dtype"].as<std::string>();
  if (d == "f32") return torch::kFloat32;
  if (d == "f64") return torch::kFloat64;
  throw UsageError(cat("--dtype: expected f32 or f64, got '", d, "'"));
}

Rwkv7Model load_model(const po::variables_map& vm, const std::string& action) {
  if (!vm.count("model")) throw UsageError(cat("rwkv7 ", action, ": --model FILE is required"));
  return Rwkv7Model::load(vm["model"].as<std::string>());
}

int run_info(const po::variables_map& vm) {
  const Rwkv7Model m = load_model(vm, "info");
  const auto& c = m.config();
  const auto& f = m.file();
  int64_t f32 = 0, f16 = 0;
  for (const auto& t : f.tensors) (t.data.scalar_type() == torch::kFloat32 ? f32 : f16) += t.data.numel();
  nlohmann::ordered_json j;
  j["model"] = vm["model"].as<std::string>();
  j["format"] = "rwkv.cpp";
  j["version"] = f.version;
  j["data_type"] = f.data_type == kRwkvTypeF32 ? "FP32" : "FP16";
  j["tensors"] = f.tensors.size();
  j["parameters"] = f.parameters();
  j["n_vocab"] = c.n_vocab, j["n_embed"] = c.n_embed, j["n_layer"] = c.n_layer;
  j["n_heads"] = c.n_heads, j["head_k"] = c.head_k, j["head_v"] = c.head_v, j["ffn_dim"] = c.ffn_dim;
  j["key_pruned"] = c.head_k < c.head_v;
  j["fp32_elements"] = f32, j["fp16_elements"] = f16;
  if (vm["json"].as<bool>()) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "model          " << j["model"].get<std::string>() << " (rwkv.cpp v" << f.version << ", "
            << j["data_type"].get<std::string>() << ")\n"
            << "architecture   rwkv7\n"
            << "parameters     " << f.parameters() << " in " << f.tensors.size() << " tensors\n"
            << "layers         " << c.n_layer << "\n"
            << "embedding      " << c.n_embed << "\n"
            << "heads          " << c.n_heads << ": key width " << c.head_k << ", value width " << c.head_v
            << (c.head_k < c.head_v ? " (key-pruned: rwkv.cpp cannot load this file)" : "") << "\n"
            << "ffn width      " << c.ffn_dim << "\n"
            << "vocab          " << c.n_vocab << "\n"
            << "state / layer  [" << c.n_heads << ", " << c.head_v << ", " << c.head_k << "] = "
            << c.n_heads * c.head_v * c.head_k << " floats\n";
  return kExitOk;
}

int run_logits(const po::variables_map& vm) {
  std::vector<int64_t> ids;
  if (vm.count("text") == vm.count("ids")) throw UsageError("rwkv7 logits: give exactly one of --text or --ids");
  if (vm.count("text")) {
    for (unsigned char ch : vm["text"].as<std::string>()) ids.push_back(ch);
  } else {
    ids = parse_int_list(vm["ids"].as<std::string>(), "ids");
  }
  if (ids.empty()) throw UsageError("rwkv7 logits: the input is empty");
  const auto dt = dtype_from(vm);
  apply_threads(vm);
  const Rwkv7Model m = load_model(vm, "logits");
  for (auto id : ids)
    if (id < 0 || id >= m.config().n_vocab)
      throw UsageError(cat("--ids: token id ", id, " is outside the vocabulary [0, ", m.config().n_vocab, ")"));
  auto logits = m.forward(torch::tensor(ids, torch::kLong).unsqueeze(0), nullptr, dt)[0].to(torch::kFloat32).contiguous();
  auto last = logits[-1];
  const int64_t top = last.argmax().item<int64_t>();
  std::cout << "tokens " << ids.size() << "; last position: argmax " << top << ", logit " << std::setprecision(6)
            << last[top].item<float>() << ", sum of logits " << last.sum().item<float>() << "\n";
  if (vm.count("out")) {
    write_npy(vm["out"].as<std::string>(), logits);
    std::cout << "wrote logits [" << logits.size(0) << ", " << logits.size(1) << "] to " << vm["out"].as<std::string>()
              << "\n";
  }
  return kExitOk;
}

int run_prune(const po::variables_map& vm) {
  if (!vm.count("out")) throw UsageError("rwkv7 prune: --out FILE (the pruned model) is required");
  const std::string method = vm["method"].as<std::string>();
  const double ratio = vm["ratio"].as<double>();
  const auto dt = dtype_from(vm);
  Rwkv7CalibrationOptions co;
  co.seq_len = vm["seq-len"].as<int64_t>(), co.sequences = vm["calib-sequences"].as<int64_t>();
  co.batch_size = vm["batch-size"].as<int64_t>(), co.dtype = dt;
  apply_threads(vm);
  const Rwkv7Model m = load_model(vm, "prune");
  // Validates method and ratio before any calibration work.
  check_rwkv7_method(method);
  (void)kept_channels(m.config().head_k, ratio);
  CalibrationStats stats;
  const bool needs = method == "drrqr" || method == "qrcp";
  if (needs) {
    const std::string path = vm.count("calib-data") ? vm["calib-data"].as<std::string>()
                                                   : path_join(default_data_dir(vm), "text/wikitext2/wiki.valid.tokens");
    stats = rwkv7_calibrate(m, read_file(path), co);
    std::cout << "calibrated on " << stats.tokens << " bytes of " << path << "\n";
  }
  Selection sel = select_rwkv7(m, needs ? &stats : nullptr, method, ratio, vm["seed"].as<uint64_t>());
  Rwkv7Model p = apply_rwkv7_selection(m, sel);
  if (vm.count("selection-out")) write_file_atomic(vm["selection-out"].as<std::string>(), sel.to_text());
  p.save(vm["out"].as<std::string>());
  std::cout << "wrote " << vm["out"].as<std::string>() << ": " << method << " ratio " << ratio << ", key width "
            << m.config().head_k << " -> " << p.config().head_k << " per head, " << p.file().parameters()
            << " parameters (rankprune can load it; rwkv.cpp cannot: it assumes key width == head size)\n";
  return kExitOk;
}

int run_eval(const po::variables_map& vm) {
  Rwkv7EvalOptions o;
  o.max_bytes = vm["max-bytes"].as<int64_t>(), o.max_length = vm["max-length"].as<int64_t>();
  o.batch_size = vm["batch-size"].as<int64_t>(), o.dtype = dtype_from(vm);
  if (o.max_bytes < 0) throw UsageError(cat("--max-bytes must be >= 0, got ", o.max_bytes));
  if (o.max_length < 1) throw UsageError(cat("--max-length must be >= 1, got ", o.max_length));
  if (o.batch_size < 1) throw UsageError(cat("--batch-size must be >= 1, got ", o.batch_size));
  apply_threads(vm);
  const std::string data =
      vm.count("data") ? vm["data"].as<std::string>() : path_join(default_data_dir(vm), "text/wikitext2/wiki.test.raw");
  const Rwkv7Model m = load_model(vm, "eval");
  if (!file_exists(data)) throw InputError(cat("--data '", data, "' does not exist"));
  const auto r = rwkv7_eval_wikitext(m, data, o);
  nlohmann::ordered_json j;
  j["model"] = vm["model"].as<std::string>();
  j["data"] = data;
  j["documents"] = r.documents, j["bytes"] = r.bytes, j["words"] = r.words, j["tokens"] = r.tokens;
  j["max_length"] = o.max_length;
  j["loglikelihood"] = r.loglikelihood;
  j["bits_per_byte"] = r.bits_per_byte, j["byte_perplexity"] = r.byte_perplexity,
  j["word_perplexity"] = r.word_perplexity;
  if (vm["json"].as<bool>()) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << std::setprecision(6) << "wikitext: " << r.documents << " documents, " << r.bytes << " bytes; bits_per_byte "
            << r.bits_per_byte << ", byte_perplexity " << r.byte_perplexity << ", word_perplexity "
            << r.word_perplexity << "\n";
  return kExitOk;
}

int run_rwkv7(const po::variables_map& vm) {
  if (!vm.count("action"))
    throw UsageError("rwkv7: give an action: info, logits, prune or eval (see rankprune rwkv7 --help)");
  const std::string a = vm["action"].as<std::string>();
  if (a == "info") return run_info(vm);
  if (a == "logits") return run_logits(vm);
  if (a == "prune") return run_prune(vm);
  if (a == "eval") return run_eval(vm);
  throw UsageError(cat("rwkv7: unknown action '", a, "'; expected info, logits, prune or eval"));
}

}  // namespace

void register_rwkv7_commands(std::vector<Command>& out) {
  Command c{"rwkv7", "RWKV-7 models in rwkv.cpp format: info, logits, key pruning, wikitext bits per byte",
            "rankprune rwkv7 info|logits|prune|eval --model FILE [options]", declare_rwkv7, run_rwkv7};
  c.positional = rwkv7_positionals;
  out.push_back(std::move(c));
}

}  // namespace rankprune::cli
