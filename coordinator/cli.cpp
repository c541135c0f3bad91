#include "coordinator/cli.h"

#include <torch/torch.h>

#include <ctime>

#include <iostream>

#include "common/boost_po_guard.h"
#include "common/error.h"
#include "common/fs.h"
#include "coordinator/sweep.h"
#include "kernels/threads.h"
#include "model/linear_lm.h"

namespace rankprune::cli {

void store_config_file(const std::string& path, const po::options_description& desc, po::variables_map& vm) {
  if (!file_exists(path)) throw InputError(cat("--config: '", path, "' does not exist"));
  if (const auto tok = boost_po_token_in(read_file(path)); !tok.empty())
    throw InputError(cat("config file '", path, "' contains '", tok,
                         "', which rankprune does not accept in option names or values"));
  try {
    po::store(po::parse_config_file<char>(path.c_str(), desc), vm);
  } catch (const po::error& e) {
    throw InputError(cat("config file '", path, "': ", e.what()));
  }
}

void add_compute_options(po::options_description& d) {
  d.add_options()
      ("dtype", po::value<std::string>()->default_value("f32"),
       "compute dtype: f32, bf16 or f64 (weights stay in the checkpoint dtype)")
      ("impl", po::value<std::string>()->default_value("auto"),
       "delta-rule implementation: auto (fla: recurrent for <= 64 tokens, else chunked; on CPU without gradients "
       "the fused recurrence at any length), recurrent, chunked")
      ("chunk-size", po::value<int64_t>()->default_value(64), "chunk length of the chunked delta rule")
      ("device", po::value<std::string>()->default_value("cpu"),
       "where the model runs: cpu, or cuda (needs rankprune built against a CUDA LibTorch: docs/gpu.md)")
      ("threads", po::value<int>()->default_value(0), "CPU threads for matrix products (OpenBLAS) and the delta-rule scan; 0 = $OPENBLAS_NUM_THREADS, else $OMP_NUM_THREADS, else all cores. Element-wise ops run on one");
}

void apply_threads(const po::variables_map& vm) {
  int n = vm["threads"].as<int>();
  if (n < 0) throw UsageError(cat("--threads must be >= 0, got ", n));
  set_cpu_threads(n);
}

ForwardOptions forward_options_from(const po::variables_map& vm) {
  ForwardOptions o;
  const std::string dt = vm["dtype"].as<std::string>();
  if (dt == "f32")
    o.dtype = torch::kFloat32;
  else if (dt == "bf16")
    o.dtype = torch::kBFloat16;
  else if (dt == "f64")
    o.dtype = torch::kFloat64;
  else
    throw UsageError(cat("--dtype: expected f32, bf16 or f64, got '", dt, "'"));
  const std::string impl = vm["impl"].as<std::string>();
  if (impl == "auto")
    o.impl = DeltaRuleImpl::Auto;
  else if (impl == "recurrent")
    o.impl = DeltaRuleImpl::Recurrent;
  else if (impl == "chunked")
    o.impl = DeltaRuleImpl::Chunked;
  else
    throw UsageError(cat("--impl: expected auto, recurrent or chunked, got '", impl, "'"));
  o.chunk_size = vm["chunk-size"].as<int64_t>();
  if (o.chunk_size < 1) throw UsageError(cat("--chunk-size must be >= 1, got ", o.chunk_size));
  o.device = parse_device(vm["device"].as<std::string>());
  if (o.device == ComputeDevice::Cuda) require_cuda("--device cuda");  // before any file is read
  apply_threads(vm);
  return o;
}

void require_cpu_until_wired(const ForwardOptions& o, const std::string& command) {
  if (o.device == ComputeDevice::Cuda)
    throw UsageError(cat("--device cuda: `rankprune ", command, "` runs on the CPU only so far; `rankprune logits` ",
                         "runs on a GPU (docs/gpu.md says what is wired). Use --device cpu"));
}

void add_cluster_options(po::options_description& d) {
  d.add_options()
      ("comm", po::value<std::string>()->default_value("auto"),
       "how ranks talk: auto (mpi when started by mpirun / srun --mpi=pmix, else local), local, mpi, nccl")
      ("comm-timeout", po::value<double>()->default_value(300),
       "seconds a rank waits for a silent peer (no message, no sign of life) before the run ends with an error");
}

std::unique_ptr<cluster::Communicator> communicator_from(const po::variables_map& vm) {
  const double t = vm["comm-timeout"].as<double>();
  if (!(t > 0)) throw UsageError(cat("--comm-timeout must be > 0 seconds, got ", t));
  auto comm = cluster::make_communicator(vm["comm"].as<std::string>());
  comm->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(t * 1000)));
  return comm;
}

int run_collective(cluster::Communicator& comm, const std::function<int()>& body) {
  try {
    return body();
  } catch (const coord::RootFailed&) {
    return kExitInput;  // rank 0 prints why
  } catch (const cluster::CommError& e) {
    std::cerr << "rankprune: error: " << e.what() << "\n" << std::flush;
    if (comm.size() > 1 && (comm.backend() == "mpi" || comm.backend() == "nccl")) comm.abort(coord::kExitLostRank, e.what());
    return coord::kExitLostRank;
  } catch (const UsageError&) {
    if (comm.rank() != 0) return kExitUsage;
    throw;
  } catch (const InputError&) {
    if (comm.rank() != 0) return kExitInput;
    throw;
  }
}

int64_t calibration_seq_len(const po::variables_map& vm) {
  if (!vm.count("seq-len")) return 0;
  const int64_t n = vm["seq-len"].as<int64_t>();
  if (n < 2) throw UsageError(cat("--seq-len must be >= 2, got ", n));
  return n;
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw UsageError(cat("--", option, ": expected comma-separated integers, got '", text, "'"));
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

void add_model_shape_options(po::options_description& d, int64_t vocab_default, const char* vocab_help) {
  d.add_options()
      ("arch", po::value<std::string>()->required(), "delta_net or gated_deltanet")
      ("hidden-size", po::value<int64_t>()->default_value(256), "model width D")
      ("num-layers", po::value<int64_t>()->default_value(2), "number of blocks")
      ("num-heads", po::value<int64_t>()->default_value(4), "query/key heads H")
      ("num-v-heads", po::value<int64_t>()->default_value(0), "value heads (gated_deltanet GVA; 0 = num-heads)")
      ("head-k-dim", po::value<int64_t>()->default_value(64), "query/key channels per head dk")
      ("head-v-dim", po::value<int64_t>()->default_value(64), "value channels per head dv")
      ("vocab-size", po::value<int64_t>()->default_value(vocab_default), vocab_help)
      ("intermediate-size", po::value<int64_t>()->default_value(0), "MLP width (0 = fla's rule from hidden_ratio 4)")
      ("conv-size", po::value<int64_t>()->default_value(4), "short convolution length")
      ("use-gate", po::value<std::string>()->default_value("auto"),
       "output gate g_proj: true, false, or auto (fla's default: false for delta_net, true for gated_deltanet)")
      ("allow-neg-eigval", po::value<std::string>()->default_value("false"), "beta in (0, 2) instead of (0, 1)")
      ("tie-embeddings", po::value<std::string>()->default_value("false"), "share embeddings and lm_head")
      ("init-std", po::value<double>()->default_value(0.02), "std of the normal init (fla initializer_range)");
}

ModelShape model_shape_from(const po::variables_map& vm) {
  ModelShape s;
  const std::string arch = vm["arch"].as<std::string>();
  if (arch == "delta_net")
    s.arch = Arch::DeltaNet;
  else if (arch == "gated_deltanet")
    s.arch = Arch::GatedDeltaNet;
  else
    throw UsageError(cat("--arch: expected delta_net or gated_deltanet, got '", arch, "'"));
  auto i = [&vm](const char* k) { return vm[k].as<int64_t>(); };
  s.hidden_size = i("hidden-size");
  s.num_layers = i("num-layers");
  s.num_heads = i("num-heads");
  s.num_v_heads = i("num-v-heads");
  s.head_k_dim = i("head-k-dim");
  s.head_v_dim = i("head-v-dim");
  s.vocab_size = i("vocab-size");
  s.intermediate_size = i("intermediate-size");
  s.conv_size = i("conv-size");
  const std::string gate = vm["use-gate"].as<std::string>();
  s.use_gate = gate == "auto" ? -1 : (parse_bool(gate, "use-gate") ? 1 : 0);
  s.allow_neg_eigval = parse_bool(vm["allow-neg-eigval"].as<std::string>(), "allow-neg-eigval");
  s.tie_embeddings = parse_bool(vm["tie-embeddings"].as<std::string>(), "tie-embeddings");
  s.init_std = vm["init-std"].as<double>();
  return s;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<double> parse_double_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  for (const auto& item : split_list(text)) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size()) throw UsageError(cat("--", option, ": expected comma-separated numbers, got '", text, "'"));
    out.push_back(v);
  }
  if (out.empty()) throw UsageError(cat("--", option, ": no value given"));
  return out;
}

bool parse_bool(const std::string& text, const std::string& option) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  throw UsageError(cat("--", option, ": expected true or false, got '", text, "'"));
}

}  // namespace rankprune::cli
