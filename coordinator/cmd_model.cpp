// Model commands: init, info, logits, generate.
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "coordinator/cli.h"
#include "model/linear_lm.h"
#include "model/npy.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

namespace rankprune::cli {
namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  std::ostringstream os;
  os << std::fixed << std::setprecision(u == 0 ? 0 : 2) << b << " " << units[u];
  return os.str();
}

// ------------------------------------------------------------------------------------------- init

void declare_init(po::options_description& d) {
  add_model_shape_options(d, 32000, "vocabulary size");
  d.add_options()
      ("out", po::value<std::string>()->required(), "output checkpoint folder (must not exist or be empty)")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed")
      ("dtype", po::value<std::string>()->default_value("bf16"), "stored weight dtype: f32 or bf16")
      ("tokenizer", po::value<std::string>(), "optional SentencePiece .model copied into the folder as tokenizer.model");
}

int run_init(const po::variables_map& vm) {
  const ModelConfig c = build_model_config(model_shape_from(vm));

  const std::string dts = vm["dtype"].as<std::string>();
  torch::ScalarType dtype;
  if (dts == "f32")
    dtype = torch::kFloat32;
  else if (dts == "bf16")
    dtype = torch::kBFloat16;
  else
    throw UsageError(cat("--dtype: expected f32 or bf16, got '", dts, "'"));

  const std::string out = vm["out"].as<std::string>();
  std::string tok;
  if (vm.count("tokenizer")) {
    tok = vm["tokenizer"].as<std::string>();
    auto t = Tokenizer::load(tok);  // validates before anything is written
    if (t->vocab_size() > c.vocab_size)
      throw UsageError(cat("--tokenizer has ", t->vocab_size(), " pieces but --vocab-size is ", c.vocab_size));
  }
  if (is_directory(out) && !std::filesystem::is_empty(out))
    throw InputError(cat("--out '", out, "' exists and is not empty"));
  AtomicDir dir(out);
  LinearLM model(c, init_random_weights(c, vm["seed"].as<uint64_t>(), dtype));
  model.save(dir.path());
  if (!tok.empty()) std::filesystem::copy_file(tok, path_join(dir.path(), "tokenizer.model"));
  dir.commit();
  std::cout << "wrote " << arch_name(c.arch) << " checkpoint to " << out << " (" << c.num_parameters()
            << " parameters, " << dts << ")\n";
  return kExitOk;
}

// ------------------------------------------------------------------------------------------- info

void declare_info(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("json", po::bool_switch(), "print JSON instead of text");
}

int run_info(const po::variables_map& vm) {
  const std::string dir = vm["model"].as<std::string>();
  LinearLM m = LinearLM::load(dir);  // validates every tensor against config.json
  const ModelConfig& c = m.config();
  std::map<std::string, int64_t> dtypes;
  for (const auto& [n, t] : m.named_tensors()) dtypes[dtype_name(from_torch(t.scalar_type()))] += t.numel();
  const int64_t state_bytes = c.state_elements_per_layer() * 2;  // at bf16
  nlohmann::ordered_json j;
  j["model"] = dir;
  j["architecture"] = arch_name(c.arch);
  j["parameters"] = c.num_parameters();
  j["layers"] = c.num_hidden_layers;
  j["hidden_size"] = c.hidden_size;
  j["num_heads"] = c.num_heads;
  j["num_v_heads"] = c.n_v_heads;
  j["head_k_dim"] = c.head_k_dim;
  j["head_v_dim"] = c.head_v_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["weight_dtypes"] = dtypes;
  j["state_shape_per_layer"] = {c.n_v_heads, c.head_k_dim, c.head_v_dim};
  j["state_bytes_per_layer_bf16"] = state_bytes;
  j["state_bytes_total_bf16"] = state_bytes * c.num_hidden_layers;
  if (vm["json"].as<bool>()) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "model          " << dir << "\n"
            << "architecture   " << arch_name(c.arch) << "\n"
            << "parameters     " << c.num_parameters() << " (" << std::fixed << std::setprecision(2)
            << c.num_parameters() / 1e6 << " M)\n"
            << "layers         " << c.num_hidden_layers << "\n"
            << "hidden size    " << c.hidden_size << "\n"
            << "heads          " << c.num_heads << " q/k, " << c.n_v_heads << " v\n"
            << "head dims      dk " << c.head_k_dim << ", dv " << c.head_v_dim << "\n"
            << "mlp width      " << c.intermediate_size << "\n"
            << "vocab          " << c.vocab_size << "\n"
            << "weights        ";
  bool first = true;
  for (const auto& [dt, n] : dtypes) std::cout << (first ? "" : ", ") << dt << " " << n, first = false;
  std::cout << " elements\n"
            << "state / layer  [" << c.n_v_heads << ", " << c.head_k_dim << ", " << c.head_v_dim << "] = "
            << state_bytes << " bytes at bf16 (" << human_bytes(static_cast<double>(state_bytes)) << ")\n"
            << "state total    " << state_bytes * c.num_hidden_layers << " bytes at bf16 ("
            << human_bytes(static_cast<double>(state_bytes * c.num_hidden_layers)) << ")\n";
  return kExitOk;
}

// ----------------------------------------------------------------------------------------- logits

void declare_logits(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("ids", po::value<std::string>()->required(), "comma-separated token ids, e.g. 3,17,5")
      ("out", po::value<std::string>()->required(), "output .npy: float32 [T, vocab]");
  add_compute_options(d);
}

int run_logits(const po::variables_map& vm) {
  auto ids = parse_int_list(vm["ids"].as<std::string>(), "ids");
  ForwardOptions fo = forward_options_from(vm);
  LinearLM m = LinearLM::load(vm["model"].as<std::string>());
  for (auto id : ids)
    if (id < 0 || id >= m.config().vocab_size)
      throw UsageError(cat("--ids: token id ", id, " is outside the vocabulary [0, ", m.config().vocab_size, ")"));
  torch::NoGradGuard ng;
  // --device cuda (a CUDA LibTorch build): weights and ids on the GPU, the logits back on the CPU.
  const torch::Device device = fo.device == ComputeDevice::Cuda ? torch::Device(torch::kCUDA) : torch::kCPU;
  m.to(device);
  auto t = torch::tensor(ids, torch::kLong).unsqueeze(0).to(device);
  auto logits = m.forward(t, nullptr, fo).squeeze(0).to(torch::kFloat32).cpu().contiguous();
  write_npy(vm["out"].as<std::string>(), logits);
  std::cout << "wrote logits [" << logits.size(0) << ", " << logits.size(1) << "] to " << vm["out"].as<std::string>()
            << "\n";
  return kExitOk;
}

// --------------------------------------------------------------------------------------- generate

void declare_generate(po::options_description& d) {
  d.add_options()("model", po::value<std::string>()->required(), "fla checkpoint folder")
      ("tokenizer", po::value<std::string>(),
       "SentencePiece .model or 'bytes' (default: tokenizer.model in the model folder)")
      ("prompt", po::value<std::string>()->required(), "prompt text")
      ("max-new", po::value<int64_t>()->default_value(32), "tokens to generate (greedy)")
      ("add-bos", po::value<std::string>()->default_value("true"), "prepend the tokenizer's BOS to the prompt")
      ("ignore-eos", po::bool_switch(), "keep generating after EOS");
  add_compute_options(d);
}

int run_generate(const po::variables_map& vm) {
  const std::string dir = vm["model"].as<std::string>();
  std::string tok_path;
  if (vm.count("tokenizer")) {
    tok_path = vm["tokenizer"].as<std::string>();
  } else {
    tok_path = path_join(dir, "tokenizer.model");
    if (!file_exists(tok_path))
      throw UsageError(cat("--tokenizer is required: '", dir, "' has no tokenizer.model"));
  }
  const int64_t max_new = vm["max-new"].as<int64_t>();
  if (max_new < 0) throw UsageError("--max-new must be >= 0");
  const bool add_bos = parse_bool(vm["add-bos"].as<std::string>(), "add-bos");
  ForwardOptions fo = forward_options_from(vm);
  require_cpu_until_wired(fo, "generate");
  auto tok = Tokenizer::load(tok_path);
  LinearLM m = LinearLM::load(dir);
  if (tok->vocab_size() > m.config().vocab_size)
    throw InputError(cat("tokenizer '", tok_path, "' has ", tok->vocab_size(), " pieces but the model's vocab_size is ",
                         m.config().vocab_size));
  std::vector<int> prompt = tok->encode(vm["prompt"].as<std::string>());
  if (add_bos && tok->bos_id() >= 0) prompt.insert(prompt.begin(), tok->bos_id());
  if (prompt.empty()) throw UsageError("--prompt is empty and the tokenizer has no BOS to start from");

  torch::NoGradGuard ng;
  LmState state;
  std::vector<int64_t> p64(prompt.begin(), prompt.end());
  auto logits = m.forward(torch::tensor(p64, torch::kLong).unsqueeze(0), &state, fo);
  std::cout << vm["prompt"].as<std::string>() << std::flush;
  std::vector<int> gen;
  std::string printed;
  for (int64_t i = 0; i < max_new; ++i) {
    // Checkpoints often pad the vocabulary past the tokenizer's pieces; only ids the tokenizer
    // can decode are candidates.
    const int64_t next = logits[0][-1].narrow(0, 0, tok->vocab_size()).argmax().item<int64_t>();
    if (next == tok->eos_id() && !vm["ignore-eos"].as<bool>()) break;
    gen.push_back(static_cast<int>(next));
    // Decode the whole continuation each step so multi-byte characters and SentencePiece's
    // leading-space rules come out right; print only what is new.
    std::vector<int> all(prompt.begin(), prompt.end());
    all.insert(all.end(), gen.begin(), gen.end());
    std::string text = tok->decode(all), head = tok->decode(prompt);
    std::string cont = text.size() >= head.size() ? text.substr(head.size()) : text;
    if (cont.size() > printed.size() && cont.compare(0, printed.size(), printed) == 0) {
      std::cout << cont.substr(printed.size()) << std::flush;
      printed = cont;
    }
    if (i + 1 < max_new) logits = m.forward(torch::tensor({next}, torch::kLong).unsqueeze(0), &state, fo);
  }
  std::cout << "\n";
  return kExitOk;
}

}  // namespace

void register_model_commands(std::vector<Command>& out) {
  out.push_back({"init", "write a randomly initialised fla-format checkpoint",
                 "rankprune init --arch {delta_net,gated_deltanet} --out DIR [size options]", declare_init, run_init});
  out.push_back({"info", "architecture, parameter count and per-layer state size of a checkpoint",
                 "rankprune info --model DIR", declare_info, run_info});
  out.push_back({"logits", "logits of a token sequence as a float32 .npy [T, vocab]",
                 "rankprune logits --model DIR --ids 3,17,5 --out F.npy", declare_logits, run_logits});
  out.push_back({"generate", "greedy continuation of a prompt",
                 "rankprune generate --model DIR [--tokenizer FILE] --prompt TEXT --max-new N", declare_generate,
                 run_generate});
}

}  // namespace rankprune::cli
